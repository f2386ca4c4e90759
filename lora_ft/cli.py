"""The ``lora-ft`` command line. Heavy libraries are imported inside the commands, so ``--help`` is instant."""

from __future__ import annotations

import argparse
import sys

from lora_ft import __version__
from lora_ft.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, UserError

EPILOG = """examples:
  lora-ft train configs/legal_domain.yaml
  lora-ft train configs/legal_domain.yaml --set train.max_steps=20 --set model.quantization=nf4
  lora-ft validate configs/legal_domain.yaml
docs: docs/config.md (every key), docs/data.md (data formats), docs/run-directory.md"""


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
                           "train, evaluate and write the run directory.")
    _add_config_args(train)
    validate = sub.add_parser("validate", help="check a config and print it with every default filled in",
                              description="Check a config without loading anything heavy; exit 2 on any fault.")
    _add_config_args(validate)
    return parser


def _say(message: str = "") -> None:
    print(message, flush=True)


def cmd_validate(args) -> int:
    from lora_ft.config import dump_config, load_config

    loaded = load_config(args.config, args.overrides)
    _say(dump_config(loaded.config).rstrip())
    _say(f"\nconfig OK: {args.config}")
    return EXIT_OK


def cmd_train(args) -> int:
    from lora_ft.config import load_config

    loaded = load_config(args.config, args.overrides)
    from lora_ft import pipeline

    pipeline.train(loaded, say=_say)
    return EXIT_OK


COMMANDS = {"train": cmd_train, "validate": cmd_validate}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return COMMANDS[args.command](args)
    except UserError as exc:
        sys.stdout.flush()
        print(exc.render(), file=sys.stderr, flush=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("error: out of memory. fix: lower train.batch_size or data.max_seq_length, or use "
              "model.quantization: nf4", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    raise SystemExit(main())
