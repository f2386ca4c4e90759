"""What a model's log-probabilities say of held-out tokens: each sequence's summed log-probability of its labelled
tokens, and each sample's loss over its trained tokens (batched by length, so little is padding)."""

from __future__ import annotations

from lora_ft.data.tokenization import IGNORE


def sequence_logps(model, input_ids: list[list[int]], labels: list[list[int]], batch_size: int = 8) -> list[float]:
    """The summed log-probability of each sequence's labelled tokens.

    Sequences are taken in order of length, ``batch_size`` at a time, and read as one unpadded row (each with
    position ids from 0; per-sample attention keeps them apart), and only the labelled positions go through the LM
    head (:func:`lora_ft.methods._packed.score`): no work on padding, and no logits for prompt tokens."""
    import torch

    from lora_ft.methods._packed import Sequence, pack, per_sequence, score

    order = sorted(range(len(input_ids)), key=lambda i: len(input_ids[i]))
    sums: list[float] = [0.0] * len(input_ids)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = pack([Sequence(input_ids[row], labels=labels[row]) for row in rows])
        if not batch["keep"].numel():
            continue  # no labelled token: each sum is 0
        batch = {key: value.to(model.device) for key, value in batch.items()}
        with torch.no_grad():
            totals = per_sequence(score(model, batch).log_probs, batch)
        for index, value in zip(rows, totals.tolist()):
            sums[index] = value
    return sums


def sample_losses(model, input_ids: list[list[int]], labels: list[list[int]], batch_size: int = 8) -> list[float]:
    """Each sample's summed cross-entropy over its trained tokens (the paired figures behind the loss interval)."""
    return [-value for value in sequence_logps(model, input_ids, labels, batch_size)]


def trained_token_counts(labels: list[list[int]]) -> list[int]:
    return [sum(1 for t in row if t != IGNORE) for row in labels]
