"""Config loading and validation: every fault kind is named with its key and line, all at once, exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lora_ft import cli, config
from lora_ft.config import RunConfig, dump_config, load_config
from lora_ft.errors import UserError

from .conftest import REPO


def _write(tmp_path: Path, text: str, data_file: bool = True) -> Path:
    if data_file:
        (tmp_path / "train.jsonl").write_text('{"text": "hello"}\n')
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


MINIMAL = """model:
  base: embedded
data:
  train:
    - path: train.jsonl
"""


def _problems(exc: pytest.ExceptionInfo) -> str:
    return exc.value.render()


def test_minimal_config_gets_careful_defaults(tmp_path):
    loaded = load_config(_write(tmp_path, MINIMAL))
    cfg = loaded.config
    assert cfg.lora.r == 16 and cfg.lora.alpha == 32 and cfg.lora.target_modules == "all-linear"
    assert cfg.model.quantization == "auto" and cfg.model.trust_remote_code is False
    assert cfg.data.train_on == "answers"
    assert cfg.train.lr_scheduler == "cosine" and cfg.train.learning_rate == 2e-4
    assert loaded.resolve_path("train.jsonl") == tmp_path / "train.jsonl"


def test_unknown_key_suggests_the_right_one_with_line(tmp_path):
    path = _write(tmp_path, MINIMAL + "train:\n  learning_rte: 1e-4\n")
    with pytest.raises(UserError) as exc:
        load_config(path)
    text = _problems(exc)
    assert "unknown key 'train.learning_rte'" in text
    assert "did you mean 'learning_rate'?" in text
    assert f"{path}:7" in text


def test_unknown_top_level_section(tmp_path):
    with pytest.raises(UserError) as exc:
        load_config(_write(tmp_path, MINIMAL + "lora_config:\n  r: 8\n"))
    assert "did you mean 'lora'?" in _problems(exc)


def test_unknown_key_inside_a_dataset_entry(tmp_path):
    with pytest.raises(UserError) as exc:
        load_config(_write(tmp_path, MINIMAL + "      fromat: alpaca\n"))
    text = _problems(exc)
    assert "unknown key 'data.train[0].fromat'" in text and "did you mean 'format'?" in text


def test_wrong_type_and_out_of_range_and_bad_choice_all_reported_at_once(tmp_path):
    text = MINIMAL + "lora:\n  r: lots\n  dropout: 1.5\ntrain:\n  lr_scheduler: cosin\n  batch_size: 0\n"
    with pytest.raises(UserError) as exc:
        load_config(_write(tmp_path, text))
    rendered = _problems(exc)
    assert "4 problem(s)" in rendered
    assert "'lora.r' = \"lots\"" in rendered and "whole number" in rendered
    assert "'lora.dropout' = 1.5" in rendered
    assert "'train.lr_scheduler' = \"cosin\"" in rendered and "'cosine'" in rendered
    assert "'train.batch_size' = 0" in rendered
    assert ":7 (lora.r)" in rendered  # line numbers of the offending keys


def test_missing_required_section(tmp_path):
    with pytest.raises(UserError) as exc:
        load_config(_write(tmp_path, "model:\n  base: embedded\n"))
    assert "required key 'data' is missing" in _problems(exc)


def test_yaml_syntax_error_names_line(tmp_path):
    with pytest.raises(UserError) as exc:
        load_config(_write(tmp_path, "model:\n  base: [embedded\ndata: {}\n"))
    assert "not valid YAML" in exc.value.title
    assert str(tmp_path / "run.yaml") + ":" in exc.value.where


def test_duplicate_key_is_an_error(tmp_path):
    with pytest.raises(UserError) as exc:
        load_config(_write(tmp_path, MINIMAL + "train:\n  epochs: 1\n  epochs: 3\n"))
    assert "appears twice" in _problems(exc)


def test_missing_data_file_and_model_dir(tmp_path):
    text = "model:\n  base: ./no-such-model\ndata:\n  train:\n    - path: nothere.jsonl\n"
    with pytest.raises(UserError) as exc:
        load_config(_write(tmp_path, text, data_file=False))
    rendered = _problems(exc)
    assert "data file not found: nothere.jsonl" in rendered
    assert "neither a local directory nor a hub id" in rendered


def test_conflicts_are_caught(tmp_path):
    text = MINIMAL + (
        "  eval_fraction: 0\n"
        "train:\n  early_stopping_patience: 2\n  lr_scheduler: reduce_on_plateau\n"
        "tracking:\n  report_to: [wandb, tensorbord]\n"
    )
    with pytest.raises(UserError) as exc:
        load_config(_write(tmp_path, text))
    rendered = _problems(exc)
    assert "early stopping needs eval data" in rendered
    assert "early stopping needs periodic evaluation" in rendered
    assert "reduce_on_plateau follows the eval loss" in rendered
    assert "did you mean 'tensorboard'?" in rendered


def test_nf4_without_usable_bitsandbytes_is_a_conflict(tmp_path, monkeypatch):
    monkeypatch.setattr(config.checks, "bitsandbytes_problem", lambda: "bitsandbytes is not installed")
    with pytest.raises(UserError) as exc:
        load_config(_write(tmp_path, MINIMAL.replace("base: embedded", "base: embedded\n  quantization: nf4")))
    assert "quantization 'nf4' needs bitsandbytes: bitsandbytes is not installed" in _problems(exc)


def test_int8_on_cpu_and_fp16_on_cpu_are_conflicts(tmp_path):
    text = MINIMAL.replace("base: embedded", "base: embedded\n  quantization: int8\n  dtype: float16")
    text += "train:\n  device: cpu\n"
    with pytest.raises(UserError) as exc:
        load_config(_write(tmp_path, text))
    rendered = _problems(exc)
    assert "int8 quantization needs a CUDA GPU" in rendered
    assert "float16 training is not supported on a CPU" in rendered


def test_shape_limits_of_the_embedded_model(tmp_path):
    text = MINIMAL + "  max_seq_length: 100000\nlora:\n  top_n_layers: 40\n"
    with pytest.raises(UserError) as exc:
        load_config(_write(tmp_path, text))
    rendered = _problems(exc)
    assert "longer than the model's context (8192)" in rendered
    assert "the model has 30 layers" in rendered


def test_overrides_apply_and_errors_point_at_the_flag(tmp_path):
    path = _write(tmp_path, MINIMAL)
    loaded = load_config(path, ["train.learning_rate=1e-4", "lora.target_modules=[q_proj, v_proj]",
                                "data.train.0.max_samples=5"])
    assert loaded.config.train.learning_rate == 1e-4
    assert loaded.config.lora.target_modules == ["q_proj", "v_proj"]
    assert loaded.config.data.train[0].max_samples == 5
    with pytest.raises(UserError) as exc:
        load_config(path, ["train.learning_rate=fast"])
    assert "--set train.learning_rate=fast" in _problems(exc)
    with pytest.raises(UserError) as exc:
        load_config(path, ["train.lr"])
    assert "has no '='" in exc.value.title


def test_dump_and_reload_round_trips(tmp_path):
    loaded = load_config(_write(tmp_path, MINIMAL))
    again = RunConfig.model_validate(yaml.safe_load(dump_config(loaded.config)))
    assert again == loaded.config


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    try:
        loaded = load_config(path)
    except UserError as exc:  # a config that continues another run needs that run first; nothing else may fail
        assert "model.adapter" in exc.render() and "is not a folder" in exc.render(), exc.render()
        loaded = load_config(path, ["model.adapter=null"])
    assert loaded.config.data.train


def test_cli_validate_exit_codes(tmp_path, capsys):
    good = _write(tmp_path, MINIMAL)
    assert cli.main(["validate", str(good)]) == 0
    assert "config OK" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(MINIMAL.replace("data:", "dta:"))
    assert cli.main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'data'?" in err and "Traceback" not in err
    assert cli.main(["validate", str(tmp_path / "missing.yaml")]) == 2
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train"])
    assert exit_info.value.code == 2


def test_settings_resolve_by_device(tmp_path):
    from lora_ft.config.resolution import resolve

    loaded = load_config(_write(tmp_path, MINIMAL))
    cpu = resolve(loaded, has_cuda=False)
    assert (cpu.device, cpu.config.model.quantization, cpu.config.model.dtype) == ("cpu", "none", "float32")
    assert cpu.config.model.gradient_checkpointing is False
    assert cpu.config.train.optimizer == "adamw_torch"
    assert cpu.config.output_dir == str(Path.cwd() / "runs" / "run") and cpu.config.tracking.run_name == "run"
    assert any("float32" in note for note in cpu.notes)
    forced = load_config(_write(tmp_path, MINIMAL), ["train.device=cuda"])
    with pytest.raises(UserError, match="no CUDA GPU"):
        resolve(forced, has_cuda=False)


def test_settings_resolve_for_a_cuda_machine_without_one(tmp_path):
    from lora_ft.config.resolution import resolve

    resolved = resolve(load_config(_write(tmp_path, MINIMAL)), has_cuda=True)
    cfg = resolved.config
    assert resolved.device == "cuda"
    assert (cfg.model.quantization, cfg.model.dtype) == ("nf4", "bfloat16")
    assert cfg.model.gradient_checkpointing is True and cfg.train.optimizer == "adamw_torch_fused"
    assert not any("CPU" in note for note in resolved.notes)


def test_fused_kernels_are_used_only_where_they_run(tmp_path, monkeypatch):
    import importlib.util

    from lora_ft.config.resolution import resolve

    loaded = load_config(_write(tmp_path, MINIMAL))
    assert resolve(loaded, has_cuda=False).config.train.fused_kernels is False
    real_find_spec = importlib.util.find_spec
    for installed in (False, True):
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a: (object() if installed else None) if name == "liger_kernel"
                            else real_find_spec(name, *a))
        assert resolve(loaded, has_cuda=True).config.train.fused_kernels is installed
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        resolve(load_config(_write(tmp_path, MINIMAL), ["train.fused_kernels=true"]), has_cuda=False)
    monkeypatch.setattr(importlib.util, "find_spec", real_find_spec)
    with pytest.raises(UserError, match="needs liger-kernel"):
        resolve(load_config(_write(tmp_path, MINIMAL), ["train.fused_kernels=true"]), has_cuda=True)


def test_flash_attention_only_on_a_gpu_where_installed(tmp_path, monkeypatch):
    import importlib.util

    from lora_ft.config.resolution import resolve

    loaded = load_config(_write(tmp_path, MINIMAL))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "flash_attn" else real_find_spec(name, *a))
    assert resolve(loaded, has_cuda=True).config.model.attn_implementation == "flash_attention_2"
    assert resolve(loaded, has_cuda=False).config.model.attn_implementation == "sdpa"
    monkeypatch.setattr(importlib.util, "find_spec", real_find_spec)
    assert resolve(loaded, has_cuda=True).config.model.attn_implementation == "sdpa"  # not installed here
