"""The base model and a run's tuned model answering the same message, streamed, as ``lora-ft chat`` answers.

One model is loaded: the base with the run's adapter (PEFT, unmerged); the base's answer is generated with the
adapter switched off. Both answers use the tokenizer and chat template saved with the adapter, and stop at the
run's end-of-turn token (:mod:`lora_ft.inference`). Where the run trained on conversations with tools, the tools
its data offered are put in the prompt, as in training.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lora_ft import inference
from lora_ft.rundir.finished import FinishedRun, open_run

TOOL_ROWS = 500  # rows of each training file read to find the tools it offers


@dataclass
class LoadedRun:
    run: FinishedRun
    model: object
    tokenizer: object
    tools: list[dict] | None
    busy: threading.Lock = field(default_factory=threading.Lock)  # one answer at a time per loaded model


def data_tools(run: FinishedRun, rows: int = TOOL_ROWS) -> list[dict] | None:
    """The tools the run's training conversations offered (each name once), from the first rows of each file;
    None when they offered none."""
    from lora_ft.config import LoadedConfig
    from lora_ft.data.loading import data_files, source_rows
    from lora_ft.errors import UserError
    from lora_ft.samples import RowFault
    from lora_ft.tool_turns import read_tools

    loaded = LoadedConfig(run.config, run.run_dir / "config.yaml", [])
    found: dict[str, dict] = {}
    for source in run.config.data.train:
        try:
            files = data_files(source, loaded)
            for count, (_, row) in enumerate(source_rows(source, files) if files else ()):
                if count >= rows:
                    break
                if isinstance(row, dict) and row.get("tools"):
                    for tool in read_tools(row["tools"]) or []:
                        found.setdefault(tool["function"]["name"], tool)
        except (UserError, RowFault, OSError):
            continue  # the data moved or changed since training: chat without tools
    return list(found.values()) or None


class ChatModels:
    """The loaded model of the run chatted with last (one at a time: a second run's model replaces it)."""

    def __init__(self) -> None:
        self._loaded: LoadedRun | None = None
        self._lock = threading.Lock()

    def load(self, run_dir: Path) -> LoadedRun:
        with self._lock:
            if self._loaded is not None and self._loaded.run.run_dir == Path(run_dir):
                return self._loaded
            self._loaded = None  # let the previous model go before the next one loads
            run = open_run(run_dir)
            model = inference.load_tuned(run)
            self._loaded = LoadedRun(run, model, inference.load_tokenizer(run), data_tools(run))
            return self._loaded


def _messages(system: str | None, history: list[dict], message: str) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + history + [
        {"role": "user", "content": message}]


def answer_pair(loaded: LoadedRun, base_history: list[dict], tuned_history: list[dict], message: str,
                max_new_tokens: int = 256, temperature: float = 0.0) -> Iterator[tuple[str, str, str]]:
    """Stream both answers to ``message``, each model continuing its own conversation: yields (base answer so
    far, tuned answer so far, note), the base model's first, then the tuned model's."""
    run, notes = loaded.run, []
    system = run.config.data.system_prompt

    def warn(text: str) -> None:
        notes.append(text)

    base, tuned = "", ""
    with loaded.busy:
        with loaded.model.disable_adapter():
            for piece in inference.stream(loaded.model, loaded.tokenizer, run, _messages(system, base_history, message),
                                          max_new_tokens, temperature, name="the base model's conversation", warn=warn,
                                          tools=loaded.tools):
                base += piece
                yield base, tuned, " ".join(notes)
        for piece in inference.stream(loaded.model, loaded.tokenizer, run, _messages(system, tuned_history, message),
                                      max_new_tokens, temperature, name="the tuned model's conversation", warn=warn,
                                      tools=loaded.tools):
            tuned += piece
            yield base, tuned, " ".join(notes)
