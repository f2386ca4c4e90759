"""The ``lora-ft`` command line. Heavy libraries are imported inside the commands, so ``--help`` is instant."""

from __future__ import annotations

import argparse
import logging
import sys

from lora_ft import __version__
from lora_ft.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, UserError

EPILOG = """examples:
  lora-ft train configs/legal_domain.yaml
  lora-ft train configs/legal_domain.yaml --set train.max_steps=20 --set model.quantization=nf4
  lora-ft train configs/legal_domain.yaml --nproc 4          # four GPUs on this machine (DDP)
  lora-ft validate configs/legal_domain.yaml
  lora-ft data configs/legal_domain.yaml --samples 2 --json data-report.json
  lora-ft eval runs/legal-domain
  lora-ft chat runs/legal-domain
  lora-ft export runs/legal-domain --format gguf
docs: docs/config.md (every key), docs/data.md (data formats), docs/run-directory.md, docs/serving.md"""


class _Parser(argparse.ArgumentParser):
    """argparse that exits with our usage code and a hint instead of its own."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.print_usage(sys.stderr)
        sys.stderr.write(f"error: {message}\n  fix: see `{self.prog} --help`\n")
        raise SystemExit(EXIT_USAGE)


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="the run's YAML config file")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.learning_rate=1e-4 (repeatable; lists by index: "
        "data.train.0.path=...)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="lora-ft",
        description="Fine-tune large language models with LoRA and QLoRA from one YAML file.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"lora-ft {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    train = sub.add_parser("train", help="fine-tune a model as the config says",
                           description="Validate the config, read and check the data, load the model, attach LoRA, "
                           "train, evaluate and write the run directory. An interrupted run (killed, preempted, "
                           "Ctrl-C) resumes from its newest complete checkpoint when the same command runs again. "
                           "Exit codes: 0 done, 2 bad input, 3 NaN/Inf gradients, 4 a checkpoint could not be "
                           "written, 130/143 stopped by SIGINT/SIGTERM after saving a checkpoint.")
    _add_config_args(train)
    train.add_argument("--resume", default="auto", metavar="auto|never|PATH",
                       help="auto (default): resume an interrupted run in output_dir from its newest complete "
                       "checkpoint; never: refuse a non-empty output_dir; PATH: start from that checkpoint folder")
    train.add_argument("--force-resume", action="store_true",
                       help="resume even though the config or data differ from what the checkpoint was trained on")
    train.add_argument("--nproc", type=int, default=1, metavar="N",
                       help="train on N processes on this machine (one per GPU) through torchrun; several "
                       "machines: see docs/distributed.md")
    validate = sub.add_parser("validate", help="check a config and print it with every default filled in",
                              description="Check a config without loading anything heavy; exit 2 on any fault.")
    _add_config_args(validate)
    data = sub.add_parser("data", help="report what the data becomes before training: rows, faults, token "
                          "lengths, truncation, duplicates, leakage",
                          description="Read the data and the tokenizer (no model weights) and report, per dataset, "
                          "rows read, kept and dropped (with file:line), token-length statistics and a histogram, "
                          "what data.max_seq_length and data.overlength do, exact duplicates, eval rows also in "
                          "train, and samples rendered with the chat template, trained tokens marked. Exit 2 when "
                          "`lora-ft train` would stop on this data.")
    _add_config_args(data)
    data.add_argument("--samples", type=COUNT, default=1, metavar="N",
                      help="training samples to show rendered, trained tokens marked (default 1)")
    data.add_argument("--json", metavar="FILE", help="also write the whole report as JSON (for CI)")
    data.add_argument("--plot", metavar="FILE.png",
                      help="also write a PNG histogram of prompt and answer lengths (needs matplotlib)")

    plan = sub.add_parser("plan", help="estimate peak memory and time per epoch before training",
                          description="Estimate peak memory (weights, LoRA states, activations, logits) and time "
                          "per epoch for the config on this machine or a named GPU size; say whether it fits and "
                          "which settings would make it fit. Exit code 2 when it does not fit.")
    _add_config_args(plan)
    plan.add_argument("--gpu", metavar="GB", help="plan for a GPU of this size (24, 40, 48, 80, 141) instead of "
                      "this machine")
    plan.add_argument("--measure", action="store_true",
                      help="also run a few real training steps here and compare the estimate with the measured peak")

    merge = sub.add_parser("merge", help="merge a run's adapter into a full-precision copy of its base",
                           description="Merge the adapter into the base weights (never into 4-bit weights), save "
                           "safetensors, tokenizer and generation config, and check parity with base + adapter.")
    _add_run_args(merge)
    merge.add_argument("--out", help="output directory (default: RUN_DIR/merged)")
    _add_merge_args(merge)

    export = sub.add_parser("export", help="export a run for serving: peft adapter, merged model or GGUF",
                            description="Export for vLLM (peft), transformers/vLLM/TGI (merged) or llama.cpp and "
                            "Ollama (gguf); each export ends with a load-and-generate check.")
    _add_run_args(export)
    export.add_argument("--format", required=True, choices=["peft", "merged", "gguf"])
    export.add_argument("--out", help="output directory (default: RUN_DIR/export-FORMAT)")
    _add_merge_args(export)
    export.add_argument("--gguf-types", default="f16,q8_0", help="gguf: comma-separated types (default f16,q8_0)")

    chat = sub.add_parser("chat", help="chat with a run's model (streaming)",
                          description="Interactive chat with base + adapter and the saved chat template. Commands: "
                          "/reset, /system TEXT, /exit.")
    _add_run_args(chat)
    _add_sampling_args(chat, temperature=0.7, max_new_tokens=512)

    generate = sub.add_parser("generate", help="answer one prompt or a file of prompts",
                              description="Generate answers with base + adapter; prompts from --prompt or a file "
                              "with one prompt per line (or a .jsonl with a 'prompt' field).")
    _add_run_args(generate)
    source = generate.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt")
    source.add_argument("--prompts", metavar="FILE")
    _add_sampling_args(generate, temperature=0.0, max_new_tokens=256)

    evaluate = sub.add_parser("eval", help="held-out loss, perplexity and answers: base vs tuned",
                              description="Evaluate base and tuned model on the run's eval data (or --data FILE); "
                              "print a table and write RUN_DIR/eval/report.json and report.md.")
    _add_run_args(evaluate)
    evaluate.add_argument("--data", help="a data file to evaluate on instead of the run's eval data")
    evaluate.add_argument("--samples", type=COUNT, default=3, help="answers to generate and show (default 3)")
    evaluate.add_argument("--out", help="report directory (default: RUN_DIR/eval)")
    return parser


def _add_merge_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"],
                        help="dtype of the merged weights (default: the base model's)")
    parser.add_argument("--into", choices=["original", "dequantized"], default="original",
                        help="for QLoRA runs: merge into the original 16-bit base (default) or into the "
                        "dequantized NF4 weights the adapter was trained against (see docs/serving.md)")


def _number(kind, smallest, what: str):
    """An argparse type: a number of ``kind`` no smaller than ``smallest``; anything else is a usage error."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {what}") from None
        if value != value or value < smallest:  # NaN, or too small
            raise argparse.ArgumentTypeError(f"{text} is not a {what}")
        return value
    parse.__name__ = what
    return parse


