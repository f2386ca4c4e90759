"""What the preference methods (DPO, ORPO, KTO) share: their settings' wording, the usual learning rate, the pair
tokens as TRL's trainers read them, and the reference model -- the model training starts from, with no second
copy of the base in memory: the base with the adapter switched off, or, when the run starts from a finished run's
adapter (``model.adapter``), a frozen copy of that adapter that TRL keeps under the name ``ref``."""

from __future__ import annotations

REFERENCE_ADAPTER = "ref"  # the name TRL gives the frozen copy of a starting adapter
# With LoRA, preference tuning moves the model much faster than SFT; alignment recipes (e.g. QLoRA DPO of 7B
# models) use about 5e-6. Used when train.learning_rate is not set.
PREFERENCE_LEARNING_RATE = 5e-6

MAX_PROMPT = (
    "Prompts longer than this many tokens keep their last tokens (nearest the answer); `null` cuts no prompt "
    "separately. Whole sequences (prompt and answer) are held to `data.max_seq_length` by `data.overlength`, which "
    "cuts the answers' ends."
)
REFERENCE = (
    "The reference the policy is compared with: `start` is the model training starts from, the base model with the "
    "adapter switched off, or, with `model.adapter`, a frozen copy of that starting adapter (a few MB; the base "
    "weights are shared, never loaded twice); `base` is the base model even when starting from an adapter."
)
PRECOMPUTE = (
    "Compute the reference's log-probabilities of every pair once, before training, instead of in every step: "
    "saves the reference forward pass of each step when training runs more than one epoch."
)


def pair_columns(tokens) -> dict[str, list]:
    """Pair tokens as DPO's trainer reads them: the prompt and each answer's ids."""
    return {"prompt_ids": tokens.prompt_ids, "chosen_ids": tokens.chosen_ids, "rejected_ids": tokens.rejected_ids}


def reference_notes(cfg, learning_rate_given: bool) -> list[str]:
    """What a method with a reference says when the config is resolved."""
    notes = [learning_rate_note(cfg)] if not learning_rate_given else []
    if cfg.model.adapter is not None and cfg.method_settings.reference == "start":
        notes.append(f"{cfg.method}: the reference is the starting adapter (a frozen copy; the base weights shared)")
    else:
        notes.append(f"{cfg.method}: the reference is the base model (the adapter switched off; no second copy)")
    return notes


def learning_rate_note(cfg) -> str:
    return (f"{cfg.method}: learning rate {PREFERENCE_LEARNING_RATE:g} (the usual rate for preference tuning with "
            "LoRA; set train.learning_rate to change it)")


def keep_reference(model, keep: bool) -> None:
    """Keep TRL's frozen copy of the starting adapter only where it is the reference (frozen); else drop it."""
    peft_config = getattr(model, "peft_config", {})
    if REFERENCE_ADAPTER not in peft_config:
        return
    if not keep:
        model.delete_adapter(REFERENCE_ADAPTER)
        return
    for name, param in model.named_parameters():
        if f".{REFERENCE_ADAPTER}." in name:
            param.requires_grad_(False)


def starts_from_its_adapter(cfg) -> bool:
    """The reference is the starting adapter (kept as a frozen copy) rather than the adapter-off base."""
    return cfg.model.adapter is not None and cfg.method_settings.reference == "start"


def drop_reference(model) -> None:
    """After training: the adapter that is saved, merged and served is the trained one alone."""
    if REFERENCE_ADAPTER in getattr(model, "peft_config", {}):
        model.delete_adapter(REFERENCE_ADAPTER)
