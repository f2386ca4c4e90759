"""``method: orpo``: Odds Ratio Preference Optimization (TRL's ORPOTrainer): SFT on the chosen answers with an
odds-ratio penalty on the rejected ones, in one stage and with no reference model."""

from __future__ import annotations

import os

from pydantic import Field

from lora_ft.sections import Section
from lora_ft.methods import TrainingMethod
from lora_ft.methods._packed import PackedCollator, Sequence, per_sequence, score
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
    trainer_class, collator = PreTokenizedORPOTrainer, None
    if cfg.train.padding_free:  # one unpadded row per micro-batch (lora_ft.methods._packed)
        trainer_class, collator = packed_orpo_trainer(PreTokenizedORPOTrainer), orpo_collator()
    trainer = trainer_class(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                            processing_class=tokenizer, callbacks=callbacks, data_collator=collator)
    trainer.use_dpo_data_collator = True  # its evaluation reads our batches as it reads its own
    keep_reference(trainer.model, False)  # no reference: a starting adapter's copy is not kept
    return trainer


def orpo_sequences(examples: list[dict]) -> list[Sequence]:
    """Every chosen sequence, scored from its second token (ORPO's SFT term covers the prompt too), then every
    rejected one (its answer scored)."""
    prompts = [len(example["prompt_input_ids"]) for example in examples]
    return ([Sequence(e["chosen_input_ids"], p, scored_from=1) for e, p in zip(examples, prompts)]
            + [Sequence(e["rejected_input_ids"], p) for e, p in zip(examples, prompts)])


def orpo_collator() -> PackedCollator:
    return PackedCollator(orpo_sequences)


def packed_orpo_trainer(base_class):
    """``base_class`` (lora-ft's ORPOTrainer, its data as tokenized) scoring one packed row per micro-batch: the
    chosen sequences' mean token loss (prompt and answer, as TRL's ORPO computes it) and each answer's mean
    log-probability, from which TRL's odds-ratio loss and metrics follow unchanged."""
    class PackedORPOTrainer(base_class):
        def concatenated_forward(self, model, batch):
            scored = score(model, batch, statistics=True)
            pairs = batch["answer_lengths"].numel() // 2
            chosen_token = batch["owner"] < pairs
            nll = -scored.log_probs[chosen_token].mean()
            means = per_sequence(scored.log_probs, batch) / batch["answer_lengths"].clamp(min=1)
            answer = batch["in_answer"]
            chosen_logits = scored.mean_logit[chosen_token & answer]
            rejected_logits = scored.mean_logit[~chosen_token & answer]
            return means[:pairs], means[pairs:], chosen_logits, rejected_logits, nll

        def _set_signature_columns_if_needed(self):
            if self._signature_columns is None:
                self._signature_columns = ["prompt_input_ids", "chosen_input_ids", "rejected_input_ids"]

    return PackedORPOTrainer


def notes(cfg, learning_rate_given: bool) -> list[str]:
    return ([] if learning_rate_given else [learning_rate_note(cfg)]) + ["orpo: no reference model (ORPO needs none)"]


METHOD = TrainingMethod(
    name="orpo", order=20,
    description="ORPO (SFT on the chosen answers with an odds-ratio penalty on the rejected ones) on preference "
    "pairs",
    reads=("pairs",), section=OrpoSection, pairs=True, sequences_per_sample=2,
    learning_rate=PREFERENCE_LEARNING_RATE, loss_name="orpo loss",
    build_trainer=build_trainer, columns=columns, notes=notes, after_training=drop_reference,
)
