"""The one place that knows the order of a training run's steps.

config -> settings -> data -> tokenizer and template -> tokens -> model and adapter -> trainer -> artifacts.
Each step lives in its own module and can be tested alone; this file only calls them in order and reports.
"""

from __future__ import annotations

import errno
import json
import time
from dataclasses import dataclass
from pathlib import Path

from lora_ft import (artifacts, checkpoints, data, data_report, distributed, run_lock, settings, tokenization,
                     tracking)
from lora_ft import resume as resume_lib
from lora_ft.config import LoadedConfig, dump_config
from lora_ft.errors import UserError
from lora_ft.files import write_text_atomic


@dataclass
class RunResult:
    run_dir: Path
    adapter_dir: Path
    outcome: object
    manifest: dict
    model: object  # the trained PeftModel, for callers that go on in the same process


def quiet_libraries() -> None:
    """Keep the libraries' deprecation chatter and per-file progress bars out of the run's output."""
    import warnings

    import datasets
    import transformers

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity_error()


def _section(say, title: str) -> None:
    say(f"\n== {title}")


def train(loaded: LoadedConfig, say=print, resume: str = "auto", force_resume: bool = False) -> RunResult:
    """Run a whole fine-tuning job from a validated config; return where its results are.

    ``resume``: ``auto`` continues an interrupted run in the output directory from its newest complete checkpoint,
    ``never`` needs a fresh directory, a path starts from that checkpoint (see :mod:`lora_ft.resume`).
    """
    started = time.time()
    resolved = settings.resolve(loaded)
    cfg = resolved.config
    world = distributed.current_world()
    if not world.is_main:
        say = _silent  # one voice: the main process reports; every process still raises its own errors
    check_distributed(cfg, world)
    lock = None
    if world.is_main:
        # Before anything in output_dir is read or written: refuse a folder that is not ours (reading only), then
        # hold the run's lock (creating the folder, its mark first) until this process is done with it.
        resume_lib.check_writable_run_dir(cfg.output_dir, resume)
        lock = run_lock.RunLock(cfg.output_dir, run_lock.command_line(), create=True).acquire()
    try:
        return _train(loaded, resolved, world, started, say, resume, force_resume)
    finally:
        if lock is not None:  # a run stopped before it wrote its config leaves nothing behind
            lock.release(unused=not (Path(cfg.output_dir) / artifacts.CONFIG_FILE).exists())


