"""Write docs/config.md from the config schema, so the reference cannot drift from the code.

    python scripts/gen_config_docs.py          # rewrite docs/config.md
    python scripts/gen_config_docs.py --check  # exit 1 if docs/config.md is out of date (the test suite runs this)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic_core import PydanticUndefined

from lora_ft.config import schema_sections, type_name

DOC = Path(__file__).resolve().parent.parent / "docs" / "config.md"

HEADER = """# Configuration reference

Generated from the schema in `lora_ft/config/schema.py` by `scripts/gen_config_docs.py`; do not edit by hand.

A config is one YAML file. Unknown keys are rejected (with a "did you mean"), and every fault is reported at
once with its file, line and key, before anything heavy is loaded. Any key can be overridden on the command line:
`lora-ft train CONFIG --set train.learning_rate=1e-4 --set data.train.0.path=my.jsonl`.
`lora-ft validate CONFIG` checks a config and prints it with every default filled in; the run directory's
`config.yaml` is the resolved config, with every `auto` decided for the machine it ran on.

Secrets are never config keys: W&B reads `WANDB_API_KEY`, the model hub reads `HF_TOKEN`, from the environment.
"""


def default_text(field) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    if hasattr(value, "model_dump"):
        return "(section)"
    return f"`{json.dumps(value)}`"


def render() -> str:
    parts = [HEADER]
    for title, model in schema_sections():
        parts.append(f"\n## `{title}`\n\n{(model.__doc__ or '').strip()}\n")
        parts.append("| key | type | default | meaning |\n| --- | --- | --- | --- |")
        for name, field in model.model_fields.items():
            description = (field.description or "").replace("|", "\\|").replace("\n", " ")
            kind = type_name(field.annotation).replace("|", "\\|")
            parts.append(f"| `{name}` | {kind} | {default_text(field)} | {description} |")
    return "\n".join(parts) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if docs/config.md is out of date")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not DOC.is_file() or DOC.read_text() != text:
            print(f"{DOC} is out of date: run python scripts/gen_config_docs.py", file=sys.stderr)
            return 1
        print(f"{DOC} is up to date")
        return 0
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
