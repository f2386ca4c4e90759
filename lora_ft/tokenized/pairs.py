"""One tokenized split of preference data (``dpo``, ``orpo``, ``kto``) read from its Arrow file, memory-mapped.

Each row holds a pair's sample and its tokens before any length limit: the prompt, and each answer through its
end-of-turn token (:func:`lora_ft.data.preference_tokens.encode_preferences`). The limits of the run
(``data.max_seq_length``, ``overlength``, the method's ``max_prompt_length``) are applied as the rows are read
(:func:`lora_ft.data.preference_tokens.fit_preferences`), so changing them reuses the entry.
"""

from __future__ import annotations

from collections.abc import Iterator

from lora_ft.tokenized.split import StoredSplit

READ_ROWS = 4096  # rows turned into Python lists at a time

Encoded = tuple[str, list[int], list[int] | None, list[int] | None]  # (location, prompt, chosen, rejected)


class PairsSplit(StoredSplit):
    """The pairs of one split: iterated, its samples; :meth:`encoded`, their tokens; the locations, content keys and
    duplicates as for any stored split."""

    def encoded(self) -> Iterator[Encoded]:
        """Every pair's ``(location, prompt_ids, chosen_ids, rejected_ids)``, untruncated, in order."""
        columns = ["location", "prompt_ids", "chosen_ids", "rejected_ids"]
        for start in range(0, len(self.rows), READ_ROWS):
            chosen = self.table.select(self.rows[start:start + READ_ROWS]).select_columns(columns)
            table = chosen.with_format("arrow")[:]
            values = [table.column(name).to_pylist() for name in columns]
            values[0] = [self.relocated(location, self.moves) for location in values[0]] if self.moves else values[0]
            yield from zip(*values)