def _train(loaded: LoadedConfig, resolved, world, started: float, say, resume: str,
           force_resume: bool) -> RunResult:
    cfg = resolved.config
    resolved_dict = json.loads(cfg.model_dump_json())
    start = resume_lib.choose_start(cfg.output_dir, resume, say, tidy=world.is_main)
    if start.checkpoint is not None and start.checkpoint.finished_training:
        say(f"{start.checkpoint.path.name} holds the run's last step ({start.step}): nothing is left to train; "
            "the run is finished from it (adapter, evaluation, manifest)")
    resume_lib.check_same_run(start, resolved_dict, None, force_resume, say)  # the config, before loading anything
    resume_lib.check_same_processes(start, world.size, cfg.distributed.strategy, force_resume, say)

    _section(say, "resolved config")
    say(dump_config(cfg).rstrip())
    for note in resolved.notes:
        say(f"note: {note}")
    # the tracker is checked now, in seconds, not found broken after the model has loaded
    wandb_mode = tracking.preflight(cfg, say) if world.is_main else None

    import torch

    from lora_ft import model as model_lib
    from lora_ft import train as train_lib

    if resolved.device == "cpu":
        train_lib.reuse_freed_memory()
    quiet_libraries()
    torch.manual_seed(cfg.train.seed)

    _section(say, "data")
    loaded_data = data.load_data(loaded)
    for line in data_report.compact_lines(loaded_data):
        say(line)

    _section(say, "model")
    chat = model_lib.load_chat_tokenizer(loaded, cfg.model, say)
    source, tokenizer, renderer, template_origin = chat.source, chat.tokenizer, chat.renderer, chat.template_origin
    template = renderer.template
    say(chat.pad_note)
    template_check(say, cfg.data.template_checks, tokenization.check_end_of_turn_trained, renderer, cfg.data.train_on)
    say(f"chat template: {template_origin}; answers end with {renderer.end_of_turn!r} (trained)")

    train_tokens = tokenization.tokenize_samples(loaded_data.train, renderer, cfg.data.max_seq_length,
                                                 cfg.data.train_on, cfg.data.overlength)
    eval_tokens = tokenization.tokenize_samples(loaded_data.eval, renderer, cfg.data.max_seq_length,
                                                cfg.data.train_on, cfg.data.overlength)
    for name, toks in (("train", train_tokens), ("eval", eval_tokens)):
        if not toks.input_ids and name == "eval" and not loaded_data.eval:
            continue
        dropped_long = f"{len(toks.over_length)} dropped as longer than {cfg.data.max_seq_length} tokens; " \
            if cfg.data.overlength == "drop" else ""
        say(f"{name}: {len(toks.input_ids)} samples, {toks.tokens:,} tokens, {toks.trained_tokens:,} trained; "
            f"{toks.truncated} truncated at {cfg.data.max_seq_length} tokens (losing {toks.truncated_trained_tokens}"
            f" trained tokens); {dropped_long}{len(toks.dropped_no_label)} left with no trained token")
    for line in data_report.tokenized_stats_lines(train_tokens):
        say(line)
    if not train_tokens.input_ids:
        raise UserError("no training sample has a trained token left",
                        fix="raise data.max_seq_length, or check that the samples have answers")
    if renderer.end_of_turn_token_id() is not None:
        template_check(say, cfg.data.template_checks, tokenization.check_collated_end_of_turn, train_tokens,
                       renderer.end_of_turn_token_id(), tokenizer.pad_token_id,
                       cfg.train.padding_free or cfg.train.packing)

    data_fingerprint = resume_lib.data_fingerprint(train_tokens.input_ids, train_tokens.labels, eval_tokens.input_ids,
                                                   eval_tokens.labels, loaded_data.reports)
    resume_lib.check_same_run(start, resolved_dict, data_fingerprint, force_resume, say)

    say(f"loading {source.display_name} ({cfg.model.quantization}, {cfg.model.dtype}) on {resolved.device} ...")
    distributed.prepare_sharded_loading(cfg.distributed.strategy, world)
    base = model_lib.load_base_model(source, cfg.model, resolved.device, say)
    model = model_lib.attach_lora(base, cfg.lora)
    # exact per-sample attention for padding-free rows wherever FlashAttention-2 is not installed (CPU or GPU)
    per_sample_attention = (cfg.model.attn_implementation == "sdpa"
                            and (cfg.train.padding_free or cfg.train.packing))
    if per_sample_attention:
        model_lib.use_per_sample_attention(model, True)
    trainable, total = model_lib.count_parameters(model)
    say(f"LoRA: {trainable:,} trainable parameters of {total:,} ({100 * trainable / total:.3f}%)")

    from datasets import Dataset

    train_dataset = Dataset.from_dict({"input_ids": train_tokens.input_ids, "labels": train_tokens.labels})
    eval_dataset = (Dataset.from_dict({"input_ids": eval_tokens.input_ids, "labels": eval_tokens.labels})
                    if eval_tokens.input_ids else None)

    run_dir = start.run_dir
    tokenizer_size = artifacts.tokenizer_bytes(source.path)
    finished_training = start.checkpoint is not None and start.checkpoint.finished_training
    on_disk = len(checkpoints.scan_names(run_dir / artifacts.CHECKPOINT_DIR)[0]) if start.existing else 0
    artifacts.check_free_space(run_dir, artifacts.run_disk_need(trainable, cfg, tokenizer_size,
                                                                saves_left=not finished_training,
                                                                checkpoints_on_disk=on_disk))
    records: list[dict] = []
    if not world.is_main:
        pass  # only the main process writes the run directory
    elif start.existing:
        records = resume_lib.truncate_metrics(run_dir, start.step if start.checkpoint else -1)
        if start.forced_changes:
            write_text_atomic(run_dir / artifacts.CONFIG_FILE, dump_config(cfg))
    else:
        write_text_atomic(run_dir / artifacts.CONFIG_FILE, dump_config(cfg))  # the folder and its mark exist
    checkpoint_dir = run_dir / artifacts.CHECKPOINT_DIR
    trackers = (tracking.start_trackers(cfg, run_dir, resolved_dict, wandb_mode) if world.is_main
                else tracking.Trackers(report_to=["none"]))
    history = train_lib.LogHistory(run_dir / artifacts.METRICS_FILE, records)
    stop = train_lib.StopRequest()
    keeper = train_lib.CheckpointKeeper(
        checkpoint_dir, {"config": resolved_dict, "data": data_fingerprint, "processes": world.size},
        cfg.train.keep_last,
        artifacts.checkpoint_bytes(trainable, tokenizer_size), cfg.train.save_every_minutes, stop)
    try:
        trainer = train_lib.build_trainer(
            model, tokenizer, cfg, train_dataset, eval_dataset, checkpoint_dir, trackers.report_to,
            [train_lib.ProgressBar(), history, train_lib.NonFiniteGuard(cfg.train.nonfinite,
                                                                        cfg.train.max_skipped_steps),
             keeper, *trackers.callbacks],
        )
        _section(say, "training")
        steps = f"{trainer.args.max_steps} steps" if trainer.args.max_steps > 0 else f"{cfg.train.epochs:g} epoch(s)"
        saves = (f"a checkpoint every {trainer.args.save_steps} steps" if trainer.args.save_strategy != "no"
                 else "no step checkpoints (train.save_steps: null)")
        minutes = f" and every {cfg.train.save_every_minutes:g} min" if cfg.train.save_every_minutes else ""
        processes = (f" ({cfg.train.batch_size} x {cfg.train.gradient_accumulation_steps} accumulation x "
                     f"{world.size} processes, {cfg.distributed.strategy})" if world.distributed else "")
        say(f"{len(train_dataset)} samples, effective batch "
            f"{cfg.train.batch_size * cfg.train.gradient_accumulation_steps * world.size}{processes}, {steps}; "
            f"{saves}{minutes}, newest {cfg.train.keep_last} kept")
        for note in trackers.notes:
            say(note)
        try:
            outcome = train_lib.run_training(
                trainer, resolved.device, cfg.train.eval_before_training, eval_dataset is not None,
                train_tokens.trained_tokens, say, resume_from=start.checkpoint.path if start.checkpoint else None,
                stop=stop)
        except train_lib.NonFiniteGradients as exc:
            raise diverged(exc, cfg, run_dir) from None
        except train_lib.CheckpointNoSpace as exc:
            raise checkpoint_write_failed(checkpoint_dir, exc.step, f"{exc.needed / 2**20:,.0f} MiB needed, "
                                          f"{exc.free / 2**20:,.0f} MiB free") from None
        except Exception as exc:
            if checkpoints.is_cut_short(checkpoint_dir / f"checkpoint-{trainer.state.global_step}"):
                raise checkpoint_write_failed(checkpoint_dir, trainer.state.global_step, str(exc)) from exc
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):  # e.g. the metrics log
                raise checkpoint_write_failed(checkpoint_dir, trainer.state.global_step, str(exc),
                                              what=f"write {exc.filename or 'a file'} after step") from exc
            raise
    finally:
        trackers.finish()
        if per_sample_attention:
            model_lib.use_per_sample_attention(model, False)  # the returned model attends as the library does
    if outcome.interrupted_by is not None:
        raise interrupted(outcome, loaded, run_dir)

    try:
        staged = artifacts.save_adapter(trainer, tokenizer, template, run_dir, world.is_main)
        if not world.is_main:
            return RunResult(run_dir=run_dir, adapter_dir=run_dir / artifacts.ADAPTER_DIR, outcome=outcome,
                             manifest={}, model=trainer.model)
        template_check(say, cfg.data.template_checks, tokenization.check_saved_template, staged, template)
        data_rows = [
            {"path": r.path, "format": r.format, "rows_read": r.rows_read, "kept": r.kept,
             "dropped": r.dropped_count, "drop_reasons": {k: len(v) for k, v in r.dropped.items()},
             "sha256": r.sha256}
            for r in loaded_data.reports
        ]
        from lora_ft import embedded

        upstream = embedded.UPSTREAM_ID if source.is_embedded else None
        card = artifacts.model_card(
            base_name=source.display_name, base_path=source.path, upstream=upstream, cfg=cfg, data_rows=data_rows,
            outcome=outcome, trainable=trainable, total=total, end_of_turn=renderer.end_of_turn, run_dir=run_dir,
        )
        write_text_atomic(staged / "README.md", card)
        adapter_dir = artifacts.publish_adapter(staged, run_dir)
        manifest = artifacts.run_manifest(loaded, cfg, resolved, source, upstream, data_rows, template_origin, renderer,
                                tokenizer, trainable, total, outcome, start, trackers, started, run_dir, adapter_dir)
        artifacts.write_manifest(run_dir, manifest)
    except OSError as exc:
        raise final_save_failed(run_dir, outcome.steps, exc,
                                artifacts.adapter_bytes(trainable, tokenizer_size)) from exc
    _section(say, "summary")
    say(summary_table(outcome, run_dir, adapter_dir))
    return RunResult(run_dir=run_dir, adapter_dir=adapter_dir, outcome=outcome, manifest=manifest, model=trainer.model)


