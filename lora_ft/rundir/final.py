"""A finished training run's files: the adapter (with tokenizer, chat template and model card), then the
manifest, which marks the run as finished. Each is written whole or not at all."""

from __future__ import annotations

from pathlib import Path

from lora_ft import embedded
from lora_ft.files import write_text_atomic
from lora_ft.rundir import artifacts
from lora_ft.rundir.failures import final_save_failed


def data_rows(reports) -> list[dict]:
    """Each dataset as the manifest and the model card record it."""
    return [{"path": r.path, "format": r.format, "rows_read": r.rows_read, "kept": r.kept, "dropped": r.dropped_count,
             "drop_reasons": {k: len(v) for k, v in r.dropped.items()}, "sha256": r.sha256} for r in reports]


def write_finished_run(trainer, prepared, loaded, resolved, model, outcome, start, trackers, started: float,
                       run_dir: Path, is_main: bool) -> tuple[Path, dict]:
    """Save the adapter (every process takes part under FSDP; the main one writes), its model card, and the
    manifest; return (adapter folder, manifest). A failure to write leaves the checkpoints to finish from."""
    from lora_ft.data import template_checks, tokenization

    cfg, chat = resolved.config, prepared.chat
    template = chat.renderer.template
    try:
        stop_ids = tokenization.answer_stop_ids(chat.renderer.end_of_turn_token_id(), chat.tokenizer.eos_token_id)
        staged = artifacts.save_adapter(trainer, chat.tokenizer, template, run_dir, is_main, stop_ids)
        if not is_main:
            return run_dir / artifacts.ADAPTER_DIR, {}
        template_checks.template_check(cfg.data.template_checks, template_checks.check_saved_template, staged,
                                       template)
        rows = data_rows(prepared.data.reports)
        upstream = embedded.UPSTREAM_ID if chat.source.is_embedded else None
        card = artifacts.model_card(
            base_name=chat.source.display_name, base_path=chat.source.path, upstream=upstream, cfg=cfg,
            data_rows=rows, outcome=outcome, trainable=model.trainable, total=model.total,
            end_of_turn=chat.renderer.end_of_turn, run_dir=run_dir)
        write_text_atomic(staged / "README.md", card)
        adapter_dir = artifacts.publish_adapter(staged, run_dir)
        manifest = artifacts.run_manifest(loaded, cfg, resolved, chat.source, upstream, rows, chat.template_origin,
                                          chat.renderer, chat.tokenizer, model.trainable, model.total, outcome, start,
                                          trackers, started, run_dir, adapter_dir)
        manifest["tokenized_data"] = prepared.cache_record()
        artifacts.write_manifest(run_dir, manifest)
    except OSError as exc:
        raise final_save_failed(run_dir, outcome.steps, exc, artifacts.adapter_bytes(
            model.trainable, artifacts.tokenizer_bytes(chat.source.path))) from exc
    return adapter_dir, manifest
