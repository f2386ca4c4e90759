"""One tokenized split of preference data (``dpo``, ``orpo``, ``kto``) read from its Arrow file, memory-mapped.

Each row holds a pair's sample and its tokens before any length limit: the prompt, and each answer through its
end-of-turn token (:func:`lora_ft.preference_tokens.encode_preferences`). The limits of the run
(``data.max_seq_length``, ``overlength``, the method's ``max_prompt_length``) are applied as the rows are read
(:func:`lora_ft.preference_tokens.fit_preferences`), so changing them reuses the entry.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from lora_ft.data.samples import Sample
from lora_ft.tokenized.encoding import sample_from_json

READ_ROWS = 4096  # rows turned into Python lists at a time

Encoded = tuple[str, list[int], list[int] | None, list[int] | None]  # (location, prompt, chosen, rejected)


class PairsSplit:
    """The pairs of one split, as a view on the table they were written to (all its rows, or those given)."""

    def __init__(self, table, rows: np.ndarray | None = None):
        self.table = table  # a datasets.Dataset, memory-mapped from its Arrow file
        self.rows = np.arange(len(table), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def _chunks(self, columns: list[str]) -> Iterator[dict[str, list]]:
        for start in range(0, len(self.rows), READ_ROWS):
            chosen = self.table.select(self.rows[start:start + READ_ROWS]).select_columns(columns)
            table = chosen.with_format("arrow")[:]
            yield {name: table.column(name).to_pylist() for name in columns}

    def samples(self) -> list[Sample]:
        """Every pair as the sample it was read as, in order."""
        return [sample_from_json(location, text) for chunk in self._chunks(["location", "sample"])
                for location, text in zip(chunk["location"], chunk["sample"])]

    def encoded(self) -> Iterator[Encoded]:
        """Every pair's ``(location, prompt_ids, chosen_ids, rejected_ids)``, untruncated, in order."""
        for chunk in self._chunks(["location", "prompt_ids", "chosen_ids", "rejected_ids"]):
            yield from zip(chunk["location"], chunk["prompt_ids"], chunk["chosen_ids"], chunk["rejected_ids"])
