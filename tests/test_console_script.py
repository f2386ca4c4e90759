"""The installed `lora-ft` command itself, as a user's shell runs it: help, version, and Ctrl-C."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lora_ft import __version__

from .conftest import write_config


def _console_script() -> str:
    script = Path(sys.executable).with_name("lora-ft")  # installed into the environment running the tests
    found = str(script) if script.is_file() else shutil.which("lora-ft")
    if found is None:
        pytest.fail("the lora-ft console script is not installed: pip install -e . (bash scripts/setup.sh)")
    return found


def test_the_console_script_prints_help_and_its_version():
    help_text = subprocess.run([_console_script(), "--help"], capture_output=True, text=True, timeout=300)
    assert help_text.returncode == 0 and "usage: lora-ft" in help_text.stdout
    for command in ("train", "validate", "data", "plan", "eval", "chat", "generate", "merge", "export"):
        assert command in help_text.stdout
    version = subprocess.run([_console_script(), "--version"], capture_output=True, text=True, timeout=300)
    assert version.returncode == 0 and version.stdout.strip() == f"lora-ft {__version__}"
    bare = subprocess.run([_console_script()], capture_output=True, text=True, timeout=300)
    assert bare.returncode == 2 and "usage: lora-ft" in bare.stdout


def test_ctrl_c_in_a_command_exits_130_with_one_line(tiny_llama, legal_data, tmp_path):
    config = write_config(tmp_path / "run.yaml", tiny_llama, legal_data)
    assert subprocess.run([_console_script(), "train", str(config), "--set", "train.max_steps=1"],
                          capture_output=True, timeout=900).returncode == 0
    chat = subprocess.Popen([_console_script(), "chat", str(tmp_path / "run")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ})
    for line in chat.stdout:  # waits until the model is loaded and the prompt is up
        if line.startswith("chatting with"):
            break
    chat.send_signal(signal.SIGINT)
    out, err = chat.communicate(timeout=300)
    assert chat.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err