POSITIVE_INT = _number(int, 1, "whole number of at least 1")
COUNT = _number(int, 0, "whole number of 0 or more")
NON_NEGATIVE = _number(float, 0.0, "number of 0 or more")


def _add_sampling_args(parser: argparse.ArgumentParser, temperature: float, max_new_tokens: int) -> None:
    parser.add_argument("--temperature", type=NON_NEGATIVE, default=temperature,
                        help=f"0 for greedy decoding (default {temperature:g})")
    parser.add_argument("--max-new-tokens", type=POSITIVE_INT, default=max_new_tokens,
                        help=f"longest answer in tokens (default {max_new_tokens})")


def _add_run_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a finished run directory (as `lora-ft train` wrote it)")
    parser.add_argument("--base", help="the base model's directory, when it has moved since training")


def _say(message: str = "") -> None:
    print(message, flush=True)


def cmd_validate(args) -> int:
    from lora_ft.config import dump_config, load_config

    loaded = load_config(args.config, args.overrides)
    _say(dump_config(loaded.config).rstrip())
    _say(f"\nconfig OK: {args.config}")
    return EXIT_OK


def cmd_data(args) -> int:
    import os
    from pathlib import Path

    from lora_ft import data_report
    from lora_ft.config import load_config

    if args.plot:
        data_report.require_matplotlib()  # before the work, not after it
        data_report.check_output_file(Path(args.plot), "png")
    if args.json:
        data_report.check_output_file(Path(args.json), "json")
    loaded = load_config(args.config, args.overrides)
    _quiet()
    report = data_report.build_report(loaded, samples=args.samples, say=_say)
    color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    _say(data_report.render_text(report, color=color))
    if args.json:
        data_report.write_json(report, Path(args.json))
        _say(f"\nJSON report: {args.json}")
    if args.plot:
        data_report.write_plot(report, Path(args.plot))
        _say(f"length histogram: {args.plot}")
    if not report.ok:
        raise UserError(f"`lora-ft train` would stop on this data: {len(report.problems)} problem(s), listed "
                        "under '== verdict' above", fix="fix them, then run `lora-ft data` again")
    return EXIT_OK


