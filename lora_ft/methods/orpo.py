"""``method: orpo``: Odds Ratio Preference Optimization (TRL's ORPOTrainer): SFT on the chosen answers with an
odds-ratio penalty on the rejected ones, in one stage and with no reference model."""

from __future__ import annotations

import os

from pydantic import Field

from lora_ft.sections import Section
from lora_ft.methods import TrainingMethod
from lora_ft.methods._preference import (MAX_PROMPT, PREFERENCE_LEARNING_RATE, drop_reference, keep_reference,
                                         learning_rate_note)

IGNORE = -100  # the label of a token that is not trained


class OrpoSection(Section):
    """Odds Ratio Preference Optimization (`method: orpo`): SFT on the chosen answers plus an odds-ratio penalty on
    the rejected ones, in one stage with no reference model."""

    beta: float = Field(0.1, gt=0, description="Weight of the odds-ratio term against the SFT loss (lambda in the "
                        "ORPO paper); 0.1 is the paper's value.")
    max_prompt_length: int | None = Field(None, ge=1, description=MAX_PROMPT)


def columns(tokens) -> dict[str, list]:
    """Whole prompt-answer sequences with their labels and masks, as ORPO's trainer reads them."""
    out: dict[str, list] = {"prompt_input_ids": tokens.prompt_ids,
                            "prompt_attention_mask": [[1] * len(p) for p in tokens.prompt_ids]}
    for side, answers in (("chosen", tokens.chosen_ids), ("rejected", tokens.rejected_ids)):
        out[f"{side}_input_ids"] = [p + a for p, a in zip(tokens.prompt_ids, answers)]
        out[f"{side}_attention_mask"] = [[1] * (len(p) + len(a)) for p, a in zip(tokens.prompt_ids, answers)]
        out[f"{side}_labels"] = [[IGNORE] * len(p) + a for p, a in zip(tokens.prompt_ids, answers)]
    return out


def build_trainer(model, tokenizer, cfg, train_dataset, eval_dataset, common: dict, callbacks):
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    class PreTokenizedORPOTrainer(ORPOTrainer):
        def tokenize_row(self, feature, model=None):
            return feature  # prompt, chosen and rejected input ids and labels as lora-ft tokenized them

    # lengths are lora-ft's (data.max_seq_length); ORPO only reads them to warn when they are missing
    args = ORPOConfig(**common, beta=cfg.orpo.beta, max_length=cfg.data.max_seq_length,
                      max_completion_length=cfg.data.max_seq_length, remove_unused_columns=False)
    trainer = PreTokenizedORPOTrainer(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                                      processing_class=tokenizer, callbacks=callbacks)
    keep_reference(trainer.model, False)  # no reference: a starting adapter's copy is not kept
    return trainer


def notes(cfg, learning_rate_given: bool) -> list[str]:
    return ([] if learning_rate_given else [learning_rate_note(cfg)]) + ["orpo: no reference model (ORPO needs none)"]


METHOD = TrainingMethod(
    name="orpo", order=20,
    description="ORPO (SFT on the chosen answers with an odds-ratio penalty on the rejected ones) on preference "
    "pairs",
    reads=("pairs",), section=OrpoSection, pairs=True, sequences_per_sample=2,
    learning_rate=PREFERENCE_LEARNING_RATE, padding_free=False, loss_name="orpo loss",
    build_trainer=build_trainer, columns=columns, notes=notes, after_training=drop_reference,
)
