"""``method: kto``: Kahneman-Tversky Optimization (TRL's KTOTrainer) on single answers labelled desirable or not
(a pair becomes one of each), against a reference: the model training starts from."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lora_ft.sections import Section
from lora_ft.methods import TrainingMethod
from lora_ft.methods._preference import (MAX_PROMPT, PRECOMPUTE, PREFERENCE_LEARNING_RATE, REFERENCE, drop_reference,
                                         keep_reference, reference_notes, starts_from_its_adapter)


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
    max_prompt_length: int | None = Field(None, ge=1, description=MAX_PROMPT)
    reference: Literal["start", "base"] = Field("start", description=REFERENCE)
    precompute_reference: bool = Field(False, description=PRECOMPUTE)


def columns(tokens) -> dict[str, list]:
    """Each answer with its prompt and its label (desirable: a chosen answer), as KTO's trainer reads them."""
    return {"prompt_ids": tokens.prompt_ids,
            "completion_ids": [c if c is not None else r for c, r in zip(tokens.chosen_ids, tokens.rejected_ids)],
            "label": [c is not None for c in tokens.chosen_ids]}


def build_trainer(model, tokenizer, cfg, train_dataset, eval_dataset, common: dict, callbacks):
    from trl import KTOConfig, KTOTrainer

    class PreTokenizedKTOTrainer(KTOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            # KTO reads its batches in order (the KL term pairs each completion with a neighbour's prompt), so the
            # order is shuffled here, once, with the run's seed
            if dataset_name == "train":
                dataset = dataset.shuffle(seed=args.seed).flatten_indices()
            if not self.calculate_KL:
                return dataset

            def mismatched(batch):
                completions = batch["completion_ids"]
                return {"KL_completion_ids": completions[-1:] + completions[:-1]}

            return dataset.map(mismatched, batched=True, batch_size=args.per_device_train_batch_size)

    settings = cfg.kto
    args = KTOConfig(**common, beta=settings.beta, loss_type=settings.loss_type,
                     desirable_weight=settings.desirable_weight, undesirable_weight=settings.undesirable_weight,
                     max_length=None, precompute_ref_log_probs=settings.precompute_reference, dataset_num_proc=None)
    trainer_class, collator = PreTokenizedKTOTrainer, None
    if cfg.train.padding_free:  # unpadded rows (lora_ft.methods._packed)
        from lora_ft.methods._packed_kto import answer_collator, packed_kto_trainer

        trainer_class, collator = packed_kto_trainer(PreTokenizedKTOTrainer), answer_collator()
    trainer = trainer_class(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                            processing_class=tokenizer, callbacks=callbacks, data_collator=collator)
    keep_reference(trainer.model, starts_from_its_adapter(cfg))
    return trainer


def problems(cfg, resolve_path=None) -> list:
    if cfg.kto.loss_type == "kto" and cfg.train.batch_size < 2:
        return [(("train", "batch_size"), "KTO estimates its KL term from mismatched answers within a batch, which "
                 "needs train.batch_size of 2 or more", "set train.batch_size: 2 or more (4 to 8 is usual)")]
    return []


def reference_forwards(cfg) -> int:
    """The reference (unless precomputed), and the KL estimate's policy and reference passes on mismatched
    answers."""
    settings = cfg.kto
    forwards = 0 if settings.precompute_reference else 1
    if settings.loss_type == "kto":
        forwards += 1 + (0 if settings.precompute_reference else 1)
    return forwards


METHOD = TrainingMethod(
    name="kto", order=30,
    description="Kahneman-Tversky Optimization (KTO) on answers labelled desirable or undesirable",
    reads=("unpaired", "pairs"), section=KtoSection, pairs=True, splits_pairs=True,
    learning_rate=PREFERENCE_LEARNING_RATE, loss_name="kto loss",
    build_trainer=build_trainer, columns=columns, notes=reference_notes, problems=problems, has_reference=True,
    reference_forwards=reference_forwards, after_training=drop_reference,
)
