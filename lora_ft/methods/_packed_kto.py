"""KTO on packed answers (:mod:`lora_ft.methods._packed`): TRL's KTOTrainer with its loss computed from unpadded
rows: the answers (with gradient), the mismatched answers of the KL estimate (policy, no gradient), and the
reference's pass over both with the adapter off (or the starting adapter active), or read from the reference
log-probabilities TRL precomputes once (through the same packed passes).

The losses and metrics are TRL 1.16's (``kto``, ``apo_zero_unpaired``), over the same per-sequence sums; the suite
checks them against TRL's padded trainer on tiny models."""

from __future__ import annotations

from lora_ft.methods._packed import PackedCollator, PackedTrainer, Sequence, per_sequence, score


def _answers(key: str):
    def sequences(examples: list[dict]) -> list[Sequence]:
        return [Sequence(example["prompt_ids"] + example[key], len(example["prompt_ids"])) for example in examples]

    return sequences


def answer_collator() -> PackedCollator:
    """The answers in one row; the mismatched answers of the KL estimate, when present, in another (``KL``)."""
    mismatched = PackedCollator(_answers("KL_completion_ids"))

    def extra(examples: list[dict]) -> dict:
        import torch

        out = {"label": torch.tensor([bool(example["label"]) for example in examples])}
        if "KL_completion_ids" in examples[0]:
            out["KL"] = mismatched(examples)
        return out

    return PackedCollator(_answers("completion_ids"), columns=("ref_logps", "ref_KL_logps"), extra=extra)


def packed_kto_trainer(base_class):
    """``base_class`` (lora-ft's KTOTrainer, its data as tokenized) with packed batches."""
    import torch
    import torch.nn.functional as F

    class PackedKTOTrainer(PackedTrainer, base_class):
        def _set_signature_columns_if_needed(self):
            if self._signature_columns is None:
                self._signature_columns = ["prompt_ids", "completion_ids", "label", "KL_completion_ids",
                                           "ref_logps", "ref_KL_logps"]

        def reference_sums(self, batch):
            """The reference's answer and mismatched-answer sums."""
            with self.reference_pass():
                answers = per_sequence(score(self.model, batch, self._fused_head).log_probs, batch)
                kl = None
                if self.calculate_KL:
                    kl = per_sequence(score(self.model, batch["KL"], self._fused_head).log_probs, batch["KL"])
            return answers, kl

        def compute_ref_log_probs(self, model, inputs):  # TRL's precompute pass, packed
            return self.reference_sums(inputs)

        def _compute_loss(self, model, inputs, return_outputs):
            mode = "train" if self.model.training else "eval"
            batch = inputs
            gather = self.accelerator.gather_for_metrics
            # the passes without gradient first: their memory is free before the policy's activations are kept
            kl_logps = None
            if self.calculate_KL:
                with torch.no_grad():
                    kl_logps = per_sequence(score(model, batch["KL"], self._fused_head).log_probs, batch["KL"])
            if "ref_logps" in batch:
                ref_logps, ref_kl = batch["ref_logps"], batch.get("ref_KL_logps")
            else:
                ref_logps, ref_kl = self.reference_sums(batch)
            scored = score(model, batch, self._fused_head, statistics=True)
            logps = per_sequence(scored.log_probs, batch)
            desirable = batch["label"].to(logps.device).bool()
            chosen_idx, rejected_idx = desirable.nonzero().view(-1), (~desirable).nonzero().view(-1)
            kl = torch.zeros(1, device=logps.device)
            if self.calculate_KL:
                kl = gather((kl_logps - ref_kl).mean().detach()).mean().clamp(min=0)
            ratios = logps - ref_logps
            chosen_ratio, rejected_ratio = ratios.index_select(0, chosen_idx), ratios.index_select(0, rejected_idx)
            if self.loss_type == "kto":  # Eqn (7) of the KTO paper
                chosen_losses = 1 - F.sigmoid(self.beta * (chosen_ratio - kl))
                rejected_losses = 1 - F.sigmoid(self.beta * (kl - rejected_ratio))
            else:  # apo_zero_unpaired
                chosen_losses = 1 - F.sigmoid(self.beta * chosen_ratio)
                rejected_losses = F.sigmoid(self.beta * rejected_ratio)
            losses = torch.cat((self.desirable_weight * chosen_losses, self.undesirable_weight * rejected_losses))

            metrics = self._metrics[mode]
            metrics["kl"].append(kl.item())
            answer = batch["in_answer"]
            tokens = gather(answer.sum()).sum()
            metrics["entropy"].append((gather(scored.entropy[answer].sum()).sum() / tokens.clamp(min=1)).item())
            if mode == "train":
                count = torch.tensor(batch["input_ids"].numel(), device=logps.device)
                self._total_train_tokens += gather(count).sum().item() // self._tp_size
            metrics["num_tokens"] = [self._total_train_tokens]
            owner_desirable = desirable[batch["owner"]]
            for side, where in (("chosen", owner_desirable & answer), ("rejected", ~owner_desirable & answer)):
                total, count = gather(scored.mean_logit[where].sum()).sum().item(), gather(where.sum()).sum().item()
                if count > 0:
                    metrics[f"logits/{side}"].append(total / count)
            chosen_count = gather(desirable.sum()).sum().item()
            rejected_count = gather((~desirable).sum()).sum().item()
            for side, ratio, selected, count in (("chosen", chosen_ratio, chosen_idx, chosen_count),
                                                 ("rejected", rejected_ratio, rejected_idx, rejected_count)):
                if count > 0:
                    rewards = self.beta * ratio.detach()
                    metrics[f"rewards/{side}"].append(gather(rewards.nansum()).nansum().item() / count)
                    side_logps = logps.detach().index_select(0, selected)
                    metrics[f"logps/{side}"].append(gather(side_logps.nansum()).nansum().item() / count)
            if chosen_count > 0 and rejected_count > 0:
                metrics["rewards/margins"].append(metrics["rewards/chosen"][-1] - metrics["rewards/rejected"][-1])
            loss = losses.nanmean()
            return (loss, None) if return_outputs else loss

    return PackedKTOTrainer
