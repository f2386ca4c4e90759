"""The ``lora-ft`` command line. Heavy libraries are imported inside the commands, so ``--help`` is instant."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from lora_ft import __version__
from lora_ft.errors import EXIT_FAILURE, EXIT_USAGE, UserError

EPILOG = """examples:
  lora-ft train configs/legal_domain.yaml
  lora-ft train configs/legal_domain.yaml --set train.max_steps=20 --set model.quantization=nf4
  lora-ft train configs/legal_domain.yaml --nproc 4          # four GPUs on this machine (DDP)
  lora-ft validate configs/legal_domain.yaml
  lora-ft data configs/legal_domain.yaml --samples 2 --json data-report.json
  lora-ft eval runs/legal-domain
  lora-ft chat runs/legal-domain
  lora-ft export runs/legal-domain --format gguf
  lora-ft push runs/legal-domain --repo your-name/legal-lora   # the adapter, private, with a model card
  lora-ft ui runs                                            # the runs in a browser: http://127.0.0.1:7860
docs: docs/config.md (every key), docs/data.md (data formats), docs/run-directory.md, docs/evaluation.md,
      docs/serving.md"""


class _Parser(argparse.ArgumentParser):
    """argparse that exits with our usage code and a hint instead of its own."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.print_usage(sys.stderr)
        sys.stderr.write(f"error: {message}\n  fix: see `{self.prog} --help`\n")
        raise SystemExit(EXIT_USAGE)


def PATH(value: str) -> str:
    """A path given on the command line: ``~`` is the home folder even where the shell left it (quoted, or after
    ``=``), as it is in a config."""
    import os.path

    return os.path.expanduser(value)


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=PATH, help="the run's YAML config file")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.learning_rate=1e-4 (repeatable; lists by index: "
        "data.train.0.path=...)",
    )


