"""Preference batches without padding: every sequence of a micro-batch (a pair's chosen and rejected answers with
their prompt, KTO's answers and its mismatched ones) in one row, each with position ids that restart at 0, so the
model spends no work on padding and attention stays within each sequence (lora-ft's per-sample SDPA, or
FlashAttention-2, where the position ids say where each sequence starts).

Only the positions whose next token is scored (the answers; for ORPO also the chosen prompt) go through the LM
head: on a CPU the model is asked for just those logits (``logits_to_keep``) and PyTorch's fused cross entropy
scores them in one pass; on a CUDA GPU TRL's fused LM head scores them in tiles, never building the logits. What a
method gets back is each scored token's log-probability and the sequence it belongs to; its loss is written over
per-sequence sums, as TRL's padded trainers compute them."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

IGNORE = -100


@dataclass(frozen=True)
class Sequence:
    ids: list[int]
    answer_start: int = 0  # the first answer token (the tokens before it are the prompt)
    scored_from: int | None = None  # the first token scored, when earlier than the answer (ORPO's chosen: 1)
    labels: list[int] | None = None  # instead: score exactly the tokens labelled (not IGNORE), all as answer

    def scored(self) -> list[tuple[int, bool]]:
        """(position, in the answer) of every scored token; a token is scored from the position before it."""
        if self.labels is not None:
            return [(at, True) for at in range(1, len(self.ids)) if self.labels[at] != IGNORE]
        first = self.answer_start if self.scored_from is None else self.scored_from
        return [(at, at >= self.answer_start) for at in range(max(first, 1), len(self.ids))]

    @property
    def answer_length(self) -> int:
        if self.labels is not None:
            return sum(1 for label in self.labels if label != IGNORE)
        return len(self.ids) - self.answer_start


def pack(sequences: list[Sequence]) -> dict:
    """Sequences as one unpadded row: the row's ids and position ids; for every scored token the position read
    for it (``keep``), its id, the sequence it belongs to and whether it is in the answer; each answer's length."""
    import torch

    ids, positions, keep, targets, owner, answer = [], [], [], [], [], []
    for number, sequence in enumerate(sequences):
        offset = len(ids)
        ids += sequence.ids
        positions += range(len(sequence.ids))
        for at, in_answer in sequence.scored():
            keep.append(offset + at - 1)
            targets.append(sequence.ids[at])
            owner.append(number)
            answer.append(in_answer)
    return {
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "position_ids": torch.tensor([positions], dtype=torch.long),
        "keep": torch.tensor(keep, dtype=torch.long),
        "targets": torch.tensor(targets, dtype=torch.long),
        "owner": torch.tensor(owner, dtype=torch.long),
        "in_answer": torch.tensor(answer, dtype=torch.bool),
        "answer_lengths": torch.tensor([sequence.answer_length for sequence in sequences], dtype=torch.long),
    }


@dataclass
class PackedCollator:
    """Examples -> one packed row (:func:`pack`). ``sequences`` says which sequences an example list makes, in
    order (DPO: every chosen answer, then every rejected one, TRL's order); ``columns`` are per-example numbers
    passed through as a tensor (precomputed reference log-probabilities)."""

    sequences: Callable[[list[dict]], list[Sequence]]
    columns: tuple[str, ...] = ()
    extra: Callable[[list[dict]], dict] = field(default=lambda examples: {})

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        batch = pack(self.sequences(examples))
        for column in self.columns:
            if column in examples[0]:
                batch[column] = torch.tensor([example[column] for example in examples])
        return batch | self.extra(examples)


@dataclass
class Scored:
    """Each scored token's log-probability (with gradient when the pass has one), and what the metrics read."""

    log_probs: object  # [K]: the scored tokens' log-probabilities
    top1: object = None  # [K] bool: the token is the most likely one (no gradient)
    entropy: object = None  # [K]: the next-token distribution's entropy (no gradient)
    mean_logit: object = None  # [K]: the mean logit over the vocabulary (no gradient)


def score(model, batch: dict, fused_head: bool = False, statistics: bool = False) -> Scored:
    """The log-probability of every scored token of a packed batch under ``model`` as it is (adapter on, off or
    another one active: the caller chooses). ``fused_head``: the model carries TRL's fused LM head (added by its
    trainers) and runs on a GPU, where it scores only the kept positions in tiles; else the model's forward is
    asked for the kept positions' logits alone. ``statistics``: also top-1, entropy and mean logit."""
    import torch
    import torch.nn.functional as F

    keep, targets = batch["keep"], batch["targets"]
    if fused_head:
        labels = torch.full_like(batch["input_ids"], IGNORE)
        labels[0, keep + 1] = targets
        out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=labels,
                    fused_lm_head=True, use_cache=False)
        pick = (lambda x: None if x is None else x[0, keep])
        return Scored(pick(out.log_probs), pick(out.is_top1), pick(out.entropy), pick(out.mean_logits))
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False,
                   logits_to_keep=keep).logits[0].float()
    log_probs = -F.cross_entropy(logits, targets, reduction="none")
    if not statistics:
        return Scored(log_probs)
    with torch.no_grad():  # a few hundred rows at a time: no second copy of the logits at the peak
        detached, entropy = logits.detach(), []
        for rows in detached.split(STATISTICS_ROWS):
            normalized = torch.log_softmax(rows, dim=-1)
            entropy.append(-(normalized.exp() * normalized).sum(-1))
        top1 = detached.argmax(-1) == targets
        return Scored(log_probs, top1, torch.cat(entropy), detached.mean(-1))


STATISTICS_ROWS = 256


def per_sequence(values, batch: dict):
    """Each sequence's sum of ``values`` (one per scored token) over its answer tokens."""
    import torch

    values = values.masked_fill(~batch["in_answer"], 0)
    count = batch["answer_lengths"].numel()
    return torch.zeros(count, dtype=values.dtype, device=values.device).index_add(0, batch["owner"], values)


class PackedTrainer:
    """What lora-ft's packed DPO and KTO trainers share, mixed in ahead of TRL's trainer class."""

    @property
    def _fused_head(self) -> bool:  # TRL's fused LM head scores only the kept positions on a GPU (Triton)
        return self.accelerator.device.type == "cuda"

    @contextmanager
    def reference_pass(self):
        """The reference active: the adapter off, or the starting adapter ("ref") on; no gradient, no
        recomputation, under the trainer's autocast."""
        import torch
        from trl.models.utils import disable_gradient_checkpointing
        from trl.trainer.utils import use_adapter

        unwrapped = self.accelerator.unwrap_model(self.model)
        reference = "ref" if "ref" in getattr(unwrapped, "peft_config", {}) else None
        with (torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs),
              use_adapter(unwrapped, reference), self.accelerator.autocast()):
            yield

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation: the loss only (the metrics are logged as in training)."""
        import torch

        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, self._prepare_inputs(inputs))
        return loss.detach(), None, None
