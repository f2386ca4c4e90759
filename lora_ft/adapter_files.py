"""A finished run's adapter files checked before any model loads: the PEFT config readable and complete, the
safetensors file framed as its header says. Both training from a run's adapter (``model.adapter``) and every command
that opens a finished run check them here."""

from __future__ import annotations

import json
from pathlib import Path

from lora_ft.errors import UserError


def check_adapter_files(adapter_dir: Path, named_by: str = "") -> None:
    """Refuse an adapter whose files were damaged after training (a copy cut short, an edit), before any model
    loads: PEFT and safetensors would fail deep inside with a traceback. Every command that opens a finished run's
    adapter checks it here (``named_by``: the config key that points at it, such as ``model.adapter``)."""
    fix = ("the adapter was changed after training: restore it from a copy, or export again from the run's last "
           f"checkpoint: lora-ft train CONFIG --resume {adapter_dir.parent}/checkpoints/checkpoint-N "
           "--set output_dir=NEW")
    of = f" (of the run {named_by} names)" if named_by else ""  # the path itself is where
    if named_by:
        fix += f"; or point {named_by} at another finished run"
    config_file = adapter_dir / "adapter_config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{config_file.name}{of} is not readable JSON: {exc}", where=str(config_file),
                        fix=fix) from None
    lacking = [k for k in ("peft_type", "r", "target_modules") if not isinstance(config, dict) or k not in config]
    if lacking:
        raise UserError(f"{config_file.name}{of} lacks {', '.join(lacking)}: it is not a PEFT adapter config",
                        where=str(config_file), fix=fix)
    weights = adapter_dir / "adapter_model.safetensors"
    problem = safetensors_problem(weights)
    if problem:
        raise UserError(f"{weights.name}{of} is damaged: {problem}", where=str(weights), fix=fix)


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file's framing (header and size), or None: no tensor is read."""
    size = path.stat().st_size
    try:
        with path.open("rb") as fh:
            header_size = int.from_bytes(fh.read(8), "little")
            if size < 8 or header_size > size - 8:
                return f"{size:,} bytes, shorter than its own header says (a copy cut short?)"
            header = json.loads(fh.read(header_size))
    except (OSError, ValueError) as exc:
        return f"its header is unreadable ({exc})"
    if not isinstance(header, dict):
        return "its header is not a table of tensors"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
            and isinstance(v.get("data_offsets"), list) and len(v["data_offsets"]) == 2]
    expected = 8 + header_size + max(ends, default=0)
    if expected != size:
        return f"{size:,} bytes where its header describes {expected:,} (truncated or padded)"
    return None