def _add_cache_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-cache", action="store_true",
                        help="tokenize the data again and keep it only for this command, instead of reusing and "
                        "keeping it in the tokenized-data cache (data.cache_dir)")


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
    _add_cache_arg(train)
    train.add_argument("--nproc", type=int, default=1, metavar="N",
                       help="train on N processes on this machine (one per GPU) through torchrun; several "
                       "machines: see docs/distributed.md")
    train.add_argument("--nnodes", type=POSITIVE_INT, default=1, metavar="M",
                       help="with --rdzv-endpoint: this machine is one of M, each running this same command (a "
                       "c10d rendezvous at HOST:PORT, named after the output directory)")
    train.add_argument("--rdzv-endpoint", metavar="HOST:PORT",
                       help="where the machines of a --nnodes run meet: the first machine's address and a free port")
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
    _add_cache_arg(data)
    data.add_argument("--samples", type=COUNT, default=1, metavar="N",
                      help="training samples to show rendered, trained tokens marked (default 1)")
    data.add_argument("--json", type=PATH, metavar="FILE", help="also write the whole report as JSON (for CI)")
    data.add_argument("--plot", type=PATH, metavar="FILE.png",
                      help="also write a PNG histogram of prompt and answer lengths (needs lora-ft[plot])")

    plan = sub.add_parser("plan", help="estimate peak memory and time per epoch before training",
                          description="Estimate peak memory (weights, LoRA states, activations, logits) and time "
                          "per epoch for the config on this machine or a named GPU size; say whether it fits and "
                          "which settings would make it fit. Exit code 2 when it does not fit.")
    _add_config_args(plan)
    _add_cache_arg(plan)
    plan.add_argument("--gpu", metavar="GB", help="plan for a GPU of this size (24, 40, 48, 80, 141) instead of "
                      "this machine")
    plan.add_argument("--nproc", type=POSITIVE_INT, default=1, metavar="N",
                      help="plan for N processes (GPUs) with the config's distributed.strategy: memory per process "
                      "(sharded under fsdp), time per epoch over all of them")
    plan.add_argument("--measure", action="store_true",
                      help="also run a few real training steps here and compare the estimate with the measured peak")

    from lora_ft.exports.targets.merged import add_merge_arguments

    merge = sub.add_parser("merge", help="merge a run's adapter into a full-precision copy of its base",
                           description="Merge the adapter into the base weights (never into 4-bit weights), save "
                           "safetensors, tokenizer and generation config, and check parity with base + adapter.")
    _add_run_args(merge)
    merge.add_argument("--out", type=PATH, help="output directory (default: RUN_DIR/merged)")
    add_merge_arguments(merge)

    from lora_ft.exports import targets  # light: the targets' modules import their libraries when they run

    found = targets.registry()
    export = sub.add_parser("export", help=f"export a run for serving: {', '.join(found)}",
                            description="Export for serving; each export ends with a load-and-generate check. "
                            "Formats: " + "; ".join(f"{t.name}: {t.help}" for t in found.values()) + ".")
    _add_run_args(export)
    export.add_argument("--format", required=True, choices=list(found))
    export.add_argument("--out", type=PATH, help="output directory (default: RUN_DIR/export-FORMAT)")
    for target in found.values():
        if target.add_arguments is not None:
            target.add_arguments(export)

    from lora_ft.exports.hub import ARTIFACTS  # light: huggingface_hub is imported when a push runs

    push = sub.add_parser("push", help="upload a run's adapter, merged model or GGUF files to the Hugging Face Hub",
                          description="Upload an export of a finished run (RUN_DIR/export-peft, export-merged or "
                          "export-gguf, as `lora-ft export` writes them) to a Hub model repo in one commit, with a "
                          "model card (base model, library, tags, datasets, license). The repo is private unless "
                          "--public. The token is HF_TOKEN's or that of `hf auth login`. An interrupted push "
                          "resumes when the same command runs again: files the Hub received are not sent again.")
    push.add_argument("run_dir", type=PATH, metavar="RUN_DIR", help="a finished run directory (as `lora-ft train` "
                      "wrote it)")
    push.add_argument("--repo", required=True, metavar="NAME",
                      help="the Hub repo: your-name/NAME or an-org/NAME (a bare NAME goes to the token owner)")
    push.add_argument("--artifact", choices=list(ARTIFACTS), default="adapter",
                      help="what to upload: adapter (from export-peft, default), merged (export-merged) or gguf "
                      "(export-gguf)")
    push.add_argument("--export-dir", type=PATH, metavar="DIR",
                      help="the export folder, when `lora-ft export --out` wrote it elsewhere")
    push.add_argument("--public", action="store_true", help="create the repo public (default: private)")
    push.add_argument("--revision", default="main", metavar="BRANCH",
                      help="the branch to commit to, created from main when missing (default main)")
    push.add_argument("--endpoint", metavar="URL",
                      help="the Hub's address (default: HF_ENDPOINT, else https://huggingface.co)")

    chat = sub.add_parser("chat", help="chat with a run's model (streaming)",
                          description="Interactive chat with base + adapter and the saved chat template. Commands: "
                          "/reset, /system TEXT, /tool RESULT (with --tools: the result of the model's last call), "
                          "/exit.")
    _add_run_args(chat)
    _add_sampling_args(chat, temperature=0.7, max_new_tokens=512)
    _add_tools_arg(chat)

    generate = sub.add_parser("generate", help="answer one prompt or a file of prompts",
                              description="Generate answers with base + adapter; prompts from --prompt or a file "
                              "with one prompt per line (or a .jsonl with a 'prompt' field, and 'tools' of its "
                              "own); a file's greedy answers (--temperature 0) are generated 32 at a time, each the "
                              "same as its prompt alone.")
    _add_run_args(generate)
    source = generate.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt")
    source.add_argument("--prompts", type=PATH, metavar="FILE")
    _add_sampling_args(generate, temperature=0.0, max_new_tokens=256)
    _add_tools_arg(generate)

    evaluate = sub.add_parser(
        "eval", help="did the fine-tune help? base vs tuned: loss, answer metrics, forgetting, benchmarks",
        description="Evaluate the base (or starting) model and the tuned one on the run's eval data (or --data "
        "FILE): loss, and answers to its prompts (batched, greedy) scored against the references (ROUGE-L, "
        "chrF, token F1), stop rate, length and repetition; the same on general instructions (a forgetting "
        "check); lm-evaluation-harness tasks with --tasks; where the conversations have tools, the calls made at "
        "each assistant turn, scored against the reference's. Prints tables and a verdict, and writes "
        "RUN_DIR/eval/report.md, report.json and samples.jsonl.")
    _add_run_args(evaluate)
    evaluate.add_argument("--data", type=PATH, help="a data file to evaluate on instead of the run's eval data")
    evaluate.add_argument("--general", type=PATH, metavar="FILE",
                          help="general instruction data for the forgetting check (default: the general "
                          "instructions shipped with lora-ft, a few hundred varied pairs)")
    evaluate.add_argument("--no-general", action="store_true", help="skip the forgetting check")
    evaluate.add_argument("--max-answers", type=COUNT, default=100,
                          help="prompts answered per data set, from the top of the file; the loss covers every "
                          "sample (default 100; 0: no answers, losses only)")
    evaluate.add_argument("--max-tool-turns", type=COUNT, default=200, metavar="N",
                          help="assistant turns of held-out conversations with tools answered, each from the "
                          "conversation before it, its calls scored (default 200, spread over all; 0: none)")
    evaluate.add_argument("--max-new-tokens", type=POSITIVE_INT, default=256,
                          help="longest answer in tokens (default 256)")
    evaluate.add_argument("--batch-size", type=POSITIVE_INT, default=64,
                          help="prompts answered at once (default 64)")
    evaluate.add_argument("--samples", type=COUNT, default=3, help="answers to show side by side (default 3)")
    evaluate.add_argument("--tasks", metavar="NAME[,NAME]",
                          help="lm-evaluation-harness tasks to run for both models (needs lora-ft[eval])")
    evaluate.add_argument("--include-path", type=PATH, metavar="DIR",
                          help="a folder of harness task YAML files, e.g. examples/legal/harness (works offline)")
    evaluate.add_argument("--task-limit", type=POSITIVE_INT, help="score only the first N documents of each task")
    evaluate.add_argument("--out", type=PATH, help="report directory (default: RUN_DIR/eval)")
    ui = sub.add_parser("ui", help="a local web page: runs, curves, reports, compare, chat, new runs",
                        description="Serve a web page over a folder of runs: every run with its status and eval "
                        "losses (live while training), a run's curves, config, data and eval reports and downloads, "
                        "runs compared, the base and tuned model answering side by side, and a form that checks, "
                        "plans, starts, stops and resumes training (the same commands as here). It listens on "
                        "127.0.0.1 only, unless --host names another address and LORA_FT_UI_PASSWORD is set. Needs "
                        "lora-ft[ui] (Gradio).")
    ui.add_argument("runs_dir", type=PATH, nargs="?", default="runs", metavar="RUNS_DIR",
                    help="the folder of run directories (default: runs)")
    ui.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default 127.0.0.1: this machine only; any other needs "
                    "LORA_FT_UI_PASSWORD)")
    ui.add_argument("--port", type=POSITIVE_INT, default=7860, help="port (default 7860)")
    ui.add_argument("--user", default="lora-ft", help="login name when a password is set (default lora-ft)")
    ui.add_argument("--open", action="store_true", help="open the page in this machine's browser")
    return parser


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


