"""DPO on packed pairs (:mod:`lora_ft.methods._packed`): TRL's DPOTrainer with its loss computed from one
unpadded row per micro-batch, the reference pass under ``torch.no_grad`` with the adapter off (or the starting
adapter active), or read from the reference log-probabilities TRL precomputes once (through the same packed pass).

The preference losses are TRL 1.16's, over the same per-sequence sums (the suite checks each against TRL's padded
trainer on tiny models), and the same metrics are logged under the same names."""

from __future__ import annotations

from lora_ft.methods._packed import PackedCollator, PackedTrainer, Sequence, per_sequence, score


def pair_sequences(examples: list[dict]) -> list[Sequence]:
    """Every chosen answer with its prompt, then every rejected one (TRL's order: the first half is chosen)."""
    return [Sequence(example["prompt_ids"] + example[side], len(example["prompt_ids"]))
            for side in ("chosen_ids", "rejected_ids") for example in examples]


def pair_collator() -> PackedCollator:
    return PackedCollator(pair_sequences, columns=("ref_chosen_logps", "ref_rejected_logps"))


def dpo_loss(loss_type: str, beta: float, label_smoothing: float, chosen, rejected, ref_chosen, ref_rejected,
             chosen_lengths, rejected_lengths, chosen_token_log_probs=None):
    """One loss type's per-pair loss (TRL 1.16's formulas, the reverse-KL divergence of standard DPO)."""
    import torch
    import torch.nn.functional as F

    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
    delta = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * delta)
    if loss_type == "hinge":
        return torch.relu(1 - beta * delta)
    if loss_type == "ipo":  # normalized by answer length, as TRL does (confirmed by the IPO authors)
        per_token = chosen_ratio / chosen_lengths.clamp(min=1) - rejected_ratio / rejected_lengths.clamp(min=1)
        return (per_token - 1 / (2 * beta)) ** 2
    if loss_type == "exo_pair":
        epsilon = torch.tensor(label_smoothing, device=delta.device)
        return (torch.sigmoid(beta * delta) * (F.logsigmoid(beta * delta) - torch.log1p(-epsilon))
                + torch.sigmoid(-beta * delta) * (F.logsigmoid(-beta * delta) - torch.log(epsilon)))
    if loss_type == "nca_pair":
        return (-F.logsigmoid(beta * chosen_ratio) - 0.5 * F.logsigmoid(-beta * chosen_ratio)
                - 0.5 * F.logsigmoid(-beta * rejected_ratio))
    if loss_type == "robust":
        return ((-(1 - label_smoothing) * F.logsigmoid(beta * delta) + label_smoothing * F.logsigmoid(-beta * delta))
                / (1 - 2 * label_smoothing))
    if loss_type == "bco_pair":
        return -F.logsigmoid(beta * chosen_ratio) - F.logsigmoid(-beta * rejected_ratio)
    if loss_type == "sppo_hard":
        return (chosen_ratio - 0.5 / beta) ** 2 + (rejected_ratio + 0.5 / beta) ** 2
    if loss_type == "aot":
        gap = torch.sort(chosen - rejected, dim=0)[0] - torch.sort(ref_chosen - ref_rejected, dim=0)[0]
        return -F.logsigmoid(beta * gap) * (1 - label_smoothing) - F.logsigmoid(-beta * gap) * label_smoothing
    if loss_type == "apo_zero":
        return 1 - torch.sigmoid(beta * chosen_ratio) + torch.sigmoid(beta * rejected_ratio)
    if loss_type == "apo_down":
        return torch.sigmoid(beta * chosen_ratio) + 1 - torch.sigmoid(beta * delta)
    if loss_type == "discopop":
        logits = beta * delta
        modulation = torch.sigmoid(logits / DISCOPOP_TAU)
        return -F.logsigmoid(logits) * (1 - modulation) + torch.exp(-logits) * modulation
    if loss_type == "sigmoid_norm":
        return -F.logsigmoid(beta * (chosen_ratio / chosen_lengths.clamp(min=1)
                                     - rejected_ratio / rejected_lengths.clamp(min=1)))
    if loss_type == "sft":  # the chosen answers' mean token loss, the same for every pair
        return (-chosen_token_log_probs.mean()).expand(chosen.shape[0])
    raise ValueError(f"unknown DPO loss type {loss_type!r}")


