"""Exact attention within each sample of a padding-free (or packed) row, through PyTorch's SDPA, for machines
without FlashAttention-2 (a CPU, or a GPU without it installed)."""

from __future__ import annotations

PER_SAMPLE_ATTENTION = "lora_ft_per_sample_sdpa"


_BOUNDARIES: dict = {}  # the last forward pass's position ids and the sample starts read from them


def per_sample_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """Causal attention within each sample of a padding-free row, one SDPA call per sample.

    A padding-free batch is one row of several samples whose position ids restart at 0 for each. Through SDPA the
    library keeps them apart with a block-diagonal mask over the whole row, so every score between every pair of
    tokens in the row is computed and most are thrown away, and the masked kernel is the slow one. Here each sample
    is its own causal SDPA call: the same result (the tests compare the losses), only the scores that count.
    FlashAttention-2 does this in one kernel where it is installed (resolved as ``attn_implementation``); this is
    the exact path for everywhere else: CPUs, and GPUs without a flash-attn build (none exists for current
    torch with CUDA 13). The sample boundaries are read once per forward pass (one host synchronisation, not one
    per layer): every layer gets the same position-id tensor. A sliding-window layer keeps its window: a sample
    longer than it gets the banded mask transformers would build.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    if query.shape[0] != 1 or position_ids is None or key.shape[2] != query.shape[2] or attention_mask is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal)
    length = query.shape[2]
    if _BOUNDARIES.get("ids") is not position_ids:
        starts = (position_ids[0] == 0).nonzero().flatten().tolist()
        _BOUNDARIES.update(ids=position_ids, starts=starts if starts and starts[0] == 0 else [0, *starts])
    starts = _BOUNDARIES["starts"]
    window = kwargs.get("sliding_window")  # a sliding-window layer (Mistral, Gemma 3, Phi-3, Qwen2 where set)
    outputs = [
        sdpa_attention_forward(module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b],
                               _window_mask(b - a, window, query.device), dropout=dropout, scaling=scaling,
                               is_causal=not (window and b - a > window))[0]
        for a, b in zip(starts, [*starts[1:], length])
    ]
    import torch

    return torch.cat(outputs, dim=1), None


def _window_mask(length: int, window: int | None, device):
    """The causal sliding-window mask of one sample (True: attend), as transformers builds it: a token sees the
    ``window`` tokens ending with itself. None where the sample fits in the window (plain causal attention)."""
    if not window or length <= window:
        return None
    import torch

    position = torch.arange(length, device=device)
    distance = position[:, None] - position[None, :]
    return ((distance >= 0) & (distance < window))[None, None]


def per_sample_mask(batch_size: int, *args, attention_mask=None, **kwargs):
    """The mask transformers builds for :func:`per_sample_sdpa`: none for a padding-free row (one row, no padding
    mask: the attention splits it by its position ids), SDPA's mask for anything else (a padded batch, a
    generation step over a left-padded KV cache), so padding is never attended to. Without a mask function
    registered under its name, transformers would build no mask at all for a custom attention."""
    from transformers.masking_utils import sdpa_mask

    if batch_size == 1 and attention_mask is None:
        return None
    return sdpa_mask(batch_size, *args, attention_mask=attention_mask, **kwargs)


def use_per_sample_attention(model, enabled: bool) -> None:
    """Switch the model's attention to :func:`per_sample_sdpa` (``enabled``) or back to SDPA."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(PER_SAMPLE_ATTENTION, per_sample_sdpa)
    AttentionMaskInterface.register(PER_SAMPLE_ATTENTION, per_sample_mask)
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    target.set_attn_implementation(PER_SAMPLE_ATTENTION if enabled else "sdpa")
