"""``lora-ft train CONFIG``: the order of a training run's steps, and nothing else.

config -> run directory -> data, tokenizer and tokens -> model and adapter -> trainer -> adapter and manifest.
Each step is a component that can be used and tested alone; this file only calls them in order.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from lora_ft import console, distributed, launching, tracking
from lora_ft.config import LoadedConfig, dump_config, resolve
from lora_ft.errors import EXIT_OK
from lora_ft.methods import method_of
from lora_ft.rundir import resume as resume_lib
from lora_ft.rundir.session import TrainingRunDir


@dataclass
class RunResult:
    run_dir: Path
    adapter_dir: Path
    outcome: object  # training.TrainOutcome
    manifest: dict
    model: object  # the trained PeftModel, for callers that go on in the same process


def run(args) -> int:
    from lora_ft.config import load_config

    loaded = load_config(args.config, args.overrides)
    if args.nproc != 1 or args.nnodes != 1:
        return launching.launch_training(args, loaded)
    train(loaded, resume=args.resume, force_resume=args.force_resume, cache=not args.no_cache)
    distributed.finish(distributed.current_world())
    return EXIT_OK


def train(loaded: LoadedConfig, say=None, resume: str = "auto", force_resume: bool = False,
          cache: bool = True) -> RunResult:
    """Run a whole fine-tuning job from a validated config; return where its results are.

    ``resume``: ``auto`` continues an interrupted run in the output directory from its newest complete checkpoint,
    ``never`` needs a fresh directory, a path starts from that checkpoint (see :mod:`lora_ft.rundir.resume`).
    ``say``: where the run's story goes (default: the console); a process that is not the main one says nothing.
    ``cache``: reuse and keep the tokenized data (:mod:`lora_ft.tokenized`).
    """
    started = time.time()
    resolved = resolve(loaded)
    world = distributed.current_world()
    distributed.check_supported(resolved.config, world)
    voice = console.capture(say) if say and world.is_main else nullcontext() if world.is_main else console.silenced()
    with voice, TrainingRunDir.held(resolved.config.output_dir, resume, world) as run_dir, \
            launching.peers_lost(world, resolved.config.output_dir):
        return _train(loaded, resolved, world, run_dir, started, resume, force_resume, cache)


def _train(loaded, resolved, world, run_dir: TrainingRunDir, started: float, resume: str, force_resume: bool,
           cache: bool):
    from lora_ft import model as model_lib
    from lora_ft import preparation, training
    from lora_ft.rundir import failures, final
    from lora_ft.rundir.record import finished_training

    cfg = resolved.config
    compared = json.loads(cfg.model_dump_json())
    start = run_dir.choose_start(resume, compared, force_resume)

    console.section("resolved config")
    console.say(dump_config(cfg).rstrip())
    for note in resolved.notes:
        console.note(note)
    wandb_mode = tracking.preflight(cfg) if world.is_main else None  # in seconds, before the model loads
    training.prepare_process(cfg)

    prepared = preparation.prepare(loaded, cfg, cache=cache, stream=True)
    fingerprint = prepared.fingerprint()
    resume_lib.check_same_run(start, compared, fingerprint, force_resume)

    distributed.start_process_group(world, resolved.device, cfg.distributed.timeout_minutes)
    model = model_lib.load_for_training(prepared.chat.source, cfg, resolved.device, prepared.stop_ids)
    train_set, eval_set = prepared.datasets()
    run_dir.begin(start, cfg, model.trainable, prepared.chat.source.path)
    trackers = (tracking.start_trackers(cfg, run_dir.path, compared, wandb_mode) if world.is_main
                else tracking.Trackers(report_to=["none"]))
    callbacks = training.loop_callbacks(cfg, run_dir, compared, fingerprint, world.size, trackers.callbacks)
    try:
        trainer = training.build_trainer(model.model, prepared.chat.tokenizer, cfg, train_set, eval_set,
                                         run_dir.checkpoint_dir, trackers.report_to, callbacks.for_trainer())
        console.section("training")
        console.say(training.plan_line(trainer, cfg, None if prepared.is_streamed else len(train_set), world))
        for note in trackers.notes:
            console.say(note)
        with failures.translated(run_dir.checkpoint_dir, trainer, cfg):
            outcome = training.run_training(trainer, callbacks, resolved.device, cfg.train.eval_before_training,
                                            eval_set is not None,
                                            0 if prepared.is_streamed else prepared.train_tokens.trained_tokens,
                                            resume_from=start.checkpoint.path if start.checkpoint else None,
                                            start_adapter=cfg.model.adapter, method=cfg.method)
    finally:
        trackers.finish()
        if model.per_sample_attention:
            model_lib.use_per_sample_attention(model.model, False)  # the returned model attends as the library does
    if prepared.is_streamed:
        for line in prepared.data.train.summary_lines():  # what the stream met, now that it has been read
            console.say(line)
    if outcome.interrupted_by is not None:
        raise failures.interrupted(outcome, loaded, run_dir.path)
    method_of(cfg.method).after_training(trainer.model)  # e.g. a preference method's reference copy dropped

    record = finished_training(prepared, loaded, resolved, model, outcome, start, trackers, started, run_dir.path)
    adapter_dir, manifest = final.write_finished_run(trainer, record, prepared.chat, world.is_main)
    if world.is_main:
        console.section("summary")
        console.say(record.outcome.summary_table(record.run_dir, adapter_dir))
    return RunResult(run_dir=run_dir.path, adapter_dir=adapter_dir, outcome=outcome, manifest=manifest,
                     model=trainer.model)