def cmd_train(args) -> int:
    from lora_ft.config import load_config

    loaded = load_config(args.config, args.overrides)
    if args.nproc != 1:
        from lora_ft import distributed

        if args.nproc < 1:
            raise UserError(f"--nproc {args.nproc}: the number of processes must be at least 1", fix="--nproc 2")
        if distributed.current_world().distributed:
            raise UserError("--nproc was given inside a launcher that already started several processes",
                            fix="drop --nproc when running under torchrun or accelerate launch")
        argv = [args.config, *(a for o in args.overrides for a in ("--set", o)), "--resume", args.resume,
                *(["--force-resume"] if args.force_resume else [])]
        return distributed.launch(argv, args.nproc)
    from lora_ft import pipeline

    pipeline.train(loaded, say=_say, resume=args.resume, force_resume=args.force_resume)
    return EXIT_OK


def cmd_plan(args) -> int:
    from lora_ft import plan, settings
    from lora_ft.config import load_config

    loaded = load_config(args.config, args.overrides)
    _quiet()
    resolved = settings.resolve(loaded, has_cuda=True if args.gpu else None)
    tokens, samples, longest, model_dir = plan.data_tokens(loaded, resolved.config, _say)
    result = plan.make_plan(resolved.config, plan.read_shape(model_dir), tokens, samples, resolved.device, args.gpu,
                            longest)
    if args.measure:
        if args.gpu:
            raise UserError("--measure runs on this machine and cannot measure a named GPU", fix="drop --gpu")
        _say("measuring a few real training steps ...")
        result.measured_peak, result.measured_step_seconds = plan.measure(loaded, say=_say)
    _say(result.render())
    return EXIT_OK if result.fits else EXIT_USAGE


def cmd_merge(args) -> int:
    from pathlib import Path

    from lora_ft.finished_run import open_run
    from lora_ft.merge import merge_run

    run = open_run(args.run_dir)
    _quiet()
    out = Path(args.out) if args.out else run.run_dir / "merged"
    with _holding(run):
        report = merge_run(run, out, dtype=args.dtype, into=args.into, base=args.base, say=_say)
    _say(f"merged model: {out}")
    return EXIT_FAILURE if report.within_tolerance is False else EXIT_OK


def cmd_export(args) -> int:
    from pathlib import Path

    from lora_ft import export
    from lora_ft.finished_run import open_run

    run = open_run(args.run_dir)
    _quiet()
    out = Path(args.out) if args.out else run.run_dir / f"export-{args.format}"
    with _holding(run):
        if args.format == "peft":
            check = export.export_peft(run, out, base=args.base, say=_say)
        elif args.format == "merged":
            check = export.export_merged(run, out, dtype=args.dtype, into=args.into, base=args.base, say=_say)
        else:
            types = tuple(t.strip() for t in args.gguf_types.split(",") if t.strip())
            check = export.export_gguf(run, out, types=types, base=args.base, say=_say)
    _say(f"exported: {out}")
    return EXIT_FAILURE if check["passed"] is False else EXIT_OK  # None: not run in an engine, said above


def cmd_chat(args) -> int:
    from lora_ft import inference
    from lora_ft.finished_run import open_run

    run = open_run(args.run_dir)
    _quiet()
    model = inference.load_tuned(run, args.base, _say)
    tokenizer = inference.load_tokenizer(run)
    system = run.config.data.system_prompt
    history: list[dict[str, str]] = []
    _say(f"chatting with {run.run_dir} ({run.base_name} + adapter). /reset clears, /system TEXT sets the system "
         "message, /exit (or Ctrl-D) quits.")
    while True:
        try:
            line = input("\nyou> ").strip()
        except EOFError:
            _say()
            return EXIT_OK
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return EXIT_OK
        if line == "/reset":
            history = []
            _say("(conversation cleared)")
            continue
        if line.startswith("/system"):
            system = line[len("/system"):].strip() or None
            history = []
            _say(f"(system message {'set' if system else 'cleared'}; conversation cleared)")
            continue
        history.append({"role": "user", "content": line})
        messages = ([{"role": "system", "content": system}] if system else []) + history
        print("model> ", end="", flush=True)
        answer = ""
        for piece in inference.stream(model, tokenizer, run, messages, args.max_new_tokens, args.temperature):
            answer += piece
            print(piece, end="", flush=True)
        print(flush=True)
        history.append({"role": "assistant", "content": answer.strip()})


