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
    answer_start: int  # the first answer token (the tokens before it are the prompt)
    scored_from: int | None = None  # the first token scored, when earlier than the answer (ORPO's chosen: 1)


@dataclass
class PackedCollator:
    """Examples -> one packed row. ``sequences`` says which sequences an example list makes, in order (DPO: every
    chosen answer, then every rejected one, TRL's order); ``columns`` are per-example numbers passed through as a
    tensor (precomputed reference log-probabilities)."""

    sequences: Callable[[list[dict]], list[Sequence]]
    columns: tuple[str, ...] = ()
    extra: Callable[[list[dict]], dict] = field(default=lambda examples: {})

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        sequences = self.sequences(examples)
        ids, positions, keep, targets, owner, answer = [], [], [], [], [], []
        lengths = []
        for number, sequence in enumerate(sequences):
            offset, size = len(ids), len(sequence.ids)
            ids += sequence.ids
            positions += range(size)
            first = sequence.answer_start if sequence.scored_from is None else sequence.scored_from
            scored = range(max(first, 1), size)  # a token is scored from the position before it
            keep += [offset + at - 1 for at in scored]
            targets += [sequence.ids[at] for at in scored]
            owner += [number] * len(scored)
            answer += [at >= sequence.answer_start for at in scored]
            lengths.append(size - sequence.answer_start)
        batch = {
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "position_ids": torch.tensor([positions], dtype=torch.long),
            "keep": torch.tensor(keep, dtype=torch.long),
            "targets": torch.tensor(targets, dtype=torch.long),
            "owner": torch.tensor(owner, dtype=torch.long),
            "in_answer": torch.tensor(answer, dtype=torch.bool),
            "answer_lengths": torch.tensor(lengths, dtype=torch.long),
        }
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


def per_sequence(values, batch: dict, answers_only: bool = True):
    """Each sequence's sum of ``values`` (one per scored token), over its answer tokens by default."""
    import torch

    owner = batch["owner"]
    count = batch["answer_lengths"].numel()
    if answers_only:
        values = values.masked_fill(~batch["in_answer"], 0)
    return torch.zeros(count, dtype=values.dtype, device=values.device).index_add(0, owner, values)


def answer_tokens(batch: dict, sequences=None):
    """The answer tokens of the given sequences (all of them by default)."""
    lengths = batch["answer_lengths"]
    return lengths.sum() if sequences is None else lengths[sequences].sum()


def moved(batch: dict, device) -> dict:
    return {key: value.to(device) if hasattr(value, "to") else value for key, value in batch.items()}


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
