"""End-to-end training runs on tiny models built in-process, through the CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lora_ft import cli
from lora_ft.config import load_config

from .conftest import write_config


def _base_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def test_cli_train_writes_a_complete_run_dir(tiny_llama, legal_data, tmp_path, capsys):
    config = write_config(tmp_path / "run.yaml", tiny_llama, legal_data)
    assert cli.main(["train", str(config)]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "step 3/3  loss" in captured.err and "tok/s" in captured.err  # progress, one line per log step
    run_dir = tmp_path / "run"
    adapter = run_dir / "adapter"
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "chat_template.jinja",
                 "README.md"):
        assert (adapter / name).is_file(), name
    for name in ("config.yaml", "manifest.json", "metrics.jsonl"):
        assert (run_dir / name).is_file(), name
    assert not list(adapter.rglob("*.bin")) and not list(adapter.rglob("*.pt")), "no pickled weights"
    # Checkpoints hold the optimizer, scheduler and RNG states the trainer pickles (read back with
    # weights_only=True, after their hashes are checked); weights are safetensors, the trainer's arguments gone.
    pickles = {p.name for p in (run_dir / "checkpoints").rglob("*") if p.suffix in (".bin", ".pt", ".pth")}
    assert pickles == {"optimizer.pt", "scheduler.pt", "rng_state.pth"}
    assert (run_dir / "checkpoints" / "checkpoint-3" / "adapter_model.safetensors").is_file()

    manifest = json.loads((run_dir / "manifest.json").read_text())
    metrics = manifest["metrics"]
    assert metrics["steps"] == 3
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"]
    assert "eval loss before" in out and "peak memory" in out and str(adapter) in out
    assert manifest["data"][0]["sha256"] and manifest["packages"]["torch"] and manifest["seed"] == 42
    assert manifest["chat_template"]["end_of_turn"] == "<|im_end|>"
    assert "eval loss, with this adapter" in (adapter / "README.md").read_text()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in records) and any("eval_loss" in r for r in records)

    saved = load_config(run_dir / "config.yaml")  # the resolved config is itself a valid config
    assert saved.config.model.quantization == "none" and saved.config.train.device == "cpu"


def test_training_changes_lora_weights_and_not_the_base(tiny_llama, legal_data, tmp_path):
    from lora_ft.commands import train as pipeline

    loaded = load_config(write_config(tmp_path / "run.yaml", tiny_llama, legal_data))
    result = pipeline.train(loaded)
    reference = _base_weights(tiny_llama)
    state = {k: v for k, v in result.model.get_base_model().state_dict().items()}
    lora_b = {k: v for k, v in state.items() if "lora_B" in k}
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b.values()), "LoRA B starts at zero and must move"
    frozen = {k.replace(".base_layer", ""): v for k, v in state.items() if "lora_" not in k}
    assert set(reference) <= set(frozen)
    for name, value in reference.items():
        assert torch.equal(frozen[name].to(value.dtype), value), f"base weight {name} changed"
    saved = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    assert all("lora_" in k for k in saved), "only adapter weights are saved"


def test_train_refuses_an_existing_run_dir(tiny_llama, legal_data, tmp_path, capsys):
    config = write_config(tmp_path / "run.yaml", tiny_llama, legal_data)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "manifest.json").write_text("{}")
    assert cli.main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert "already holds a finished run" in err and "--set output_dir=" in err
    assert (tmp_path / "run" / "manifest.json").read_text() == "{}"


def test_gpt2_family_with_conv1d_and_fallback_template(tiny_gpt2, legal_data, tmp_path, capsys):
    config = write_config(tmp_path / "run.yaml", tiny_gpt2, legal_data)
    assert cli.main(["train", str(config), "--set", "lora.top_n_layers=1"]) == 0
    out = capsys.readouterr().out
    assert "'alpaca' from data_templates/chat" in out
    adapter_cfg = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["fan_in_fan_out"] is True
    assert adapter_cfg["layers_to_transform"] == [1]
    weights = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    assert weights and all(".h.1." in k for k in weights)
    template = (tmp_path / "run" / "adapter" / "chat_template.jinja").read_text()
    assert "### Response:" in template


def test_lora_options_reach_peft(tiny_llama):
    from transformers import AutoModelForCausalLM

    from lora_ft.config import LoraSection
    from lora_ft.model import attach_lora, count_parameters

    section = LoraSection(r=4, alpha=8, target_modules=["q_proj", "v_proj"], use_dora=True, use_rslora=True,
                          modules_to_save=["lm_head"], top_n_layers=2)
    model = attach_lora(AutoModelForCausalLM.from_pretrained(tiny_llama), section)
    config = model.peft_config["default"]
    assert config.use_dora and config.use_rslora and config.layers_to_transform == [1, 2]
    assert set(config.target_modules) == {"q_proj", "v_proj"}
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("lora_magnitude_vector" in n for n in names)
    assert not any(".layers.0." in n for n in names)
    trainable, total = count_parameters(model)
    assert 0 < trainable < total


def test_nf4_on_cpu_trains_through_4bit_layers(tiny_llama, legal_data, tmp_path):
    import bitsandbytes as bnb

    from lora_ft.commands import train as pipeline

    loaded = load_config(write_config(tmp_path / "run.yaml", tiny_llama, legal_data),
                         ["model.quantization=nf4", "train.max_steps=2"])
    seen = []
    result = pipeline.train(loaded, say=seen.append)
    assert result.manifest["metrics"]["steps"] == 2
    assert any("(nf4, float32) on cpu" in line for line in seen)
    from peft import PeftModel  # noqa: F401 - the adapter loads on an un-quantized base

    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    four_bit = [n for n, m in result.model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(four_bit) == 3 * 7, "every attention and MLP projection of the 3 layers trained through 4-bit weights"
    assert not any("stay in" in line for line in seen)


def test_nf4_on_cpu_keeps_layers_too_narrow_for_the_cpu_kernels_in_full_precision(legal_data, tmp_path):
    """bitsandbytes' packed CPU path (AVX-512 machines) fails inside the library on layers narrower than its
    blocks; those layers stay unquantized, said in one line, and the run trains on every CPU."""
    import bitsandbytes as bnb

    from lora_ft.commands import train as pipeline

    from .conftest import build_llama, build_tokenizer

    model_dir = tmp_path / "narrow"
    build_llama(model_dir, len(build_tokenizer(model_dir)), layers=1, hidden=32, intermediate=64)
    loaded = load_config(write_config(tmp_path / "run.yaml", model_dir, legal_data),
                         ["model.quantization=nf4", "train.max_steps=2"])
    seen = []
    result = pipeline.train(loaded, say=seen.append)
    assert result.manifest["metrics"]["eval_loss_after"] is not None
    note = next(line for line in seen if "stay in float32, not 4-bit" in line)
    assert "model.layers.0.self_attn.q_proj (32 x 32)" in note and "multiple of 64" in note
    modules = dict(result.model.named_modules())
    assert not any(isinstance(m, bnb.nn.Linear4bit) for n, m in modules.items() if n.endswith("q_proj.base_layer"))
    assert isinstance(modules["base_model.model.model.layers.0.mlp.down_proj.base_layer"], bnb.nn.Linear4bit)


def test_early_stopping_keeps_the_best_adapter(tiny_llama, legal_data, tmp_path):
    from lora_ft.commands import train as pipeline

    loaded = load_config(write_config(tmp_path / "run.yaml", tiny_llama, legal_data),
                         ["train.max_steps=8", "train.eval_steps=2", "train.early_stopping_patience=1",
                          "train.learning_rate=0.5"])
    result = pipeline.train(loaded)
    metrics = result.manifest["metrics"]
    assert metrics["best_checkpoint"] is not None
    evals = [r["eval_loss"] for r in result.outcome.log if "eval_loss" in r]
    assert metrics["eval_loss_after"] == pytest.approx(min(evals[:-1]), rel=1e-4)


def test_wandb_offline_run_writes_its_files(tiny_llama, legal_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", "canary-wandb-key-0123456789abcdef0123456789abcdef")
    monkeypatch.setenv("HF_TOKEN", "hf_canaryTOKENcanaryTOKENcanary")
    config = write_config(tmp_path / "run.yaml", tiny_llama, legal_data,
                          extra="tracking:\n  report_to: [wandb, tensorboard]\n  project: tests\n  tags: [t1]\n")
    assert cli.main(["train", str(config)]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "canary" not in out + captured.err, "no secret in the logs"
    run_dir = tmp_path / "run"
    import wandb
    wandb.teardown()  # W&B's service completes the run's files when the process ends, as the command's exit does
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert offline_runs, "an offline W&B run directory under the run directory"
    run_files = list(offline_runs[0].glob("*.wandb"))
    assert run_files and b"train/loss" in run_files[0].read_bytes(), "the W&B run file, with the training curves"
    assert "W&B offline run files:" in out and "wandb sync" in out
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    # secrets from the environment appear in no file the run wrote
    for path in run_dir.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            assert b"canary-wandb-key" not in blob and b"hf_canaryTOKEN" not in blob, path


@pytest.mark.parametrize("overrides", [
    ["train.packing=true", "train.max_steps=2"],
    ["train.padding_free=false", "train.max_steps=2"],
    ["train.lr_scheduler=reduce_on_plateau", "train.eval_steps=1", "train.max_steps=2"],
    ["train.lr_scheduler=constant", "data.train_on=all", "train.max_steps=2"],
], ids=["packing", "padded", "reduce_on_plateau", "constant-train-on-all"])
def test_training_options_run(tiny_llama, legal_data, tmp_path, overrides):
    from lora_ft.commands import train as pipeline

    loaded = load_config(write_config(tmp_path / "run.yaml", tiny_llama, legal_data), overrides)
    result = pipeline.train(loaded)
    assert result.manifest["metrics"]["steps"] == 2
    assert result.manifest["metrics"]["train_loss"] is not None


def test_padding_free_batches_give_the_same_loss_as_padded_ones(tiny_llama, legal_data, tmp_path):
    from lora_ft.commands import train as pipeline

    losses = {}
    for padding_free in ("true", "false"):
        loaded = load_config(write_config(tmp_path / f"{padding_free}.yaml", tiny_llama, legal_data,
                                          output_dir=tmp_path / f"run-{padding_free}"),
                             [f"train.padding_free={padding_free}", "train.max_steps=1", "lora.dropout=0"])
        result = pipeline.train(loaded)
        losses[padding_free] = (result.manifest["metrics"]["eval_loss_before"],
                                result.manifest["metrics"]["train_loss"])
    assert losses["true"] == pytest.approx(losses["false"], rel=1e-4)


def test_template_checks_block_unless_turned_off(tiny_llama, legal_data, tmp_path, capsys):
    no_stop = tmp_path / "no_stop.jinja"
    no_stop.write_text("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}")
    config = write_config(tmp_path / "run.yaml", tiny_llama, legal_data)
    assert cli.main(["train", str(config), "--set", f"model.chat_template={no_stop}"]) == 2
    err = capsys.readouterr().err
    assert "never learn to stop" in err and "data.template_checks: false" in err
    assert not (tmp_path / "run").exists(), "a blocked run writes nothing"
    assert cli.main(["train", str(config), "--set", f"model.chat_template={no_stop}",
                     "--set", "data.template_checks=false", "--set", "train.max_steps=1"]) == 0
    assert "warning (data.template_checks is off)" in capsys.readouterr().out


def test_nonfinite_guard_stops_or_skips_before_the_optimizer_step():
    from types import SimpleNamespace

    from lora_ft.training import NonFiniteGradients, NonFiniteGuard

    layer = torch.nn.Linear(2, 2)
    state = SimpleNamespace(global_step=4)
    layer.weight.grad = torch.ones(2, 2)
    layer.bias.grad = torch.ones(2)
    NonFiniteGuard("stop").on_pre_optimizer_step(None, state, None, model=layer)  # finite: nothing happens
    layer.weight.grad[0, 0] = float("nan")
    with pytest.raises(NonFiniteGradients) as stop:
        NonFiniteGuard("stop").on_pre_optimizer_step(None, state, None, model=layer)
    assert stop.value.step == 5
    guard = NonFiniteGuard("skip", max_skips=1)
    guard.on_pre_optimizer_step(None, state, None, model=layer)
    assert guard.skipped == [5] and layer.weight.grad is None and layer.bias.grad is None
    layer.weight.grad = torch.full((2, 2), float("inf"))
    with pytest.raises(NonFiniteGradients):  # the skip limit is reached
        guard.on_pre_optimizer_step(None, state, None, model=layer)


def _model_with_a_nan(source: Path, target: Path) -> Path:
    """A copy of a tiny model with one NaN in its final norm: every loss and gradient becomes NaN."""
    import shutil

    from safetensors.torch import save_file

    shutil.copytree(source, target)
    weights = load_file(str(target / "model.safetensors"))
    weights["model.norm.weight"][0] = float("nan")
    save_file(weights, str(target / "model.safetensors"), metadata={"format": "pt"})
    return target


def test_an_injected_nan_stops_the_run_before_any_weight_changes(tiny_llama, legal_data, tmp_path, capsys):
    model_dir = _model_with_a_nan(tiny_llama, tmp_path / "nan-model")
    config = write_config(tmp_path / "run.yaml", model_dir, legal_data)
    assert cli.main(["train", str(config), "--set", "train.save_steps=1"]) == 3
    err = capsys.readouterr().err
    assert "the gradients at step 1 are NaN or Inf: training stopped before that optimizer step" in err
    assert "no checkpoint had been saved yet" in err and "train.nonfinite: skip" in err
    assert not (tmp_path / "run" / "manifest.json").exists(), "a stopped run is not marked finished"


def test_skip_mode_skips_nonfinite_steps_up_to_its_limit(tiny_llama, legal_data, tmp_path, capsys):
    model_dir = _model_with_a_nan(tiny_llama, tmp_path / "nan-model")
    config = write_config(tmp_path / "run.yaml", model_dir, legal_data)
    assert cli.main(["train", str(config), "--set", "train.nonfinite=skip", "--set", "train.max_skipped_steps=2"]) == 3
    err = capsys.readouterr().err
    assert "the gradients at step 3 are NaN or Inf" in err
    assert "2 earlier step(s) were skipped ([1, 2])" in err


def test_same_config_and_seed_give_the_same_losses_and_weights(tiny_llama, legal_data, tmp_path):
    from lora_ft.commands import train as pipeline

    runs = []
    for name in ("first", "second"):
        loaded = load_config(write_config(tmp_path / f"{name}.yaml", tiny_llama, legal_data,
                                          output_dir=tmp_path / name), ["train.max_steps=4", "lora.dropout=0.1"])
        result = pipeline.train(loaded)
        losses = [r["loss"] for r in result.outcome.log if "loss" in r]
        runs.append((losses, load_file(str(result.adapter_dir / "adapter_model.safetensors"))))
    (losses_a, weights_a), (losses_b, weights_b) = runs
    assert len(losses_a) == 4 and losses_a == losses_b
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_a_run_that_would_fill_the_disk_does_not_start(tiny_llama, legal_data, tmp_path):
    from lora_ft.rundir import artifacts
    from lora_ft.errors import UserError

    cfg = load_config(write_config(tmp_path / "run.yaml", tiny_llama, legal_data), ["train.save_steps=10"]).config
    need = artifacts.run_disk_need(1_000_000, cfg)
    assert need > artifacts.run_disk_need(1_000_000, cfg.model_copy(update={"train": cfg.train.model_copy(
        update={"save_steps": None})}))  # checkpoints need room too
    artifacts.check_free_space(tmp_path / "new" / "run", need, free=need + 1)
    with pytest.raises(UserError, match="not enough free disk space") as exc:
        artifacts.check_free_space(tmp_path / "new" / "run", need, free=need // 2)
    assert "MiB needed" in exc.value.title and exc.value.fix


def test_freed_memory_is_kept_for_reuse_on_linux():
    import sys

    from lora_ft.training import reuse_freed_memory

    assert reuse_freed_memory() is sys.platform.startswith("linux")


def test_per_sample_attention_gives_the_masked_attention_result(tiny_llama):
    from transformers import AutoModelForCausalLM

    from lora_ft.model import use_per_sample_attention

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, attn_implementation="sdpa")
    lengths = [5, 9, 3, 7]
    ids = torch.randint(3, 300, (1, sum(lengths)), generator=torch.Generator().manual_seed(0))
    position_ids = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    separate = torch.cat([model(input_ids=part).logits for part in ids.split(lengths, dim=1)], dim=1)
    use_per_sample_attention(model, True)
    per_sample = model(input_ids=ids, position_ids=position_ids).logits
    torch.testing.assert_close(per_sample, separate, rtol=1e-5, atol=1e-5)  # as if each sample ran alone
    use_per_sample_attention(model, False)
    assert model.config._attn_implementation == "sdpa"
