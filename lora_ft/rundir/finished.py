"""Opening a finished run directory: its manifest, resolved config, adapter and base model.

Every command that works on a finished run (merge, export, chat, generate, eval) starts here, so a directory that
is not a run, or a run whose base model has gone, is refused the same way everywhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from lora_ft.adapter_files import check_adapter_files
from lora_ft.config import EMBEDDED_MODEL, RunConfig, looks_like_hub_id
from lora_ft.rundir import artifacts
from lora_ft.errors import UserError


@dataclass
class FinishedRun:
    run_dir: Path
    adapter_dir: Path
    manifest: dict
    config: RunConfig

    @property
    def base_path(self) -> str:
        return self.manifest["base_model"]["path"]

    @property
    def base_name(self) -> str:
        return self.manifest["base_model"]["name"]

    @property
    def upstream(self) -> str | None:
        return self.manifest["base_model"].get("upstream")

    @property
    def end_of_turn(self) -> str:
        return self.manifest["chat_template"]["end_of_turn"]

    @property
    def end_of_turn_id(self) -> int | None:
        return self.manifest["chat_template"].get("end_of_turn_id")

    @property
    def trained_quantized(self) -> bool:
        return self.config.model.quantization in ("nf4", "int8")

    @property
    def lora_rank(self) -> int:
        return self.config.lora.r


def open_run(path: str | Path) -> FinishedRun:
    """Read a finished run directory, or explain why it is not one."""
    run_dir = Path(path)
    fix = "pass the directory `lora-ft train` wrote (it holds adapter/, config.yaml and manifest.json)"
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a directory", fix=fix)
    manifest_file = run_dir / artifacts.MANIFEST_FILE
    if not manifest_file.is_file():
        unfinished = (run_dir / artifacts.CONFIG_FILE).is_file()
        raise UserError(
            f"{run_dir} is not a finished lora-ft run: "
            f"{'the run did not finish' if unfinished else 'no manifest.json'}",
            fix=fix,
        )
    try:
        manifest = json.loads(manifest_file.read_text())
        config = RunConfig.model_validate(yaml.safe_load((run_dir / artifacts.CONFIG_FILE).read_text()))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the run's manifest.json or config.yaml in {run_dir}: {exc}", fix=fix) from exc
    adapter_dir = run_dir / artifacts.ADAPTER_DIR
    missing = [n for n in ("adapter_config.json", "adapter_model.safetensors") if not (adapter_dir / n).is_file()]
    if missing:
        raise UserError(f"the run's adapter is incomplete: {', '.join(missing)} missing in {adapter_dir}", fix=fix)
    check_adapter_files(adapter_dir)
    return FinishedRun(run_dir=run_dir, adapter_dir=adapter_dir, manifest=manifest, config=config)


def locate_base(run: FinishedRun, override: str | None = None) -> str:
    """The base model's directory (or hub id), re-fetching the embedded model if its cache was cleared."""
    if override:
        if not Path(override).exists() and not looks_like_hub_id(override):
            raise UserError(f"--base {override} does not exist", fix="give the base model's directory")
        return override
    path = run.base_path
    if Path(path).is_dir():
        return path
    if run.config.model.base == EMBEDDED_MODEL:
        from lora_ft.embedded import ensure_embedded_model

        return str(ensure_embedded_model())
    if looks_like_hub_id(path):
        return path
    raise UserError(
        f"the run's base model is missing: {path}",
        fix="restore that directory, or pass --base PATH pointing at the same base model",
    )
