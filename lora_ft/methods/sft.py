"""``method: sft``: supervised fine-tuning (TRL's SFTTrainer): learn to write the answers of instruction data.

Samples arrive tokenized (:mod:`lora_ft.tokenized`), their loss mask set by ``data.train_on``; batches are
padding-free unless the config says otherwise. On a CPU the trainer is :func:`selective_loss_trainer`."""

from __future__ import annotations

from lora_ft.methods import TrainingMethod


def sft_arguments(cfg, common: dict):
    """TRL's SFTConfig: lora-ft's common arguments, and how SFT batches its samples."""
    from trl import SFTConfig

    train = cfg.train
    return SFTConfig(
        **common,
        use_liger_kernel=train.fused_kernels is True,
        # Samples arrive tokenized and truncated to data.max_seq_length; TRL needs max_length only to pack.
        max_length=cfg.data.max_seq_length if train.packing or not train.padding_free else None,
        packing=train.packing,
        padding_free=train.padding_free,
        dataset_num_proc=None,
    )


def selective_loss_trainer():
    """SFTTrainer whose training loss projects only the trained positions through the LM head, in one piece.

    For a CPU. TRL's own loss also projects only trained positions, in vocabulary tiles with running
    log-sum-exp, entropy and accuracy, which on a GPU runs as Triton kernels; on a CPU it falls back to several
    float32 passes over every tile, about a third of a small model's step. Here the model's forward is asked
    (``logits_to_keep``) for the logits of the positions whose next token is trained, and PyTorch's fused cross
    entropy takes it from there: the same loss, one pass. It applies to padding-free and packed batches (one row);
    padded batches and evaluation go through TRL's loss unchanged.
    """
    import torch
    from trl import SFTTrainer

    class SelectiveLossTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.get("labels")
            if return_outputs or labels is None or labels.shape[0] != 1 or not model.training:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            targets = inputs.get("shift_labels")
            targets = targets[0] if targets is not None else torch.cat(
                [labels[0, 1:], labels.new_full((1,), -100)])
            keep = (targets != -100).nonzero().squeeze(-1)
            forward = {k: v for k, v in inputs.items() if k not in ("labels", "shift_labels")}
            logits = model(**forward, use_cache=False, logits_to_keep=keep).logits[0]
            loss = torch.nn.functional.cross_entropy(logits.float(), targets[keep], reduction="sum")
            count = num_items_in_batch if num_items_in_batch is not None else keep.numel()
            loss = loss / torch.as_tensor(count, device=loss.device).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            return loss

    return SelectiveLossTrainer


def build_trainer(model, tokenizer, cfg, train_dataset, eval_dataset, common: dict, callbacks):
    from trl import SFTTrainer

    trainer_class = selective_loss_trainer() if cfg.train.device == "cpu" else SFTTrainer
    return trainer_class(model=model, args=sft_arguments(cfg, common), train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=tokenizer, callbacks=callbacks)


METHOD = TrainingMethod(
    name="sft", order=0, description="supervised fine-tuning (SFT) on instruction data", reads=("sft",),
    build_trainer=build_trainer, streaming=True, packing=True,
)
