"""What a model's log-probabilities say of held-out tokens: each sequence's summed log-probability of its labelled
tokens, and each sample's loss over its trained tokens (batched by length, so little is padding)."""

from __future__ import annotations

from lora_ft.data.tokenization import IGNORE


def sequence_logps(model, input_ids: list[list[int]], labels: list[list[int]], batch_size: int = 8) -> list[float]:
    """The summed log-probability of each sequence's labelled tokens (batched by length, so little is padding)."""
    import torch

    order = sorted(range(len(input_ids)), key=lambda i: len(input_ids[i]))
    sums: list[float] = [0.0] * len(input_ids)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        ids_batch, lab_batch = [input_ids[i] for i in rows], [labels[i] for i in rows]
        width = max(len(x) for x in ids_batch)
        ids = torch.zeros(len(ids_batch), width, dtype=torch.long)
        lab = torch.full((len(ids_batch), width), IGNORE, dtype=torch.long)
        mask = torch.zeros(len(ids_batch), width, dtype=torch.long)
        for row, (x, y) in enumerate(zip(ids_batch, lab_batch)):
            ids[row, : len(x)], lab[row, : len(y)], mask[row, : len(x)] = torch.tensor(x), torch.tensor(y), 1
        with torch.no_grad():
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits.float()
        targets = lab[:, 1:].to(logits.device)
        logps = torch.log_softmax(logits[:, :-1], dim=-1)
        picked = logps.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        for index, value in zip(rows, (picked * (targets != IGNORE)).sum(dim=1).tolist()):
            sums[index] = value
    return sums


def sample_losses(model, input_ids: list[list[int]], labels: list[list[int]], batch_size: int = 8) -> list[float]:
    """Each sample's summed cross-entropy over its trained tokens (the paired figures behind the loss interval)."""
    return [-value for value in sequence_logps(model, input_ids, labels, batch_size)]


def trained_token_counts(labels: list[list[int]]) -> list[int]:
    return [sum(1 for t in row if t != IGNORE) for row in labels]
