"""Preference methods on packed rows (train.padding_free, the default) against TRL's padded trainers
(train.padding_free: false): the same losses, metrics and adapters, for DPO (every loss type), ORPO and KTO."""

import json

import pytest
import torch

from lora_ft.commands.train import train
from lora_ft.config import load_config
from lora_ft.methods._packed import PackedCollator, Sequence, per_sequence, score
from tests.conftest import preference_rows, write_jsonl
from tests.test_preference import _config, _quiet

# Measured on tiny Llamas in float32: packed and padded runs of 4 steps differ by at most 7e-6 relative in a logged
# loss or metric (sppo_hard's loss of about 53: 3.6e-4) and by 7.4e-6 in an adapter weight (of about 0.13), from
# the order of sums in attention and the LM head; the bounds below leave 5x room. Runs that take different data or
# compute a different loss differ by orders of magnitude more.
RELATIVE = 5e-5
ABSOLUTE = 1e-5
WEIGHT_TOLERANCE = 4e-5
METRICS = {"dpo": ("loss", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected",
                   "mean_token_accuracy", "entropy"),
           "orpo": ("loss", "rewards/margins", "logps/chosen", "logps/rejected", "nll_loss", "log_odds_ratio"),
           "kto": ("loss", "kl", "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected", "entropy")}


def _varied_pairs(tmp_path):
    """Pairs whose prompts and answers differ in length, so padded rows hold real padding."""
    data_dir = tmp_path / "varied"
    data_dir.mkdir()
    rows = preference_rows(12)
    for number, row in enumerate(rows):
        row["prompt"] += " Please explain" + " in detail" * (number % 4)
        row["chosen"] += " It binds both sides." * (number % 3)
        row["rejected"] += " Nothing else." * ((number + 1) % 3)
    write_jsonl(data_dir / "train.jsonl", rows)
    write_jsonl(data_dir / "eval.jsonl", preference_rows(4, offset=100))
    return data_dir


def _history(run_dir, keys):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [[r.get(key) for key in keys] for r in records if "loss" in r]
    eval_rows = [[r.get(f"eval_{key}") for key in keys] for r in records if "eval_loss" in r]
    return train_rows, eval_rows


def _both(tmp_path, tiny_llama, data, method, extra=""):
    """The same run packed (train.padding_free: true) and padded (false)."""
    runs = {}
    for padding_free in (True, False):
        name = f"{method}-{'packed' if padding_free else 'padded'}.yaml"
        config = _config(tmp_path, tiny_llama, data, method=method, name=name, steps=4, extra=extra)
        flag = str(padding_free).lower()
        config.write_text(config.read_text().replace("\ntrain:\n", f"\ntrain:\n  padding_free: {flag}\n", 1))
        runs[padding_free] = train(load_config(config), say=_quiet)
    return runs[True], runs[False]


