"""Bad input from an outside probe: every case is a one-screen error with exit 2 (or a dropped, named row), never a
traceback, and never a silently wrong run."""

from __future__ import annotations

import json
import tracemalloc
import shutil
from pathlib import Path

import pytest

from lora_ft import cli
from lora_ft.config import load_config
from lora_ft.errors import UserError

from .conftest import legal_rows, run_cli, write_config, write_jsonl

SURROGATE_ROW = '{"instruction": "bad \\ud800 here", "input": "", "output": "An answer."}'
DEEP_ROW = "[" * 100_000 + "]" * 100_000


@pytest.fixture(scope="module")
def finished_run(tiny_llama, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad-input")
    data_dir = root / "data"
    data_dir.mkdir()
    write_jsonl(data_dir / "train.jsonl", legal_rows(12))
    write_jsonl(data_dir / "eval.jsonl", legal_rows(4, offset=100))
    config = write_config(root / "run.yaml", tiny_llama, data_dir, output_dir=root / "run")
    assert cli.main(["train", str(config), "--set", "train.max_steps=2"]) == 0
    return root / "run"


def _exit_and_error(capsys, argv: list[str]) -> tuple[int, str]:
    code, _out, err = run_cli(capsys, argv)
    return code, err


def _bad_rows_file(path: Path) -> Path:
    lines = [json.dumps(r) for r in legal_rows(10)]
    lines[3:3] = [SURROGATE_ROW, DEEP_ROW]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_lone_surrogate_or_a_row_nested_100k_deep_is_dropped_and_named(tiny_llama, legal_data, tmp_path, capsys):
    bad = _bad_rows_file(legal_data / "bad.jsonl")
    config = write_config(tmp_path / "run.yaml", tiny_llama, legal_data, train_file="bad.jsonl")
    code, _ = _exit_and_error(capsys, ["data", str(config), "--set", "data.max_dropped_fraction=0.5"])
    assert code == 0
    from lora_ft import data

    samples, report = data.read_dataset(load_config(config).config.data.train[0], load_config(config),
                                        system_prompt=None)
    assert report.rows_read == 12 and report.kept == 10
    drops = {reason: where for reason, where in report.dropped.items()}
    assert any("lone UTF-16 surrogate" in r and w[0].endswith("bad.jsonl:4") for r, w in drops.items())
    assert any("nested too deeply" in r and w[0].endswith("bad.jsonl:5") for r, w in drops.items())
    del bad
    # training on it drops the same rows and trains
    assert cli.main(["train", str(config), "--set", "data.max_dropped_fraction=0.5",
                     "--set", "train.max_steps=1"]) == 0


def test_eval_data_with_bad_rows_is_reported_not_a_traceback(finished_run, tmp_path, capsys):
    bad = _bad_rows_file(tmp_path / "bad.jsonl")
    capsys.readouterr()
    assert cli.main(["eval", str(finished_run), "--data", str(bad), "--samples", "0", "--no-general",
                     "--max-answers", "0", "--out", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    assert "12 rows read, 10 kept, 2 dropped" in out and "lone UTF-16 surrogate" in out and "bad.jsonl:4" in out
    assert json.loads((tmp_path / "report" / "report.json").read_text())["domain"]["samples"] == 10


def test_non_utf8_data_is_named_by_line(tiny_llama, legal_data, tmp_path, capsys):
    lines = [json.dumps(r).encode() for r in legal_rows(5)]
    lines.insert(3, b'{"instruction": "caf\xe9", "input": "", "output": "x"}')
    (legal_data / "latin1.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    config = write_config(tmp_path / "run.yaml", tiny_llama, legal_data, train_file="latin1.jsonl")
    code, err = _exit_and_error(capsys, ["data", str(config)])
    assert code == 2 and "latin1.jsonl:4: " in err and "byte 0xe9 at line 4" in err and "UTF-8" in err


@pytest.mark.parametrize("damage", ["truncated weights", "bad config json", "config without keys",
                                    "truncated tokenizer"])
def test_a_damaged_adapter_is_refused_by_every_command_that_loads_it(finished_run, tmp_path, capsys, damage):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    adapter = run / "adapter"
    if damage == "truncated weights":
        weights = adapter / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-1000])
        expected = "adapter_model.safetensors is damaged"
    elif damage == "bad config json":
        (adapter / "adapter_config.json").write_text('{"peft_type": "LORA", "r": ')
        expected = "adapter_config.json is not readable JSON"
    elif damage == "config without keys":
        (adapter / "adapter_config.json").write_text('{"r": 4}')
        expected = "lacks peft_type, target_modules"
    else:
        tokenizer = adapter / "tokenizer.json"
        tokenizer.write_text(tokenizer.read_text()[:500])
        expected = "the tokenizer saved with the adapter"
    for argv in (["eval", str(run)], ["generate", str(run), "--prompt", "hi"], ["chat", str(run)],
                 ["merge", str(run)], ["export", str(run), "--format", "peft"]):
        code, err = _exit_and_error(capsys, argv)
        assert code == 2 and expected in err and "fix:" in err, argv


@pytest.mark.parametrize("argv, message", [
    (["generate", "RUN", "--prompt", "hi", "--max-new-tokens", "-5"], "-5 is not a whole number of at least 1"),
    (["generate", "RUN", "--prompt", "hi", "--max-new-tokens", "0"], "0 is not a whole number of at least 1"),
    (["chat", "RUN", "--temperature", "-1"], "-1 is not a number of 0 or more"),
    (["eval", "RUN", "--samples", "-3"], "-3 is not a whole number of 0 or more"),
])
def test_impossible_flag_values_are_usage_errors(finished_run, capsys, argv, message):
    argv = [str(finished_run) if a == "RUN" else a for a in argv]
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_a_non_utf8_prompts_file_is_named_by_line(finished_run, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"What is a tort?\nWhat is caf\xe9 law?\n")
    code, err = _exit_and_error(capsys, ["generate", str(finished_run), "--prompts", str(prompts)])
    assert code == 2 and f"{prompts}:2" in err and "not UTF-8" in err


def test_eval_never_writes_over_an_earlier_report(finished_run, tmp_path, capsys):
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.md").write_text("my notes")
    code, err = _exit_and_error(capsys, ["eval", str(finished_run), "--out", str(out), "--samples", "0"])
    assert code == 2 and "already holds an evaluation report (report.md)" in err and "--out" in err
    assert (out / "report.md").read_text() == "my notes" and not (out / "report.json").exists()


def test_a_billion_laughs_config_fails_before_it_expands(tmp_path, capsys):
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    previous = "a"
    for name in "bcdefghi":
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
        previous = name
    lines.append("model:\n  base: *i")
    config = tmp_path / "laughs.yaml"
    config.write_text("\n".join(lines) + "\n")
    assert config.stat().st_size < 2048
    tracemalloc.start()
    try:
        code, err = _exit_and_error(capsys, ["validate", str(config)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 2 and "expands to more than 100,000 values" in err and f"{config}:" in err
    # expanded, the 9**9 values would take gigabytes; stopped at 100,000 visits it took 26 MB measured in a fresh
    # process, most of it the imports the command makes
    assert peak < 200 * 2**20, f"{peak / 2**20:.0f} MB allocated: the aliases were expanded"


@pytest.mark.parametrize("override, message", [
    ("train.max_steps=true", "'train.max_steps' = true: a number is expected, not true"),
    ("lora.r=false", "'lora.r' = false: a number is expected, not false"),
    ("train.learning_rate=true", "a number is expected, not true"),
])
def test_booleans_are_not_numbers(tiny_llama, legal_data, tmp_path, override, message):
    with pytest.raises(UserError) as exc:
        load_config(write_config(tmp_path / "run.yaml", tiny_llama, legal_data), [override])
    assert message in exc.value.render()


def test_eval_steps_without_eval_data_is_an_error(tiny_llama, legal_data, tmp_path):
    config = write_config(tmp_path / "run.yaml", tiny_llama, legal_data, eval_file=None)
    with pytest.raises(UserError) as exc:
        load_config(config, ["train.eval_steps=5", "data.eval_fraction=0"])
    assert "train.eval_steps is set but there is no eval data" in exc.value.render()
    load_config(config, ["train.eval_steps=5"])  # a held-out fraction is eval data


def test_a_mistyped_data_path_is_missing_not_a_hub_dataset(tiny_llama, legal_data, tmp_path):
    config = write_config(tmp_path / "run.yaml", tiny_llama, legal_data)
    for path, hint in ((f"{legal_data.name}/trian.jsonl", "did you mean"),
                       ("exmaples/train.jsonl", "looked for")):
        with pytest.raises(UserError) as exc:
            load_config(config, [f"data.train.0.path={path}"])
        assert f"data file not found: {path}" in exc.value.render() and hint in exc.value.render()
    assert "did you mean" in _render_for(config, f"{legal_data.name}/trian.jsonl")
    from lora_ft.config import looks_like_hub_id

    assert looks_like_hub_id("tatsu-lab/alpaca") and not looks_like_hub_id("examples/train.jsonl")


def _render_for(config: Path, path: str) -> str:
    with pytest.raises(UserError) as exc:
        load_config(config, [f"data.train.0.path={path}"])
    return exc.value.render()


@pytest.mark.parametrize("given, suggested", [("/", "runs/my-run"), ("runs/x/", "runs/x-2")])
def test_suggested_new_directories_are_real_names(given, suggested):
    from lora_ft.rundir.lock import suggest_new_dir

    assert suggest_new_dir(given) == suggested
    here = suggest_new_dir(".")
    assert here.endswith(f"{Path.cwd().name}-2") and here != ".-2"


def test_a_bad_gguf_type_is_refused_before_the_merge(finished_run, tmp_path, capsys):
    code, err = _exit_and_error(capsys, ["export", str(finished_run), "--format", "gguf", "--gguf-types", "bogus",
                                         "--out", str(tmp_path / "gguf")])
    assert code == 2 and "unknown GGUF type 'bogus'" in err
    assert "merging" not in capsys.readouterr().out and not (tmp_path / "gguf").exists()


def test_vllm_check_reads_full_module_names_by_their_last_part(tmp_path):
    """PEFT writes full module names (model.layers.0.self_attn.q_proj) for models with few layers."""
    from safetensors.torch import save_file
    import torch

    from lora_ft.exports.targets.peft import vllm_problems

    (tmp_path / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 8, "bias": "none",
        "target_modules": ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"]}))
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(8, 64)},
              str(tmp_path / "adapter_model.safetensors"))
    assert vllm_problems(tmp_path) == []
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    config["target_modules"].append("model.layers.0.router")
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    assert "['router'] are not LoRA layers vLLM knows" in vllm_problems(tmp_path)[0].what


def test_a_data_report_never_writes_over_the_users_files(tiny_llama, legal_data, tmp_path, capsys):
    config = write_config(tmp_path / "run.yaml", tiny_llama, legal_data)
    train = legal_data / "train.jsonl"
    before = train.read_bytes()
    for flag in ("--json", "--plot"):
        code, err = _exit_and_error(capsys, ["data", str(config), flag, str(train)])
        assert code == 2 and "is not an earlier `lora-ft data` report" in err, flag
    assert train.read_bytes() == before
    report = tmp_path / "report.json"
    assert cli.main(["data", str(config), "--json", str(report)]) == 0
    assert cli.main(["data", str(config), "--json", str(report)]) == 0, "an earlier report is replaced"