def _add_tools_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tools", type=PATH, metavar="FILE.json",
                        help="functions the model may call: a JSON list of tools in OpenAI's shape or of bare "
                        "function schemas, put in the prompt by the chat template; the calls made are shown parsed")


def _add_run_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=PATH, metavar="RUN_DIR", help="a finished run directory (as `lora-ft train` wrote it)")
    parser.add_argument("--base", type=PATH, help="the base model's directory, when it has moved since training")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    # bitsandbytes logs at import, on CPUs with AVX-512, that an optional kernel cannot be fetched from the hub
    # (it falls back to its own): noise that means nothing to the user
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    # its kernel resolver warns, offline (HF_HUB_OFFLINE=1), that it skips a hub check it could not make anyway
    logging.getLogger("kernels").setLevel(logging.ERROR)
    try:
        return importlib.import_module(f"lora_ft.commands.{args.command}").run(args)
    except UserError as exc:
        return _fail(exc.render(), exc.exit_code)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except MemoryError:
        return _fail("error: out of memory. fix: lower train.batch_size or data.max_seq_length, or use "
                     "model.quantization: nf4", EXIT_FAILURE)
    except OSError as exc:
        from lora_ft.errors import file_system_error

        error = file_system_error(exc)
        if error is None:
            raise
        return _fail(error.render(), error.exit_code)
    except RuntimeError as exc:
        if type(exc).__name__ != "OutOfMemoryError":  # torch.OutOfMemoryError: the GPU's memory
            raise
        return _fail(f"error: out of GPU memory ({str(exc).splitlines()[0][:200]})\n  fix: run `lora-ft plan CONFIG "
                     "--gpu GB` for settings that fit; lower train.batch_size (raise train.gradient_accumulation_steps "
                     "to keep the effective batch) or data.max_seq_length, keep model.quantization: nf4 and "
                     "model.gradient_checkpointing on. A training run resumes from its last checkpoint with the same "
                     "command (add --force-resume after changing the batch)", EXIT_FAILURE)


def _fail(text: str, exit_code: int) -> int:
    """Tell a failure on one screen: on standard error, or, in a process that `train --nproc` started, to the
    launcher, which tells the first process's failure once (lora_ft/launching.py)."""
    from lora_ft.launching import report_failure

    sys.stdout.flush()
    if not report_failure(text, exit_code):
        print(text, file=sys.stderr, flush=True)
    return exit_code


if __name__ == "__main__":
    raise SystemExit(main())
