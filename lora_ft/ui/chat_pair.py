"""The base model and a run's tuned model answering the same message, streamed, as ``lora-ft chat`` answers.

One model is loaded: the base with the run's adapter (PEFT, unmerged). Both answers are generated together, one
batch of two rows, the base's row with the adapter off (PEFT's per-row adapters). Both answers use the tokenizer and chat template saved with the adapter, and stop at the
run's end-of-turn token (:mod:`lora_ft.inference`). Where the run trained on conversations with tools, the tools
its data offered are put in the prompt, as in training.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lora_ft import inference
from lora_ft.batched_decoding import left_padded
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


BASE = "__base__"  # PEFT's name for "no adapter" in a batch whose rows use different adapters


class _PairStreamer:
    """Receives the two rows' new tokens as ``generate`` makes them (transformers' streamer interface: ``put``
    and ``end``) and queues both answers' text so far; a row's answer ends at its first stop token."""

    def __init__(self, tokenizer, stops: set[int]) -> None:
        self.tokenizer, self.stops = tokenizer, stops
        self.ids: list[list[int]] = [[], []]
        self.done = [False, False]
        self.prompt_seen = False
        self.queue: queue.Queue = queue.Queue()

    def put(self, value) -> None:
        if not self.prompt_seen:  # the first call hands over the prompts
            self.prompt_seen = True
            return
        for row, token in enumerate(value.reshape(-1).tolist()):
            if self.done[row]:
                continue
            if token in self.stops:
                self.done[row] = True
            else:
                self.ids[row].append(token)
        self.queue.put(tuple(self.tokenizer.decode(ids, skip_special_tokens=True) for ids in self.ids))

    def end(self) -> None:
        self.queue.put(None)


def answer_pair(loaded: LoadedRun, base_history: list[dict], tuned_history: list[dict], message: str,
                max_new_tokens: int = 256, temperature: float = 0.0) -> Iterator[tuple[str, str, str]]:
    """Stream both answers to ``message``, each model continuing its own conversation: yields (base answer so
    far, tuned answer so far, notes). Both are generated together, as one batch of two rows: the first without
    the adapter, the second with it (PEFT's per-row adapters), so they grow side by side at one model's cost."""
    import torch

    run, model, tokenizer, notes = loaded.run, loaded.model, loaded.tokenizer, []
    system = run.config.data.system_prompt
    context = inference.context_length(model)
    rows, limit = [], max_new_tokens
    for name, history in (("the base model's conversation", base_history),
                          ("the tuned model's conversation", tuned_history)):
        messages = _messages(system, history, message)
        ids, room = inference.fit_to_context(inference.prompt_tokens(tokenizer, messages, loaded.tools), context,
                                             max_new_tokens, name, messages, notes.append)
        rows.append(ids)
        limit = min(limit, room)
    stops = set(inference.stop_token_ids(tokenizer, run))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stops)  # as generate_batch pads
    input_ids, mask = left_padded(rows, pad, model.device)
    streamer = _PairStreamer(tokenizer, stops)
    failed: list[BaseException] = []

    def work() -> None:
        try:
            with torch.no_grad():
                model.generate(input_ids=input_ids, attention_mask=mask, adapter_names=[BASE, "default"],
                               streamer=streamer, **inference.generation_kwargs(tokenizer, run, limit, temperature)
                               | {"pad_token_id": pad})
        except BaseException as exc:  # shown in the page by the caller
            failed.append(exc)
            streamer.end()

    with loaded.busy:
        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        while (texts := streamer.queue.get()) is not None:
            yield texts[0].strip(), texts[1].strip(), " ".join(notes)
        thread.join()
    if failed:
        raise failed[0]


def shown(answer: str, tools: list[dict] | None) -> str:
    """An answer as the page shows it: with tools, its text, its reasoning and each call read out (a call's raw
    tags would be taken for HTML), as ``lora-ft chat`` prints them."""
    if not tools:
        return answer
    from lora_ft.tool_call_text import parse_tool_calls

    parsed = parse_tool_calls(answer)
    parts = [f"*thinking:* {parsed.reasoning}"] if parsed.reasoning else []
    parts += [parsed.text] if parsed.text else []
    parts += [f"`call: {call.shown()}`" for call in parsed.calls]
    return "\n\n".join(parts)
