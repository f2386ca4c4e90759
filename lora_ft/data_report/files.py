"""The data report's files: JSON for programs, a PNG histogram for people; output paths checked before the work."""

from __future__ import annotations

import json
from pathlib import Path

from lora_ft.data_report.report import DataReport
from lora_ft.errors import UserError
from lora_ft.files import write_text_atomic



def write_json(report: DataReport, path: Path) -> None:
    """Write the whole report as JSON (for CI)."""
    _write(path, json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")


def _write(path: Path, text: str) -> None:
    try:
        write_text_atomic(Path(path), text)
    except OSError as exc:
        from lora_ft.errors import file_system_error

        exc.filename = str(path)
        raise file_system_error(exc) or UserError(f"cannot write {path}: {exc.strerror or exc}",
                                                  fix="choose a writable path") from exc


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_output_file(path: Path, kind: str) -> None:
    """Refuse to write a report over a file that is not an earlier report of the same kind (a data file, the
    config, anything else of the user's); an earlier report is replaced, so CI can rerun the command."""
    path = Path(path)
    if not path.exists() or not path.is_file():
        return  # a new file, or a device such as /dev/stdout
    try:
        if kind == "json":
            earlier = json.loads(path.read_text(encoding="utf-8"))
            ours = isinstance(earlier, dict) and {"splits", "datasets", "ok"} <= set(earlier)
        else:
            with path.open("rb") as fh:
                ours = fh.read(8) == PNG_SIGNATURE
    except (OSError, ValueError):
        ours = False
    if not ours:
        raise UserError(f"{path} exists and is not an earlier `lora-ft data` report; lora-ft does not write over "
                        "it", fix=f"give a new file name for --{kind if kind == 'json' else 'plot'}")


def require_matplotlib() -> None:
    """Raise a :class:`UserError` saying how to install matplotlib when it is missing (it is optional)."""
    try:
        import matplotlib  # noqa: F401 - an import, not a look-up: a broken install is as good as none
    except ImportError:
        raise UserError("--plot needs matplotlib, which is not installed",
                        fix="pip install 'lora-ft[plot]' (or matplotlib), or leave out --plot (the text report has a "
                        "histogram too)") from None


def write_plot(report: DataReport, path: Path) -> None:
    """A PNG with histograms of the training samples' prompt and answer lengths, and of their total length."""
    require_matplotlib()
    from matplotlib.figure import Figure

    train = report.split("train")
    totals = [p + a for p, a in zip(train.prompt_lengths, train.answer_lengths)]
    figure = Figure(figsize=(11, 4), layout="constrained")
    left, right = figure.subplots(1, 2)
    left.hist([train.prompt_lengths, train.answer_lengths], bins=30,
              label=["prompt (not trained)", "answer (trained)"])
    left.set(title="prompt and answer lengths (train)", xlabel="tokens per sample", ylabel="samples")
    left.legend()
    right.hist(totals, bins=30, color="gray")
    right.axvline(report.max_seq_length, color="red", linestyle="--",
                  label=f"max_seq_length {report.max_seq_length}")
    right.set(title="total length (train)", xlabel="tokens per sample", ylabel="samples")
    right.legend()
    try:
        figure.savefig(Path(path), dpi=100)
    except OSError as exc:
        from lora_ft.errors import file_system_error

        exc.filename = str(path)
        raise file_system_error(exc) or UserError(f"cannot write {path}: {exc.strerror or exc}",
                                                  fix="choose a writable path") from exc
