"""Greedy answers to many prompts, batched so that every step does useful work.

Decoding a small model on a CPU costs about the same per row whatever the batch (measured on the embedded model:
4.2 ms per row and token at 24 rows, 3.9 at 140), but a row costs its full share only while it runs: a batch
whose rows have mostly stopped still pays for the weights it streams, for one or two long answers. So the batch
is kept full: prompts wait in a queue, shortest first; when rows stop (at a stop token or their cap), they leave
the batch and their KV cache entries are dropped, and once a quarter of the batch is free the next prompts are
prefilled and join it. The rows of a batch are left-padded to one cache length (pad positions are masked, their
keys and values zero), and each row's position ids count only its own tokens, as ``model.generate`` computes them
for a left-padded batch, so each answer is the one ``generate`` gives (the suite compares them).

Models whose KV cache is not a plain growing one (sliding-window layers, hybrid caches) decode in fixed batches
with ``model.generate`` instead (:func:`decode_in_batches`), rows leaving the batch every ``STEPS_PER_CALL``
tokens.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

STEPS_PER_CALL = 32  # fixed batches: new tokens per generate call before rows that have stopped leave the batch


def decode(model, prompts: list[list[int]], caps: list[int], stops: set[int], pad: int, batch_size: int,
           kwargs: dict, progress: Callable[[int], None] | None = None, refill: bool = True) -> list[list[int]]:
    """Each prompt's greedy answer tokens, through its first stop token where it has one, at most its cap;
    ``refill``: keep the batch full where the model's cache allows it, else fixed batches."""
    if refill and _plain_cache(model):
        return decode_refilling(model, prompts, caps, stops, pad, batch_size, progress)
    return decode_in_batches(model, prompts, caps, stops, pad, batch_size, kwargs, progress)


def _plain_cache(model) -> bool:
    """Whether the model's KV cache is transformers' plain DynamicCache of growing layers (what
    :func:`decode_refilling` pads and merges)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    try:
        cache = DynamicCache(config=config)
    except (TypeError, ValueError):
        return False
    return all(type(layer) is DynamicLayer for layer in cache.layers)


def decode_refilling(model, prompts, caps, stops, pad, batch_size, progress=None) -> list[list[int]]:
    import torch

    device = model.device
    queue = deque(sorted(range(len(prompts)), key=lambda i: len(prompts[i])))
    answers: list[list[int]] = [[] for _ in prompts]
    live: list[int] = []  # the prompts in the batch, in row order
    cache = mask = tokens = None  # the batch's KV cache, attention mask [rows, length], next input [rows]
    finished = reported = 0
    step = max(1, len(prompts) // 10)
    while queue or live:
        if queue and batch_size - len(live) >= max(1, batch_size // 4):
            joining = [queue.popleft() for _ in range(min(batch_size - len(live), len(queue)))]
            new_cache, new_mask, first = _prefill(model, [prompts[i] for i in joining], pad, device)
            cache, mask = _merged(cache, mask, new_cache, new_mask)
            tokens = first if tokens is None else torch.cat([tokens, first])
            live += joining
            fresh = range(len(live) - len(joining), len(live))  # the rows that got a token in this pass
        else:
            mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=1)
            positions = mask.sum(dim=1, keepdim=True) - 1
            with torch.no_grad():
                out = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=positions,
                            past_key_values=cache, use_cache=True, logits_to_keep=1)
            cache, tokens = out.past_key_values, out.logits[:, -1].argmax(-1)
            fresh = range(len(live))
        values = tokens.tolist()
        keep = list(range(fresh.start))
        for row in fresh:
            index, token = live[row], values[row]
            answers[index].append(token)
            if token not in stops and len(answers[index]) < caps[index]:
                keep.append(row)
        if len(keep) < len(live):
            finished += len(live) - len(keep)
            if progress is not None and (finished - reported >= step or finished == len(prompts)):
                progress(finished)  # about every tenth of the prompts, and at the end
                reported = finished
            index = torch.tensor(keep, dtype=torch.long, device=device)
            cache.batch_select_indices(index)
            live, mask, tokens = [live[row] for row in keep], mask[index], tokens[index]
            if not live:
                cache = mask = tokens = None
            else:
                cache, mask = _trimmed(cache, mask)
    return answers


def left_padded(prompts: list[list[int]], pad: int, device):
    """Prompts as one left-padded batch: ids and attention mask."""
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):], mask[row, width - len(prompt):] = torch.tensor(prompt), 1
    return ids.to(device), mask.to(device)


def _prefill(model, prompts: list[list[int]], pad: int, device):
    """Left-padded prompts read in one pass: their cache, mask and first answer tokens."""
    import torch
    from transformers import DynamicCache

    ids, mask = left_padded(prompts, pad, device)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)  # as generate computes them
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                    past_key_values=DynamicCache(config=model.config), use_cache=True, logits_to_keep=1)
    return out.past_key_values, mask, out.logits[:, -1].argmax(-1)


def _trimmed(cache, mask):
    """The cache without the leading positions no row attends to any more (padding whose rows have left): the
    batch lives as long as prompts wait, and its cache would otherwise grow with every step it ever took."""
    unused = int(mask.any(dim=0).long().argmax())
    if unused == 0:
        return cache, mask
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[:, :, unused:], layer.values[:, :, unused:]
    return cache, mask[:, unused:]


def _merged(cache, mask, new_cache, new_mask):
    """Two batches' caches as one: the shorter left-padded (masked, zero keys and values) to the longer."""
    import torch

    if cache is None:
        return new_cache, new_mask
    length = max(mask.shape[1], new_mask.shape[1])

    def left_padded(tensor, dim):
        missing = length - tensor.shape[dim]
        if missing == 0:
            return tensor
        shape = list(tensor.shape)
        shape[dim] = missing
        return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)

    for layer, new_layer in zip(cache.layers, new_cache.layers):
        layer.keys = torch.cat([left_padded(layer.keys, 2), left_padded(new_layer.keys, 2)])
        layer.values = torch.cat([left_padded(layer.values, 2), left_padded(new_layer.values, 2)])
    return cache, torch.cat([left_padded(mask, 1), left_padded(new_mask, 1)])


