"""Finished runs to serving: merge parity, adapter exports, generation that stops, evaluation, bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lora_ft import cli
from lora_ft.config import load_config
from lora_ft.errors import UserError
from lora_ft.rundir.finished import open_run

from .conftest import build_llama, build_tokenizer, legal_rows, write_config, write_jsonl


def _train(tmp_path: Path, model_dir: Path, name: str, overrides: list[str], rows: list[dict] | None = None) -> Path:
    from lora_ft.commands import train as pipeline

    data_dir = tmp_path / f"data-{name}"
    data_dir.mkdir()
    write_jsonl(data_dir / "train.jsonl", rows or legal_rows(12))
    write_jsonl(data_dir / "eval.jsonl", legal_rows(4, offset=100))
    config = write_config(tmp_path / f"{name}.yaml", model_dir, data_dir, output_dir=tmp_path / name)
    pipeline.train(load_config(config, overrides))
    return tmp_path / name


@pytest.fixture(scope="module")
def lora_run(tiny_llama, tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("lora-run"), tiny_llama, "run", ["train.max_steps=4"])


@pytest.fixture(scope="module")
def qlora_run(tiny_llama, tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("qlora-run"), tiny_llama, "run",
                  ["train.max_steps=4", "model.quantization=nf4"])


def test_float32_merge_matches_base_plus_adapter(lora_run, tmp_path):
    from lora_ft.exports.merging import merge_run

    out = tmp_path / "merged"
    report = merge_run(open_run(lora_run), out, dtype="float32")
    # the product's bound is 1e-3 (within_tolerance); a float32 merge measured 3.6e-7 on this model
    assert report.within_tolerance and report.max_abs_logit_diff <= 1e-5
    assert report.greedy_answers_match == report.prompts
    for name in ("model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja",
                 "generation_config.json", "parity.json"):
        assert (out / name).is_file(), name
    generation = json.loads((out / "generation_config.json").read_text())
    tokenizer = json.loads((out / "tokenizer.json").read_text())
    eot = next(t["id"] for t in tokenizer["added_tokens"] if t["content"] == "<|im_end|>")
    eos = generation["eos_token_id"]
    assert eot in (eos if isinstance(eos, list) else [eos]), "generation stops at the template's end of turn"
    assert not list(tmp_path.glob(".merged.partial-*")), "no staging folder left behind"


def test_sixteen_bit_merge_reports_kl(lora_run, tmp_path):
    from lora_ft.exports.merging import merge_run

    report = merge_run(open_run(lora_run), tmp_path / "bf16", dtype="bfloat16")
    # the product's bound is a mean KL of 1e-2 (within_tolerance); a bfloat16 merge measured 1.7e-7 here
    assert report.merged_dtype == "bfloat16" and report.mean_kl < 1e-5 and report.within_tolerance
    assert "mean KL" in report.tolerance


def test_qlora_merge_into_original_and_dequantized_weights(qlora_run, tmp_path):
    from lora_ft.exports.merging import merge_run

    run = open_run(qlora_run)
    original = merge_run(run, tmp_path / "original", dtype="float32")
    dequantized = merge_run(run, tmp_path / "dequantized", dtype="float32", into="dequantized")
    assert original.merged_into == "original 16-bit weights"
    assert dequantized.merged_into == "dequantized NF4 weights"
    assert "NF4 base + adapter" in original.reference
    assert original.within_tolerance is None and "no fixed bound" in original.tolerance  # reported, not judged
    assert dequantized.within_tolerance is True
    # merging into the weights the adapter was trained against reproduces the trained model more closely
    assert dequantized.mean_kl <= original.mean_kl
    # The reference runs through bitsandbytes' inference kernel; on CPUs with AVX-512 bf16 that kernel keeps the
    # NF4 block scales in bfloat16 (8 bits of mantissa), so a few 1e-3 of logit remain there; elsewhere < 1e-3.
    assert dequantized.max_abs_logit_diff < 1e-2
    assert json.loads((tmp_path / "original" / "parity.json").read_text())["mean_kl"] == original.mean_kl


def test_merge_into_dequantized_is_refused_for_a_float_run(lora_run, tmp_path):
    from lora_ft.exports.merging import merge_run

    with pytest.raises(UserError, match="for QLoRA"):
        merge_run(open_run(lora_run), tmp_path / "x", into="dequantized")


def test_merged_export_loads_in_transformers_without_peft(lora_run, tmp_path, capsys):
    out = tmp_path / "merged-export"
    assert cli.main(["export", str(lora_run), "--format", "merged", "--dtype", "float32", "--out", str(out)]) == 0
    check = json.loads((out / "export_check.json").read_text())
    assert check["loader"] == "transformers without peft"
    assert check["same_greedy_answer_as_base_plus_adapter"] is True
    assert check["parity_within_tolerance"] is True
    assert "export check (transformers without peft): passed" in capsys.readouterr().out


def test_peft_export_passes_lora_fts_own_vllm_rules(lora_run, tmp_path):
    # lora-ft's reading of what vLLM accepts; vLLM itself loads the export in the engine tier (tests/engines)
    from lora_ft.exports.targets.peft import vllm_problems

    out = tmp_path / "peft"
    assert cli.main(["export", str(lora_run), "--format", "peft", "--out", str(out)]) == 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["bias"] == "none"
    assert not config.get("modules_to_save") and not config["use_dora"]
    assert Path(config["base_model_name_or_path"]).is_dir()
    assert (out / "adapter_model.safetensors").is_file() and not list(out.glob("*.bin"))
    assert vllm_problems(out) == []
    readme = (out / "README.md").read_text()
    assert "--enable-lora" in readme and "--lora-modules" in readme and "--max-lora-rank 8" in readme
    assert json.loads((out / "export_check.json").read_text())["passed"] is True


def test_vllm_check_names_unsupported_settings(lora_run, tmp_path):
    from lora_ft.exports.targets.peft import vllm_problems

    adapter = tmp_path / "adapter"
    shutil.copytree(open_run(lora_run).adapter_dir, adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config.update(use_dora=True, modules_to_save=["lm_head"], bias="all", r=1024)
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    text = " ".join(p.render() for p in vllm_problems(adapter))
    for expected in ("DoRA", "modules_to_save", "bias", "rank 1024"):
        assert expected in text


def test_generation_stops_at_end_of_turn_after_a_short_overfit(tmp_path):
    from lora_ft import inference

    model_dir = tmp_path / "model"  # a tiny model with larger initial weights, so LoRA alone can memorise an answer
    model_dir.mkdir()
    build_llama(model_dir, len(build_tokenizer(model_dir)), layers=2, init_range=0.5)
    answer = "Consideration is value exchanged."
    rows = [{"instruction": "What is consideration?", "input": "", "output": answer}] * 8
    run_dir = _train(tmp_path, model_dir, "overfit", ["train.max_steps=60", "train.learning_rate=0.01",
                                                      "train.lr_scheduler=constant", "lora.r=8", "lora.alpha=16"],
                     rows=rows)
    run = open_run(run_dir)
    model = inference.load_tuned(run)
    tokenizer = inference.load_tokenizer(run)
    text, stopped = inference.generate(model, tokenizer, run, [{"role": "user", "content": "What is consideration?"}],
                                       max_new_tokens=60)
    assert stopped, f"generation ran to max_new_tokens: {text!r}"
    assert text == answer


def test_eval_reports_base_and_tuned(lora_run, tmp_path, capsys):
    assert cli.main(["eval", str(lora_run), "--samples", "1", "--no-general", "--max-new-tokens", "16",
                     "--out", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    manifest = json.loads((lora_run / "manifest.json").read_text())
    assert report["tuned_loss"] < report["base_loss"]
    assert report["tuned_loss"] == pytest.approx(manifest["metrics"]["eval_loss_after"], rel=1e-3)
    assert len(report["examples"]) == 1 and report["examples"][0]["reference"]
    assert "| loss |" in (tmp_path / "eval" / "report.md").read_text()
    assert "perplexity" in capsys.readouterr().out


def test_generate_from_a_prompts_file(lora_run, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("What is a tort?\nDefine estoppel.\n")
    assert cli.main(["generate", str(lora_run), "--prompts", str(prompts), "--max-new-tokens", "5"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [line["prompt"] for line in lines] == ["What is a tort?", "Define estoppel."]
    # a file's greedy answers are generated in a batch: each is the answer the prompt gets alone
    for line in lines:
        assert cli.main(["generate", str(lora_run), "--prompt", line["prompt"], "--max-new-tokens", "5"]) == 0
        assert capsys.readouterr().out.rstrip("\n").split("\n")[-1] == line["answer"]


def test_bad_inputs_give_clear_errors_and_write_nothing(lora_run, tmp_path, capsys):
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    assert cli.main(["merge", str(not_a_run)]) == 2
    assert "is not a finished lora-ft run" in capsys.readouterr().err

    moved = tmp_path / "moved-run"
    shutil.copytree(lora_run, moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["base_model"]["path"] = str(tmp_path / "gone-model")
    (moved / "manifest.json").write_text(json.dumps(manifest))
    assert cli.main(["export", str(moved), "--format", "peft", "--out", str(tmp_path / "o1")]) == 2
    err = capsys.readouterr().err
    assert "the run's base model is missing" in err and "--base" in err
    assert not (tmp_path / "o1").exists()

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("user data")
    assert cli.main(["merge", str(lora_run), "--out", str(occupied)]) == 2
    assert (occupied / "keep.txt").read_text() == "user data"

    blocker = tmp_path / "a-file"  # a path under a regular file cannot be created, even by root
    blocker.write_text("")
    assert cli.main(["export", str(lora_run), "--format", "peft", "--out", str(blocker / "out")]) == 2
    assert "cannot write to" in capsys.readouterr().err
    assert blocker.read_text() == ""


def test_chat_streams_the_greedy_answers_and_handles_commands(tmp_path, monkeypatch, capsys):
    # weights drawn wider than tiny_llama's, and one small step: greedy answers that depend on the whole
    # conversation (tiny_llama's narrow tied weights echo the prompt's last token, a newline, so every answer
    # would strip to the same empty string)
    model_dir = tmp_path / "model"
    build_llama(model_dir, len(build_tokenizer(model_dir)), init_range=0.2)
    run_dir = _train(tmp_path, model_dir, "gentle", ["train.max_steps=1", "train.learning_rate=1e-5"])
    questions = ("What is a tort?", "Define estoppel.")
    typed = iter(["/system Be brief.", questions[0], "/reset", questions[1], "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(typed))
    assert cli.main(["chat", str(run_dir), "--max-new-tokens", "6", "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    assert out.count("model> ") == 2
    assert "(system message set; conversation cleared)" in out and "(conversation cleared)" in out
    # each answer is the tuned model's greedy answer to that conversation: /system applied, /reset forgotten
    from lora_ft import inference

    run = open_run(run_dir)
    model, tokenizer = inference.load_tuned(run, None), inference.load_tokenizer(run)
    expected = [inference.generate(model, tokenizer, run, [{"role": "system", "content": "Be brief."},
                                                           {"role": "user", "content": question}], 6, 0.0)[0]
                for question in questions]
    answers = [line.split("model> ", 1)[1].strip() for line in out.splitlines() if "model> " in line]
    assert all(expected) and answers == expected
    unprompted = inference.generate(model, tokenizer, run, [{"role": "user", "content": questions[0]}], 6, 0.0)[0]
    assert unprompted != expected[0], "the answers depend on the system message, so the check above has teeth"


def test_an_export_killed_mid_write_is_cleaned_by_the_next_one(lora_run, tmp_path, capsys):
    """kill -9 while an export is written leaves its staging folder; the next export of the same target removes
    it, and never one whose writer is still alive. Exports are readable by other users (not mkdtemp's 0700)."""
    import os
    import shutil
    import signal
    import subprocess
    import sys

    run = tmp_path / "run"
    shutil.copytree(lora_run, run)
    repo = Path(__file__).resolve().parent.parent
    write_then_die = (
        f"import os, signal, sys; sys.path.insert(0, {str(repo)!r})\n"
        "from lora_ft.files import staged_directory\n"
        f"with staged_directory({str(run / 'export-peft')!r}) as staging:\n"
        "    (staging / 'model.safetensors').write_bytes(b'w' * 100000)\n"
        "    print('writing', flush=True)\n"
        "    {}\n")
    alive = subprocess.Popen([sys.executable, "-c", write_then_die.format("import time; time.sleep(600)")],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert alive.stdout.readline().strip() == "writing"
        in_progress = list(run.glob(".export-peft.partial-*"))
        killed = subprocess.run([sys.executable, "-c", write_then_die.format("os.kill(os.getpid(), signal.SIGKILL)")],
                                capture_output=True, text=True, timeout=60)
        assert killed.returncode == -signal.SIGKILL
        abandoned = [p for p in run.glob(".export-peft.partial-*") if p not in in_progress]
        assert len(abandoned) == 1 and (abandoned[0] / "model.safetensors").is_file()
        old_umask = os.umask(0o022)
        try:
            assert cli.main(["export", str(run), "--format", "peft"]) == 0
        finally:
            os.umask(old_umask)
        out = capsys.readouterr().out
        assert f"removed {abandoned[0].name}, left by an earlier write of export-peft that was cut short" in out
        assert not abandoned[0].exists()
        assert len(in_progress) == 1 and in_progress[0].exists(), "a live writer's folder is kept"
    finally:
        alive.kill()
        alive.wait()
    assert (run / "export-peft" / "adapter_model.safetensors").is_file()
    assert (run / "export-peft").stat().st_mode & 0o777 == 0o755
    assert not (run / "export-peft" / ".lora-ft-partial.lock").exists()


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def _private(folder: Path) -> list[str]:
    """Files and folders under ``folder`` whose permissions are not what the umask gives."""
    mask = _umask()
    return [str(p.relative_to(folder)) for p in [folder, *folder.rglob("*")]
            if p.stat().st_mode & 0o777 != (0o777 if p.is_dir() else 0o666) & ~mask]


def _end_of_turn_id(folder: Path) -> int:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder).convert_tokens_to_ids("<|im_end|>")


def _eos_ids(folder: Path) -> list[int]:
    ids = json.loads((folder / "generation_config.json").read_text())["eos_token_id"]
    return ids if isinstance(ids, list) else [ids]


def test_every_artifact_names_the_end_of_turn_token_as_where_answers_stop(lora_run, tmp_path):
    adapter = lora_run / "adapter"
    end_of_turn = _end_of_turn_id(adapter)
    assert _eos_ids(adapter)[0] == end_of_turn  # the adapter folder
    card = (adapter / "README.md").read_text()
    assert "answers end with `<|im_end|>`" in card and "generation_config.json" in card
    merged = tmp_path / "merged"
    assert cli.main(["merge", str(lora_run), "--out", str(merged)]) == 0
    assert _eos_ids(merged)[0] == end_of_turn  # the merged model
    parity = json.loads((merged / "parity.json").read_text())
    assert parity["merged_dtype"] == "float32"  # the default: answers like base + adapter
    assert parity["stops_match"] == parity["prompts"] and all("merged_stopped" in a for a in parity["answers"])
    # GGUF files: llama.cpp ends answers at it in every exported file (tests/engines/test_families_gguf.py), and
    # the file names it where the converter did not (tests/test_gguf_export.py)


def test_exports_merges_and_adapters_get_the_permissions_of_the_users_umask(lora_run, tmp_path):
    assert not _private(lora_run / "adapter")  # safetensors alone would write adapter_model.safetensors as 0600
    for target in ("peft", "merged"):
        out = tmp_path / target
        assert cli.main(["export", str(lora_run), "--format", target, "--out", str(out)]) == 0
        assert not _private(out), (target, _private(out))