def _read_prompts(path: str) -> list[str]:
    import json
    from pathlib import Path

    file = Path(path)
    if not file.is_file():
        raise UserError(f"prompts file not found: {path}", fix="give a text file with one prompt per line")
    try:
        lines = [line for line in file.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    except UnicodeDecodeError:
        from lora_ft.data import _first_non_utf8

        line, _ = _first_non_utf8(file)
        raise UserError(f"the prompts file {path} is not UTF-8 text", where=f"{path}:{line}",
                        fix="save it as UTF-8") from None
    if file.suffix == ".jsonl":
        prompts = []
        for number, line in enumerate(lines, start=1):
            try:
                prompts.append(str(json.loads(line)["prompt"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise UserError(f"line {number} is not a JSON object with a 'prompt' field", where=f"{path}:{number}",
                                fix='write {"prompt": "..."} on each line') from exc
        return prompts
    return lines


def cmd_generate(args) -> int:
    import json

    from lora_ft import inference
    from lora_ft.finished_run import open_run

    run = open_run(args.run_dir)
    prompts = [args.prompt] if args.prompt is not None else _read_prompts(args.prompts)
    _quiet()
    model = inference.load_tuned(run, args.base, _say)
    tokenizer = inference.load_tokenizer(run)
    system = run.config.data.system_prompt
    for prompt in prompts:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        answer, stopped = inference.generate(model, tokenizer, run, messages, args.max_new_tokens, args.temperature)
        if args.prompts:
            _say(json.dumps({"prompt": prompt, "answer": answer, "stopped_at_end_of_turn": stopped}))
        else:
            _say(answer)
    return EXIT_OK


def cmd_eval(args) -> int:
    from lora_ft.evaluate import evaluate_run
    from lora_ft.finished_run import open_run

    run = open_run(args.run_dir)
    _quiet()
    with _holding(run):
        evaluate_run(run, data_file=args.data, samples_to_show=args.samples, out_dir=args.out, base=args.base,
                     say=_say)
    return EXIT_OK


def _holding(run):
    """The run's lock, for commands that write into a finished run (eval, merge, export): one at a time, and
    never while a training process holds it."""
    from lora_ft import run_lock

    return run_lock.RunLock(run.run_dir, run_lock.command_line())


def _quiet() -> None:
    from lora_ft.pipeline import quiet_libraries

    quiet_libraries()


COMMANDS = {"train": cmd_train, "validate": cmd_validate, "plan": cmd_plan, "data": cmd_data, "merge": cmd_merge, "export": cmd_export,
            "chat": cmd_chat, "generate": cmd_generate, "eval": cmd_eval}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    # bitsandbytes logs at import, on CPUs with AVX-512, that an optional kernel cannot be fetched from the hub
    # (it falls back to its own): noise that means nothing to the user
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    try:
        return COMMANDS[args.command](args)
    except UserError as exc:
        sys.stdout.flush()
        print(exc.render(), file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("error: out of memory. fix: lower train.batch_size or data.max_seq_length, or use "
              "model.quantization: nf4", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:
        from lora_ft.errors import file_system_error

        error = file_system_error(exc)
        if error is None:
            raise
        sys.stdout.flush()
        print(error.render(), file=sys.stderr, flush=True)
        return error.exit_code
    except RuntimeError as exc:
        if type(exc).__name__ != "OutOfMemoryError":  # torch.OutOfMemoryError: the GPU's memory
            raise
        sys.stdout.flush()
        print(f"error: out of GPU memory ({str(exc).splitlines()[0][:200]})\n  fix: run `lora-ft plan CONFIG --gpu "
              "GB` for settings that fit; lower train.batch_size (raise train.gradient_accumulation_steps to keep "
              "the effective batch) or data.max_seq_length, keep model.quantization: nf4 and "
              "model.gradient_checkpointing on. A training run resumes from its last checkpoint with the same "
              "command (add --force-resume after changing the batch)", file=sys.stderr, flush=True)
        return EXIT_FAILURE


if __name__ == "__main__":
    raise SystemExit(main())
