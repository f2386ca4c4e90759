"""The check that ends every export: the result loaded the way its engine loads it, one answer generated, and
what happened written next to the export (``export_check.json``) and said."""

from __future__ import annotations

import json
from pathlib import Path

from lora_ft import console
from lora_ft.files import write_text_atomic

CHECK_FILE = "export_check.json"
CHECK_PROMPT = "What is consideration in contract law?"


def write_check(directory: Path, check: dict) -> dict:
    write_text_atomic(directory / CHECK_FILE, json.dumps(check, indent=2) + "\n")
    status = {True: "passed", False: "FAILED",
              None: "NOT RUN in an engine (the file is readable; no answer was generated)"}[check["passed"]]
    console.say(f"export check ({check['loader']}): {status}")
    console.say(f"  prompt: {check['prompt']}")
    if check.get("answer") is not None:
        console.say(f"  answer: {check['answer'][:300]}")
    if check.get("note"):
        console.say(f"  note: {check['note']}")
    return check
