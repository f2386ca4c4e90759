"""``method: dpo``: Direct Preference Optimization (TRL's DPOTrainer) on pairs of a chosen and a rejected answer to
one prompt, against a reference: the model training starts from."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lora_ft.sections import Section
from lora_ft.methods import TrainingMethod
from lora_ft.methods._preference import (MAX_PROMPT, PRECOMPUTE, PREFERENCE_LEARNING_RATE, REFERENCE, drop_reference,
                                         keep_reference, pair_columns, reference_notes, starts_from_its_adapter)

DPO_LOSSES = ("sigmoid", "ipo", "hinge", "robust", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot",
              "apo_zero", "apo_down", "discopop", "sigmoid_norm")


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
    max_prompt_length: int | None = Field(None, ge=1, description=MAX_PROMPT)
    reference: Literal["start", "base"] = Field("start", description=REFERENCE)
    precompute_reference: bool = Field(False, description=PRECOMPUTE)


def build_trainer(model, tokenizer, cfg, train_dataset, eval_dataset, common: dict, callbacks):
    from trl import DPOConfig, DPOTrainer

    class PreTokenizedDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset  # prompt_ids, chosen_ids, rejected_ids as lora-ft tokenized them

    settings = cfg.dpo
    losses = [settings.loss_type] + (["sft"] if settings.sft_weight else [])
    args = DPOConfig(**common, beta=settings.beta, loss_type=losses,
                     loss_weights=[1.0, settings.sft_weight] if settings.sft_weight else None,
                     label_smoothing=settings.label_smoothing, max_length=None,
                     precompute_ref_log_probs=settings.precompute_reference, dataset_num_proc=None)
    trainer_class, collator = PreTokenizedDPOTrainer, None
    if cfg.train.padding_free:  # one unpadded row per micro-batch (lora_ft.methods._packed)
        from lora_ft.methods._packed_dpo import packed_dpo_trainer, pair_collator

        trainer_class, collator = packed_dpo_trainer(PreTokenizedDPOTrainer), pair_collator()
    trainer = trainer_class(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                            processing_class=tokenizer, callbacks=callbacks, data_collator=collator)
    keep_reference(trainer.model, starts_from_its_adapter(cfg))
    return trainer


METHOD = TrainingMethod(
    name="dpo", order=10,
    description="Direct Preference Optimization (DPO) on preference pairs (a chosen and a rejected answer per prompt)",
    reads=("pairs",), section=DpoSection, pairs=True, sequences_per_sample=2,
    learning_rate=PREFERENCE_LEARNING_RATE, loss_name="dpo loss",
    build_trainer=build_trainer, columns=pair_columns, notes=reference_notes, has_reference=True,
    reference_forwards=lambda cfg: 0 if cfg.dpo.precompute_reference else 1,
    after_training=drop_reference,
)
