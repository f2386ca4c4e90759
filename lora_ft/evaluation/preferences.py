"""How a preference-tuned model ranks held-out pairs, against the model it started from.

For each pair: the sum of log-probabilities of the chosen and of the rejected answer (given the prompt), from the
starting model and from the tuned one. From those:

- *prefers chosen*: the share of pairs whose chosen answer the model finds more likely, per answer token (so a
  long rejected answer does not lose by its length alone); for the starting and the tuned model;
- *reward accuracy* and *reward margin*: DPO's implicit reward, beta x (log p_tuned - log p_start), chosen minus
  rejected: the share of pairs where it is positive, and its mean. The same quantities TRL logs during training.

The change in *prefers chosen* and the reward margin come with a 95% paired-bootstrap interval over the pairs
(:mod:`lora_ft.evaluation.stats`): "better" only when the interval lies above zero.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

from lora_ft.evaluation.losses import sequence_logps
from lora_ft.data.tokenization import IGNORE


@dataclass
class PairScores:
    chosen: list[float]  # summed log-probabilities of each chosen answer
    rejected: list[float]
    chosen_tokens: list[int]
    rejected_tokens: list[int]

    def wins(self) -> list[bool]:
        """Per pair: whether the chosen answer is the more likely one, per answer token."""
        pairs = zip(self.chosen, self.rejected, self.chosen_tokens, self.rejected_tokens)
        return [c / max(nc, 1) > r / max(nr, 1) for c, r, nc, nr in pairs]

    def prefers_chosen(self) -> float:
        wins = self.wins()
        return sum(wins) / max(len(wins), 1)


def pair_scores(model, tokens) -> PairScores:
    """Scores of the pairs (rows with both answers) of a :class:`~lora_ft.data.preference_tokens.PreferenceTokens`."""
    sides = {name: tokens.side(name, pairs_only=True) for name in ("chosen", "rejected")}
    scores = {name: sequence_logps(model, ids, labels) for name, (ids, labels) in sides.items()}
    lengths = {name: [sum(1 for t in row if t != IGNORE) for row in labels] for name, (_, labels) in sides.items()}
    return PairScores(scores["chosen"], scores["rejected"], lengths["chosen"], lengths["rejected"])


def reward_summary(start: PairScores, tuned: PairScores, beta: float) -> dict:
    """Reward accuracy and mean margin of the tuned model against the starting one, and each one's preference."""
    margins = [beta * ((tc - sc) - (tr - sr))
               for tc, sc, tr, sr in zip(tuned.chosen, start.chosen, tuned.rejected, start.rejected)]
    from lora_ft.evaluation.stats import paired_mean

    count = max(len(margins), 1)
    prefers = paired_mean([float(w) for w in start.wins()], [float(w) for w in tuned.wins()])
    return {"pairs": len(margins), "beta": beta,
            "prefers_chosen_start": start.prefers_chosen(), "prefers_chosen_tuned": tuned.prefers_chosen(),
            "prefers_chosen_interval": prefers.as_dict(higher_is_better=True),
            "reward_accuracy": sum(m > 0 for m in margins) / count, "reward_margin": sum(margins) / count,
            "reward_margin_interval": paired_mean([0.0] * len(margins), margins).as_dict(higher_is_better=True)}


@contextmanager
def starting_model(model, run):
    """The model the run started from, active inside the block: the base with the adapter off, or the adapter of
    the run it started from (``model.adapter``), loaded beside the tuned one."""
    start = run.config.model.adapter
    if start is None:
        with model.disable_adapter():
            yield "base model"
        return
    from pathlib import Path

    if "start" not in model.peft_config:
        model.load_adapter(str(Path(start) / "adapter"), adapter_name="start")
    model.set_adapter("start")
    try:
        yield f"starting adapter ({start})"
    finally:
        model.set_adapter("default")