def _close_adapters(one, other):
    from safetensors.torch import load_file

    a = load_file(one.adapter_dir / "adapter_model.safetensors")
    b = load_file(other.adapter_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("method, extra", [
    ("dpo", "dpo:\n  sft_weight: 0.5\n"), ("dpo", "dpo:\n  precompute_reference: true\n"), ("orpo", ""),
    ("kto", ""), ("kto", "kto:\n  precompute_reference: true\n")])
def test_packed_runs_give_the_padded_runs_losses_metrics_and_adapter(method, extra, tmp_path, tiny_llama):
    packed, padded = _both(tmp_path, tiny_llama, _varied_pairs(tmp_path), method, extra=extra)
    (ours, ours_eval), (theirs, theirs_eval) = (_history(run.run_dir, METRICS[method]) for run in (packed, padded))
    assert len(ours) == len(theirs) == 4 and len(ours_eval) == len(theirs_eval) >= 2
    assert all(value is not None for value in ours[0][:2] + ours_eval[0][:2])
    for mine, trl in zip(ours + ours_eval, theirs + theirs_eval):  # KTO: a batch may hold no desirable answer
        assert [value is None for value in mine] == [value is None for value in trl]
        assert [v for v in mine if v is not None] == pytest.approx([v for v in trl if v is not None],
                                                                   rel=RELATIVE, abs=ABSOLUTE)
    assert packed.outcome.eval_loss_after == pytest.approx(padded.outcome.eval_loss_after, rel=RELATIVE)
    assert packed.outcome.eval_loss_after != pytest.approx(packed.outcome.eval_loss_before, rel=1e-3)
    assert _close_adapters(packed, padded) < WEIGHT_TOLERANCE


def test_every_dpo_loss_type_packed_equals_trls_padded_loss(tmp_path, tiny_llama, monkeypatch):
    """On one trained model (so the policy differs from its reference), each loss type computed from a packed row
    equals TRL's own computation from the padded batch of the same pairs."""
    from trl import DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    from lora_ft.training import build_trainer

    built = []
    monkeypatch.setattr("lora_ft.training.build_trainer", lambda *a, **k: built.append(build_trainer(*a, **k))
                        or built[-1])
    config = _config(tmp_path, tiny_llama, _varied_pairs(tmp_path), steps=4)
    train(load_config(config), say=_quiet)
    trainer = built[0]
    examples = [trainer.train_dataset[i] for i in range(6)]
    packed = trainer.data_collator(examples)
    padded = DataCollatorForPreference(pad_token_id=0)(examples)
    assert padded["input_ids"].numel() > packed["input_ids"].numel()  # the padded batch holds padding
    trainer.model.eval()
    losses = ["sigmoid", "ipo", "hinge", "robust", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot",
              "apo_zero", "apo_down", "discopop", "sigmoid_norm", "sft"]
    trainer.label_smoothing = 0.1
    for loss_type in losses:
        trainer.loss_types, trainer.loss_weights = [loss_type], [1.0]
        with torch.no_grad():
            ours = trainer._compute_loss(trainer.model, packed, False).item()
            theirs = DPOTrainer._compute_loss(trainer, trainer.model, padded, False).item()
        assert ours == pytest.approx(theirs, rel=RELATIVE, abs=ABSOLUTE), loss_type
        assert ours != pytest.approx(0.0, abs=1e-6), loss_type


def test_a_packed_row_scores_each_sequence_as_it_scores_alone(tiny_llama):
    """Per-sample attention keeps the sequences of a row apart: each one's sum equals its own row's."""
    from transformers import AutoModelForCausalLM

    from lora_ft.model.attention import use_per_sample_attention

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    use_per_sample_attention(model, True)
    sequences = [Sequence([5, 6, 7, 8, 9], 3), Sequence([10, 11, 12, 13, 14, 15, 16], 2),
                 Sequence([17, 18, 19, 20], 1, scored_from=1)]
    collate = PackedCollator(lambda examples: sequences)
    with torch.no_grad():
        batch = collate([{}])
        together = per_sequence(score(model, batch).log_probs, batch)
        alone = [per_sequence(score(model, PackedCollator(lambda _, s=s: [s])([{}])).log_probs,
                              PackedCollator(lambda _, s=s: [s])([{}]))[0] for s in sequences]
    assert batch["answer_lengths"].tolist() == [2, 5, 3]
    assert together.tolist() == pytest.approx([value.item() for value in alone], abs=1e-5)


def test_the_fused_head_path_scores_what_the_kept_logits_path_scores(tiny_llama):
    """The GPU path (TRL's fused LM head over the packed row's labels) and the CPU path (the kept positions'
    logits) give the same log-probabilities and statistics; here the fused head runs its CPU fallback."""
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from lora_ft.model.attention import use_per_sample_attention

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    use_per_sample_attention(model, True)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    batch = PackedCollator(lambda _: [Sequence([5, 6, 7, 8, 9], 3), Sequence([10, 11, 12, 13, 14, 15], 2),
                                      Sequence([17, 18, 19, 20], 1, scored_from=1)])([{}])
    with torch.no_grad():
        kept, fused = score(model, batch, statistics=True), score(model, batch, fused_head=True)
    assert fused.log_probs.tolist() == pytest.approx(kept.log_probs.tolist(), abs=1e-5)
    assert fused.entropy.tolist() == pytest.approx(kept.entropy.tolist(), abs=1e-4)
    assert fused.mean_logit.tolist() == pytest.approx(kept.mean_logit.tolist(), abs=1e-5)
    assert fused.top1.tolist() == kept.top1.tolist()