def decode_in_batches(model, prompts, caps, stops, pad, batch_size, kwargs, progress=None) -> list[list[int]]:
    """Prompts sorted by length in batches of even size, each decoded with ``model.generate``."""
    import math

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: list[list[int]] = [[] for _ in prompts]
    batches = math.ceil(len(order) / batch_size) if order else 0
    done = 0
    for number in range(batches):  # 70 prompts at 32: 24 + 23 + 23, not 32 + 32 + 6
        rows = order[number * len(order) // batches:(number + 1) * len(order) // batches]
        for index, tokens in zip(rows, _generate_rows(model, [prompts[i] for i in rows], pad, stops, kwargs,
                                                      [caps[i] for i in rows])):
            answers[index] = tokens
        done += len(rows)
        if progress is not None:
            progress(done)
    return answers


def _generate_rows(model, prompts: list[list[int]], pad: int, stops: set[int], kwargs: dict,
                   caps: list[int]) -> list[list[int]]:
    """Each row's new tokens for one left-padded batch, ``STEPS_PER_CALL`` tokens per ``generate`` call; after each
    call the rows that reached a stop token or their cap leave the batch and their KV cache entries are dropped,
    and the others go on from the cache (the same computation as one uninterrupted call)."""
    import torch

    ids, mask = left_padded(prompts, pad, model.device)
    generated: list[list[int]] = [[] for _ in prompts]
    live, carried = list(range(len(prompts))), {}
    while live:  # the live rows have all generated the same number of tokens
        steps = min(STEPS_PER_CALL, min(caps[row] for row in live) - len(generated[live[0]]))
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=steps,
                                 return_dict_in_generate=True, **kwargs, **carried)
        # the KV cache is `cache` in recent transformers, `past_key_values` before
        name = "cache" if "cache" in out.__dataclass_fields__ else "past_key_values"
        cache = getattr(out, name)
        new = out.sequences[:, ids.shape[1]:]
        keep = []
        for position, (row, tokens) in enumerate(zip(live, new.tolist())):
            end = next((at for at, token in enumerate(tokens) if token in stops), None)
            generated[row] += tokens if end is None else tokens[:end + 1]
            if end is None and len(generated[row]) < caps[row]:
                keep.append(position)
        if not keep:  # every row stopped in this call
            break
        ids, mask = out.sequences, torch.cat([mask, torch.ones_like(new)], dim=1)
        if len(keep) < len(live):
            index = torch.tensor(keep, dtype=torch.long, device=ids.device)
            cache.reorder_cache(index)
            live = [live[i] for i in keep]
            ids, mask = ids[index], mask[index]
        carried = {name: cache}
        if new.shape[1] < steps:  # generate ended early: every row stopped
            break
    return generated