def final_save_failed(run_dir: Path, steps: int, exc: OSError, adapter_size: int) -> UserError:
    """The message for a final adapter (or manifest) that could not be written; what is kept, how to finish."""
    import shutil

    from lora_ft.errors import CheckpointWriteFailed

    shutil.rmtree(run_dir / artifacts.STAGED_ADAPTER, ignore_errors=True)  # half an adapter: never used
    committed = checkpoints.scan_names(run_dir / artifacts.CHECKPOINT_DIR)[0]
    newest = committed[-1] if committed else None
    newest_step = int(checkpoints.NAME.match(newest.name).group(1)) if newest else 0
    if newest and newest_step >= steps:
        kept = (f"the trained weights are safe in {newest.name}, the run's last step; the same command writes the "
                "adapter from it without training again")
    elif newest:
        kept = f"the newest complete checkpoint is {newest.name}; the same command resumes from it"
    else:
        kept = "no checkpoint was kept (train.save_steps: null), so the same command trains again from step 0"
    return CheckpointWriteFailed(
        f"could not write the final adapter in {run_dir} ({exc.strerror or exc}); {kept}",
        fix=f"free at least {adapter_size * 1.1 / 2**20 + 8:,.0f} MiB under {run_dir}, then run the same command",
    )


def _silent(*_args) -> None:
    return None


