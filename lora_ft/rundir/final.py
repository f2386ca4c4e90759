"""A finished training run's files: the adapter (with tokenizer, chat template and model card), then the
manifest, which marks the run as finished. Each is written whole or not at all."""

from __future__ import annotations

from pathlib import Path

from lora_ft.files import write_text_atomic
from lora_ft.rundir import artifacts
from lora_ft.rundir.failures import final_save_failed
from lora_ft.rundir.record import FinishedTraining


def write_finished_run(trainer, record: FinishedTraining, chat, is_main: bool) -> tuple[Path, dict]:
    """Save the adapter (every process takes part under FSDP; the main one writes), its model card, and the
    manifest, both written from ``record``; return (adapter folder, manifest). A failure to write leaves the
    checkpoints to finish from."""
    from lora_ft.data import template_checks, tokenization

    cfg, run_dir, template = record.config, record.run_dir, chat.renderer.template
    try:
        stop_ids = tokenization.answer_stop_ids(record.end_of_turn_id, chat.tokenizer.eos_token_id)
        staged = artifacts.save_adapter(trainer, chat.tokenizer, template, run_dir, is_main, stop_ids)
        if not is_main:
            return run_dir / artifacts.ADAPTER_DIR, {}
        template_checks.template_check(cfg.data.template_checks, template_checks.check_saved_template, staged,
                                       template)
        write_text_atomic(staged / "README.md", artifacts.model_card(record))
        adapter_dir = artifacts.publish_adapter(staged, run_dir)
        manifest = artifacts.run_manifest(record, adapter_dir)
        artifacts.write_manifest(run_dir, manifest)
    except OSError as exc:
        raise final_save_failed(run_dir, record.outcome.steps, exc, artifacts.adapter_bytes(
            record.trainable, artifacts.tokenizer_bytes(record.base_path))) from exc
    return adapter_dir, manifest
