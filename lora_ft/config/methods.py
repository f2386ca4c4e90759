"""The training methods (``method:``) and the settings section of each preference method.

``sft`` learns to write the answers; ``dpo``, ``orpo`` and ``kto`` learn from preferences between answers (TRL's
DPOTrainer, ORPOTrainer and KTOTrainer). A method's section may only appear under that method; the schema says so
with the key's line. Nothing here imports torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lora_ft.config.sections import Section

METHODS = ("sft", "dpo", "orpo", "kto")
Method = Literal["sft", "dpo", "orpo", "kto"]
PREFERENCE_METHODS = ("dpo", "orpo", "kto")
# With LoRA, preference tuning moves the model much faster than SFT; alignment recipes (e.g. QLoRA DPO of 7B
# models) use about 5e-6. Used when train.learning_rate is not set.
PREFERENCE_LEARNING_RATE = 5e-6

DPO_LOSSES = ("sigmoid", "ipo", "hinge", "robust", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot",
              "apo_zero", "apo_down", "discopop", "sigmoid_norm")

_MAX_PROMPT = (
    "Prompts longer than this many tokens keep their last tokens (nearest the answer); `null` cuts no prompt "
    "separately. Whole sequences (prompt and answer) are held to `data.max_seq_length` by `data.overlength`, which "
    "cuts the answers' ends."
)
_REFERENCE = (
    "The reference the policy is compared with: `start` is the model training starts from, the base model with the "
    "adapter switched off, or, with `model.adapter`, a frozen copy of that starting adapter (a few MB; the base "
    "weights are shared, never loaded twice); `base` is the base model even when starting from an adapter."
)
_PRECOMPUTE = (
    "Compute the reference's log-probabilities of every pair once, before training, instead of in every step: "
    "saves the reference forward pass of each step when training runs more than one epoch."
)


class DpoSection(Section):
    """Direct Preference Optimization (`method: dpo`): pairs of a chosen and a rejected answer to one prompt."""

    beta: float = Field(0.1, gt=0, description="How far the policy may move from the reference: higher keeps it "
                        "closer. 0.1 is the usual start; 0.01 to 0.5 is the common range.")
    loss_type: Literal[DPO_LOSSES] = Field(  # type: ignore[valid-type]
        "sigmoid", description="The preference loss: `sigmoid` (the DPO paper), `ipo`, `hinge`, `robust` (with "
        "`label_smoothing`), `apo_zero`/`apo_down`, `sppo_hard`, `nca_pair`, `bco_pair`, `exo_pair`, `aot`, "
        "`discopop`, `sigmoid_norm` (TRL's implementations).")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="The assumed share of flipped preference "
                                   "labels (robust and EXO losses); 0 trusts every pair.")
    sft_weight: float = Field(0.0, ge=0, description="Add the chosen answers' language-model loss with this weight "
                              "(RPO), which keeps the chosen answers likely; 0 is plain DPO.")
    max_prompt_length: int | None = Field(None, ge=1, description=_MAX_PROMPT)
    reference: Literal["start", "base"] = Field("start", description=_REFERENCE)
    precompute_reference: bool = Field(False, description=_PRECOMPUTE)


class OrpoSection(Section):
    """Odds Ratio Preference Optimization (`method: orpo`): SFT on the chosen answers plus an odds-ratio penalty on
    the rejected ones, in one stage with no reference model."""

    beta: float = Field(0.1, gt=0, description="Weight of the odds-ratio term against the SFT loss (lambda in the "
                        "ORPO paper); 0.1 is the paper's value.")
    max_prompt_length: int | None = Field(None, ge=1, description=_MAX_PROMPT)


class KtoSection(Section):
    """Kahneman-Tversky Optimization (`method: kto`): single answers labelled desirable or not (pairs are split
    into one of each)."""

    beta: float = Field(0.1, gt=0, description="How far the policy may move from the reference: higher keeps it "
                        "closer.")
    loss_type: Literal["kto", "apo_zero_unpaired"] = Field("kto", description="`kto` (the paper's loss, with a KL "
                                                          "estimate from mismatched pairs in each batch) or "
                                                          "`apo_zero_unpaired`.")
    desirable_weight: float = Field(1.0, gt=0, description="Weight of the desirable answers' loss; raise it when "
                                    "undesirable answers outnumber desirable ones (the KTO paper keeps "
                                    "desirable_weight x desirable / undesirable_weight x undesirable between 1 and "
                                    "4/3).")
    undesirable_weight: float = Field(1.0, gt=0, description="Weight of the undesirable answers' loss.")
    max_prompt_length: int | None = Field(None, ge=1, description=_MAX_PROMPT)
    reference: Literal["start", "base"] = Field("start", description=_REFERENCE)
    precompute_reference: bool = Field(False, description=_PRECOMPUTE)


SECTIONS = {"dpo": DpoSection, "orpo": OrpoSection, "kto": KtoSection}
