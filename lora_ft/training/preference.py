"""Preference tuning with TRL's trainers: DPO and KTO (``trl``), ORPO (``trl.experimental.orpo``).

The trainers receive pairs lora-ft already tokenized with the run's chat template
(:mod:`lora_ft.preference_tokens`), so each subclass here only declines to tokenize again. The reference of DPO and
KTO is the model training starts from, with no second model in memory: the base with the adapter switched off, or,
when the run starts from a finished run's adapter (``model.adapter``), a frozen copy of that adapter that TRL keeps
under the name ``ref``. ``reference: base`` drops that copy, so the adapter-off base is the reference.
"""

from __future__ import annotations

import os

from lora_ft.config import RunConfig

REFERENCE_ADAPTER = "ref"  # the name TRL gives the frozen copy of a starting adapter


def preference_arguments(cfg: RunConfig, common: dict):
    """The TRL config of the run's preference method."""
    settings = cfg.method_settings
    if cfg.method == "dpo":
        from trl import DPOConfig

        losses = [settings.loss_type] + (["sft"] if settings.sft_weight else [])
        return DPOConfig(**common, beta=settings.beta, loss_type=losses,
                         loss_weights=[1.0, settings.sft_weight] if settings.sft_weight else None,
                         label_smoothing=settings.label_smoothing, max_length=None,
                         precompute_ref_log_probs=settings.precompute_reference, dataset_num_proc=None)
    if cfg.method == "kto":
        from trl import KTOConfig

        return KTOConfig(**common, beta=settings.beta, loss_type=settings.loss_type,
                         desirable_weight=settings.desirable_weight, undesirable_weight=settings.undesirable_weight,
                         max_length=None, precompute_ref_log_probs=settings.precompute_reference,
                         dataset_num_proc=None)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.orpo import ORPOConfig

    # lengths are lora-ft's (data.max_seq_length); ORPO only reads them to warn when they are missing
    return ORPOConfig(**common, beta=settings.beta, max_length=cfg.data.max_seq_length,
                      max_completion_length=cfg.data.max_seq_length, remove_unused_columns=False)


def trainer_class(method: str):
    """TRL's trainer for the method, taking lora-ft's tokens as they are."""
    if method == "dpo":
        from trl import DPOTrainer

        class PreTokenizedDPOTrainer(DPOTrainer):
            def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
                return dataset  # prompt_ids, chosen_ids, rejected_ids from lora_ft.preference_tokens

        return PreTokenizedDPOTrainer
    if method == "kto":
        from trl import KTOTrainer

        class PreTokenizedKTOTrainer(KTOTrainer):
            def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
                # KTO reads its batches in order (the KL term pairs each completion with a neighbour's prompt),
                # so the order is shuffled here, once, with the run's seed
                if dataset_name == "train":
                    dataset = dataset.shuffle(seed=args.seed).flatten_indices()
                if not self.calculate_KL:
                    return dataset

                def mismatched(batch):
                    completions = batch["completion_ids"]
                    return {"KL_completion_ids": completions[-1:] + completions[:-1]}

                return dataset.map(mismatched, batched=True, batch_size=args.per_device_train_batch_size)

        return PreTokenizedKTOTrainer
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.orpo import ORPOTrainer

    class PreTokenizedORPOTrainer(ORPOTrainer):
        def tokenize_row(self, feature, model=None):
            return feature  # prompt, chosen and rejected input ids and labels from lora_ft.preference_tokens

    return PreTokenizedORPOTrainer


def build_preference_trainer(model, tokenizer, cfg: RunConfig, train_dataset, eval_dataset, args, callbacks):
    trainer = trainer_class(cfg.method)(model=model, args=args, train_dataset=train_dataset,
                                        eval_dataset=eval_dataset, processing_class=tokenizer, callbacks=callbacks)
    settle_reference(trainer.model, cfg)
    return trainer


def settle_reference(model, cfg: RunConfig) -> None:
    """Keep TRL's frozen copy of the starting adapter only where it is the reference; it never trains."""
    peft_config = getattr(model, "peft_config", {})
    if REFERENCE_ADAPTER not in peft_config:
        return
    keep = cfg.method != "orpo" and cfg.model.adapter is not None and cfg.method_settings.reference == "start"
    if not keep:
        model.delete_adapter(REFERENCE_ADAPTER)
        return
    for name, param in model.named_parameters():
        if f".{REFERENCE_ADAPTER}." in name:
            param.requires_grad_(False)


def drop_reference(model) -> None:
    """After training: the adapter that is saved, merged and served is the trained one alone."""
    if REFERENCE_ADAPTER in getattr(model, "peft_config", {}):
        model.delete_adapter(REFERENCE_ADAPTER)
