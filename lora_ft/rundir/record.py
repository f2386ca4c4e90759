"""What a finished training run hands on, in one record: what ran, on what, and with what result. The manifest,
the model card and the run's summary are each written from it (:mod:`lora_ft.rundir.artifacts`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def data_rows(reports) -> list[dict]:
    """Each dataset as the manifest and the model card record it."""
    return [{"path": r.path, "format": r.format, "rows_read": r.rows_read, "kept": r.kept, "dropped": r.dropped_count,
             "drop_reasons": {k: len(v) for k, v in r.dropped.items()}, "sha256": r.sha256} for r in reports]


@dataclass(frozen=True)
class FinishedTraining:
    config: Any  # the resolved RunConfig
    config_file: Path | None  # the YAML it was read from
    overrides: list[str]  # the --set overrides
    config_dir: Path  # where relative paths in it were resolved (and its git commit is read)
    device: str  # "cuda" or "cpu"
    base_name: str  # the base model as a person names it
    base_path: str  # where it was loaded from
    upstream: str | None  # the hub model the embedded copy stands for, when it is the embedded one
    data: list[dict]  # each dataset's rows read, kept, dropped and hash (:func:`data_rows`)
    template_origin: str  # where the chat template came from
    end_of_turn: str  # the token that ends an answer
    end_of_turn_id: int | None
    pad_token: str | None
    trainable: int  # LoRA parameters
    total: int  # all parameters
    outcome: Any  # the TrainOutcome: steps, losses, rewards, time, memory
    forced_changes: list = field(default_factory=list)  # what --force-resume accepted
    tracker_notes: list[str] = field(default_factory=list)
    started: float = 0.0  # when the command started (time.time())
    run_dir: Path = Path(".")
    tokenized_data: dict = field(default_factory=dict)  # where its tokens are kept (the cache record)
    tool_format: str | None = None  # "hermes" where the run's template renders calls in lora-ft's hermes wrapper


def finished_training(prepared, loaded, resolved, model, outcome, start, trackers, started: float,
                      run_dir: Path) -> FinishedTraining:
    """The record of a run whose training ended: taken once, from the steps that made it."""
    from lora_ft import embedded
    from lora_ft.tool_template import is_hermes

    chat = prepared.chat
    return FinishedTraining(
        config=resolved.config, config_file=loaded.path, overrides=loaded.overrides, config_dir=loaded.base_dir,
        device=resolved.device, base_name=chat.source.display_name, base_path=chat.source.path,
        upstream=embedded.UPSTREAM_ID if chat.source.is_embedded else None,
        data=data_rows(prepared.data.reports), template_origin=chat.template_origin,
        end_of_turn=chat.renderer.end_of_turn, end_of_turn_id=chat.renderer.end_of_turn_token_id(),
        pad_token=chat.tokenizer.pad_token, trainable=model.trainable, total=model.total, outcome=outcome,
        forced_changes=start.forced_changes, tracker_notes=trackers.notes, started=started, run_dir=run_dir,
        tokenized_data=prepared.cache_record(),
        tool_format="hermes" if is_hermes(chat.renderer.template) else None)
