"""The prompts of an RL run (``method: grpo``), rendered by the run's chat template with the assistant's turn
opened, each with its other columns for the reward functions; prompts that leave no room for an answer within
``data.max_seq_length`` are dropped and counted."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field


@dataclass
class PromptSet:
    rows: list[dict] = field(default_factory=list)  # {"prompt": rendered text, **columns}
    locations: list[str] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)  # each prompt's tokens
    too_long: list[str] = field(default_factory=list)  # locations of prompts dropped for their length

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def tokens(self) -> int:
        return sum(self.lengths)

    trained_tokens = 0  # the answers are sampled in training: none are known before

    def sha256(self, *others: "PromptSet") -> str:
        """The rendered prompts and their columns (with ``others``'), as a resumed run must find them."""
        digest = hashlib.sha256()
        for row in [*self.rows, *(row for other in others for row in other.rows)]:
            digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
        return digest.hexdigest()

    def dataset(self):
        from datasets import Dataset

        if not self.rows:
            return None
        keys = list(dict.fromkeys(key for row in self.rows for key in row))  # a column some rows lack: None there
        return Dataset.from_dict({key: [row.get(key) for row in self.rows] for key in keys})

    def line(self, name: str, max_seq_length: int, completion_length: int) -> str:
        longest = max(self.lengths, default=0)
        dropped = (f"; {len(self.too_long)} dropped as longer than {max_seq_length - completion_length} tokens "
                   f"(data.max_seq_length {max_seq_length} less grpo.max_completion_length {completion_length})"
                   if self.too_long else "")
        return f"{name}: {len(self)} prompts, {self.tokens:,} tokens, the longest {longest}{dropped}"


def prompt_rows(samples, renderer) -> list[dict]:
    """Each prompt rendered by the run's template with the assistant's turn opened, and its other columns."""
    return [{"prompt": renderer.render(sample.messages, add_generation_prompt=True, tools=sample.tools),
             **(sample.columns or {})} for sample in samples]


def prompt_set(samples, renderer, max_seq_length: int, completion_length: int) -> PromptSet:
    """The samples' prompts rendered and measured; those longer than the room left for the answer dropped."""
    room = max_seq_length - completion_length
    result = PromptSet()
    rows = prompt_rows(samples, renderer)
    encoded = renderer.tokenizer([row["prompt"] for row in rows], add_special_tokens=False)["input_ids"] \
        if rows else []
    for sample, row, ids in zip(samples, rows, encoded):
        length = len(ids)
        if length > room:
            result.too_long.append(sample.location)
            continue
        result.rows.append(row)
        result.locations.append(sample.location)
        result.lengths.append(length)
    return result
