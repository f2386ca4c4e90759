"""Which files the page may hand out: only files inside the runs folder, each named by a download link.

The web server (Gradio) is started with the runs folder as its only allowed path, so it refuses any other file
itself (HTTP 403); the links below are made only for files that resolve, symlinks followed, inside that folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

FILE_ROUTE = "/gradio_api/file="  # Gradio's route for the files it may serve
# what a run offers for download: its adapter and everything `lora-ft merge` and `lora-ft export` wrote
DOWNLOADS = ("adapter", "merged", "export-*")


@dataclass
class Download:
    label: str  # the file's path inside the run directory
    url: str
    size: int

    def markdown(self) -> str:
        return f"- [{self.label}]({self.url}) ({_size(self.size)})"


def _size(count: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


def inside(runs_dir: Path, path: Path | str) -> Path | None:
    """``path`` resolved (symlinks followed) when it lies inside the runs folder; None when it does not."""
    root = Path(runs_dir).resolve()
    try:
        resolved = Path(path).resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return None
    return resolved if resolved == root or resolved.is_relative_to(root) else None


def url_for(runs_dir: Path, path: Path | str) -> str | None:
    """The link the page serves a file at, or None for a file outside the runs folder (never linked)."""
    resolved = inside(runs_dir, path)
    if resolved is None or not resolved.is_file():
        return None
    return FILE_ROUTE + quote(str(resolved))


def downloads(runs_dir: Path, run_dir: Path) -> list[Download]:
    """The run's adapter and exports, one link per file, in the order a person looks for them."""
    found = []
    for pattern in DOWNLOADS:
        for folder in sorted(Path(run_dir).glob(pattern)):
            if not folder.is_dir() or folder.name.startswith("."):
                continue
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                url = url_for(runs_dir, path)
                if url is not None:
                    found.append(Download(str(path.relative_to(run_dir)), url, path.stat().st_size))
    return found


def downloads_markdown(runs_dir: Path, run_dir: Path) -> str:
    found = downloads(runs_dir, run_dir)
    if not found:
        return ("No adapter or exports yet. `lora-ft export RUN --format peft|merged|gguf` writes them into the run "
                "directory, and they appear here.")
    return "\n".join(item.markdown() for item in found)