DISCOPOP_TAU = 0.05  # DPOConfig's default discopop_tau


def packed_dpo_trainer(base_class):
    """``base_class`` (lora-ft's DPOTrainer, its data as tokenized) with packed batches."""
    import torch

    class PackedDPOTrainer(PackedTrainer, base_class):
        def _set_signature_columns_if_needed(self):
            if self._signature_columns is None:
                self._signature_columns = ["prompt_ids", "chosen_ids", "rejected_ids", "ref_chosen_logps",
                                           "ref_rejected_logps"]

        def reference_scores(self, batch):
            with self.reference_pass():
                return score(self.model, batch, self._fused_head).log_probs

        def compute_ref_log_probs(self, model, inputs):  # TRL's precompute pass, packed
            return per_sequence(self.reference_scores(inputs), inputs).chunk(2)

        def _compute_loss(self, model, inputs, return_outputs):
            mode = "train" if self.model.training else "eval"
            batch = inputs  # on the device: the trainer (and TRL's precompute loader) put it there
            # the reference first: its pass is over (its memory free) before the policy's activations are kept
            if "ref_chosen_logps" in batch:
                ref_chosen, ref_rejected = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
            else:
                ref_chosen, ref_rejected = per_sequence(self.reference_scores(batch), batch).chunk(2)
            scored = score(model, batch, self._fused_head, statistics=True)
            logps = per_sequence(scored.log_probs, batch)
            chosen, rejected = logps.chunk(2)
            pairs = chosen.shape[0]
            lengths = batch["answer_lengths"]
            chosen_token = batch["owner"] < pairs
            loss = 0.0
            for loss_type, weight in zip(self.loss_types, self.loss_weights, strict=True):
                per_pair = dpo_loss(loss_type, self.beta, self.label_smoothing, chosen, rejected, ref_chosen,
                                    ref_rejected, lengths[:pairs], lengths[pairs:],
                                    scored.log_probs[chosen_token & batch["in_answer"]])
                loss = loss + per_pair.mean() * weight
            self.log_pair_metrics(mode, batch, scored, chosen, rejected, ref_chosen, ref_rejected, chosen_token)
            return (loss, None) if return_outputs else loss

        def log_pair_metrics(self, mode, batch, scored, chosen, rejected, ref_chosen, ref_rejected, chosen_token):
            """TRL's DPO metrics, under its names: entropy, tokens, mean logits, token accuracy, rewards, logps."""
            gather, metrics = self.accelerator.gather_for_metrics, self._metrics[mode]
            answer = batch["in_answer"]
            tokens = gather(answer.sum()).sum()
            metrics["entropy"].append((gather(scored.entropy[answer].sum()).sum() / tokens.clamp(min=1)).item())
            if mode == "train":
                self._total_train_tokens += gather(torch.tensor(batch["input_ids"].numel(),
                                                                device=tokens.device)).sum().item() // self._tp_size
            metrics["num_tokens"] = [self._total_train_tokens]
            for side, where in (("chosen", chosen_token & answer), ("rejected", ~chosen_token & answer)):
                total, count = gather(scored.mean_logit[where].sum()).sum(), gather(where.sum()).sum()
                metrics[f"logits/{side}"].append((total / count).item() if count > 0 else 0.0)
            where = chosen_token & answer
            correct, count = gather(scored.top1[where].sum()).sum(), gather(where.sum()).sum()
            metrics["mean_token_accuracy"].append((correct / count).item() if count > 0 else 0.0)
            chosen_rewards = self.beta * (chosen - ref_chosen).detach()
            rejected_rewards = self.beta * (rejected - ref_rejected).detach()
            metrics["rewards/chosen"].append(self.accelerator.gather(chosen_rewards).mean().item())
            metrics["rewards/rejected"].append(self.accelerator.gather(rejected_rewards).mean().item())
            accuracies = (chosen_rewards > rejected_rewards).float()
            metrics["rewards/accuracies"].append(self.accelerator.gather(accuracies).mean().item())
            margins = chosen_rewards - rejected_rewards
            metrics["rewards/margins"].append(self.accelerator.gather(margins).mean().item())
            metrics["logps/chosen"].append(self.accelerator.gather(chosen.detach()).mean().item())
            metrics["logps/rejected"].append(self.accelerator.gather(rejected.detach()).mean().item())

    return PackedDPOTrainer