def check_distributed(cfg, world) -> None:
    """Refuse what the libraries cannot do with several processes, before anything is loaded."""
    if not (world.distributed or world.launched):
        return
    if cfg.distributed.strategy == "fsdp" and cfg.train.device != "cuda":
        raise UserError("distributed.strategy fsdp needs CUDA GPUs",
                        fix="use distributed.strategy: ddp (it also runs on CPU processes)")
    if cfg.distributed.strategy == "fsdp" and cfg.model.quantization == "int8":
        raise UserError("8-bit weights cannot be sharded by FSDP",
                        fix="use model.quantization: nf4 (QLoRA shards under FSDP) or none")
    if cfg.distributed.strategy == "fsdp" and world.distributed and cfg.train.optimizer in ("adamw_8bit",
                                                                                           "paged_adamw_8bit"):
        raise UserError(f"train.optimizer {cfg.train.optimizer} fails on FSDP's sharded (DTensor) parameters with "
                        "several processes", fix="use train.optimizer: auto (adamw_torch_fused)")


def _resume_command(loaded: LoadedConfig) -> str:
    overrides = "".join(f" --set {o}" for o in loaded.overrides)
    return f"lora-ft train {loaded.path or 'CONFIG'}{overrides}"


def interrupted(outcome, loaded: LoadedConfig, run_dir: Path) -> UserError:
    """The message for a run stopped by SIGTERM or SIGINT: what was saved and how to go on."""
    import signal

    from lora_ft.errors import RunInterrupted

    name = signal.Signals(outcome.interrupted_by).name
    saved = (f"checkpoint {outcome.checkpoint} is complete" if outcome.checkpoint
             else "no checkpoint could be saved")
    return RunInterrupted(f"{name} received: training stopped after step {outcome.steps}; {saved}",
                          outcome.interrupted_by,
                          fix=f"run the same command to resume from there: {_resume_command(loaded)}")


