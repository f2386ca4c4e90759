"""The length policy, in one place: what ``data.max_seq_length`` and ``data.overlength`` do to a tokenized sample
longer than the limit.

``truncate`` cuts it to ``max_seq_length`` tokens, ``drop`` leaves it out, ``error`` stops the run (naming the first
few) once every sample has been seen; where an ``error`` run is only described (the data report's figures), its long
samples count as cut, which is what raising the limit or truncating would train. Every path that applies the rule --
SFT samples as lists, stored splits as numpy columns, a stream one sample at a time, preference pairs, the data
report's figures and texts -- asks a :class:`LengthPolicy`, so they cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lora_ft.errors import Problem, UserError

Overlength = Literal["truncate", "drop", "error"]
DEFAULT_OVERLENGTH: Overlength = "truncate"
OVERLENGTH_SHOWN = 5  # over-length locations named in the error

_EFFECT = {"truncate": "are truncated", "drop": "are left out", "error": "stop training"}


@dataclass(frozen=True)
class LengthPolicy:
    """``max_length`` tokens at most; ``overlength`` says what happens to a longer sample."""

    max_length: int
    overlength: str = DEFAULT_OVERLENGTH

    @classmethod
    def of(cls, data) -> LengthPolicy:
        """The policy of a config's ``data`` section (``max_seq_length`` and ``overlength``)."""
        return cls(data.max_seq_length, data.overlength)

    # the rule, one sample at a time

    @property
    def drops(self) -> bool:
        """Over-length samples are left out."""
        return self.overlength == "drop"

    @property
    def stops(self) -> bool:
        """An over-length sample stops the run (:meth:`error`)."""
        return self.overlength == "error"

    @property
    def cuts(self) -> bool:
        """Over-length samples are kept, cut to the limit (``truncate``, and ``error`` where only described)."""
        return not self.drops

    def previewed(self) -> LengthPolicy:
        """The policy as a description applies it: ``error`` counted as ``truncate`` (nothing is raised)."""
        return LengthPolicy(self.max_length, DEFAULT_OVERLENGTH) if self.stops else self

    def is_over(self, length: int) -> bool:
        return length > self.max_length

    def keeps(self, length: int) -> bool:
        """False only for an over-length sample under ``drop``."""
        return not (self.drops and self.is_over(length))

    def fitted(self, length: int) -> int:
        """The tokens trained of a sample this long: cut to the limit when kept, none when left out."""
        return min(length, self.max_length) if self.keeps(length) else 0

    # the same rule on numpy arrays of lengths

    def over_mask(self, lengths):
        import numpy as np

        return np.asarray(lengths) > self.max_length

    def kept_mask(self, lengths):
        import numpy as np

        over = self.over_mask(lengths)
        return ~over if self.drops else np.ones(over.shape, dtype=bool)

    def fitted_lengths(self, lengths):
        import numpy as np

        lengths = np.asarray(lengths)
        return np.where(self.kept_mask(lengths), np.minimum(lengths, self.max_length), 0)

    # what is said of it

    def error(self, locations: list[str], longest: int, count: int | None = None,
              prompt_key: str | None = None) -> UserError:
        """The error for ``data.overlength: error``: how many samples are too long, and where the first few are.
        ``count``: how many there are when ``locations`` lists only some; ``prompt_key``: pairs' prompt limit."""
        max_length = self.max_length
        count = len(locations) if count is None else count
        shown = [Problem(f"longer than {max_length} tokens", where) for where in locations[:OVERLENGTH_SHOWN]]
        if count > OVERLENGTH_SHOWN:
            shown.append(Problem(f"... and {count - OVERLENGTH_SHOWN} more"))
        prompt = f"cap the prompts with {prompt_key} (each keeps its last tokens), " if prompt_key else ""
        return UserError(
            f"{count} sample(s) are longer than data.max_seq_length = {max_length} tokens "
            f"(the longest has {longest}) and data.overlength is 'error'",
            shown,
            fix=f"raise data.max_seq_length (to {longest} to keep them whole, if the model's context allows), "
            f"{prompt}shorten or remove these rows, or set data.overlength to truncate (cut them) or drop (leave "
            "them out)",
            settings=("data.max_seq_length", "data.overlength") + ((prompt_key,) if prompt_key else ()),
        )

    @property
    def effect(self) -> str:
        """What happens to longer samples, after "longer samples" (the length histogram's marker)."""
        return _EFFECT[self.overlength]

    def consequence(self, trained_past_limit: int, trained_in_over_length: int) -> str:
        """What happens to a split's over-length samples (``trained_past_limit``: the trained tokens cutting them
        loses; ``trained_in_over_length``: all their trained tokens)."""
        if self.drops:
            return f"left out (data.overlength: drop), with their {trained_in_over_length:,} trained tokens"
        if self.stops:
            return (f"training stops (data.overlength: error); truncating them would lose "
                    f"{trained_past_limit:,} trained tokens")
        return f"truncated, losing {trained_past_limit:,} trained tokens"

    def warning(self, count: int, name: str, trained_past_limit: int, trained_in_over_length: int) -> str:
        """The data report's warning for a split's ``count`` over-length samples, kept or left out (``error`` is a
        problem: :meth:`error`)."""
        if self.drops:
            return (f"{count} {name} sample(s) longer than max_seq_length {self.max_length} are left out, with their "
                    f"{trained_in_over_length:,} trained tokens")
        return (f"{count} {name} sample(s) are cut at max_seq_length {self.max_length}, losing "
                f"{trained_past_limit:,} trained tokens")

    def sample_note(self, length: int) -> str:
        """The note on one rendered over-length sample."""
        if self.drops:
            return f"{length} tokens, longer than max_seq_length {self.max_length}: left out (data.overlength: drop)"
        return f"{length} tokens: cut at max_seq_length {self.max_length}" + (
            "; data.overlength is 'error', so training would stop" if self.stops else "")