def checkpoint_write_failed(checkpoint_dir: Path, step: int, reason: str,
                            what: str = "write the checkpoint at step") -> UserError:
    """The message for a checkpoint that could not be written: the previous one is intact and is resumed from."""
    import shutil

    from lora_ft.errors import CheckpointWriteFailed

    cut_short = checkpoint_dir / f"checkpoint-{step}"
    if checkpoints.is_cut_short(cut_short) and run_lock.is_marked(checkpoint_dir.parent):
        shutil.rmtree(cut_short, ignore_errors=True)  # half a checkpoint: never resumed from, and it takes space
    committed = checkpoints.scan_names(checkpoint_dir)[0]
    previous = (f"the previous checkpoint {committed[-1]} is intact and complete, and a rerun resumes from it"
                if committed else "no earlier checkpoint exists, so a rerun starts from step 0")
    return CheckpointWriteFailed(
        f"could not {what} {step} ({reason}); {previous}",
        fix=f"free disk space under {checkpoint_dir.parent} (or lower train.keep_last), then run the same command",
    )


def diverged(stop, cfg, run_dir: Path) -> UserError:
    """The message for a run stopped on NaN or Inf gradients: where, what was kept, what to try."""
    from lora_ft.errors import TrainingDiverged

    committed = checkpoints.scan_names(run_dir / artifacts.CHECKPOINT_DIR)[0]
    kept = f"the last checkpoint is {committed[-1]}" if committed else "no checkpoint had been saved yet"
    skipped = f"; {len(stop.skipped)} earlier step(s) were skipped ({stop.skipped})" if stop.skipped else ""
    return TrainingDiverged(
        f"the gradients at step {stop.step} are NaN or Inf: training stopped before that optimizer step, so no "
        f"weight took the bad update; {kept}{skipped}",
        fix=f"lower train.learning_rate (now {cfg.train.learning_rate:g}) or train.max_grad_norm (now "
        f"{cfg.train.max_grad_norm:g}); check the data with `lora-ft data`; on a GPU try model.dtype: bfloat16 "
        "rather than float16; or set train.nonfinite: skip to skip such steps",
    )


def template_check(say, blocking: bool, check, *args) -> None:
    """Run one template check: a failure stops the run, or with data.template_checks: false, is a warning."""
    try:
        check(*args)
    except UserError as exc:
        if blocking:
            exc.fix = f"{exc.fix}; to train anyway, set data.template_checks: false" if exc.fix else exc.fix
            raise
        say(f"warning (data.template_checks is off): {exc.title}")


def summary_table(outcome, run_dir: Path, adapter_dir: Path) -> str:
    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}"

    change = ""
    if outcome.eval_loss_before is not None and outcome.eval_loss_after is not None:
        change = f"  ({outcome.eval_loss_after - outcome.eval_loss_before:+.4f})"
    rows = [
        ("steps", f"{outcome.steps}" + ("  (stopped early)" if outcome.stopped_early else "")),
        ("time", f"{outcome.seconds:.0f} s  ({outcome.tokens_per_second:.0f} non-pad tokens/s)"),
        ("train loss", fmt(outcome.train_loss)),
        ("eval loss before", fmt(outcome.eval_loss_before)),
        ("eval loss after", fmt(outcome.eval_loss_after) + change),
        ("tokens seen", f"{outcome.tokens_seen:,}"),
        ("peak memory", outcome.peak_memory),
        ("adapter", str(adapter_dir)),
        ("run directory", str(run_dir)),
    ]
    width = max(len(k) for k, _ in rows)
    rule = "-" * (width + 2 + max(len(v) for _, v in rows))
    return "\n".join([rule, *(f"{k.ljust(width)}  {v}" for k, v in rows), rule])
