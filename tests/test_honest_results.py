"""Honest results, from an adversarial probe: a mistyped LoRA module name stops the run; the eval verdict says
"better" only when the figures support it beyond noise; a damaged starting adapter, an empty prompts file and an
over-long prompt are clear messages; every fix names something the user of that command can change."""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import pytest

from lora_ft import cli
from lora_ft.errors import UserError
from tests.conftest import legal_rows, preference_rows, run_cli, write_config, write_jsonl

LONG_PROMPT = " ".join(f"clause {i} of the lease says the tenant shall pay rent on the first day" for i in range(80))


@pytest.fixture(scope="module")
def trained_run(tiny_llama, tmp_path_factory) -> Path:
    """A run trained long enough on repeated data that it clearly answers like its references."""
    root = tmp_path_factory.mktemp("honest")
    data_dir = root / "data"
    data_dir.mkdir()
    write_jsonl(data_dir / "train.jsonl", legal_rows(16))
    write_jsonl(data_dir / "eval.jsonl", legal_rows(12, offset=100))
    config = write_config(root / "run.yaml", tiny_llama, data_dir, output_dir=root / "run")
    assert cli.main(["train", str(config), "--set", "train.max_steps=30"]) == 0
    return root / "run"


# --- 1. lora.target_modules and lora.modules_to_save name modules the model has ---------------------------------

LLAMA_LINEAR = "down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj"


@pytest.mark.parametrize("targets", ["[q_proj, qproj_typo]", "[qproj_typo]"])
def test_a_mistyped_target_module_stops_training_naming_it_the_closest_names_and_the_fix(
        tiny_llama, legal_data, tmp_path, capsys, targets):
    config = write_config(tmp_path / "run.yaml", tiny_llama, legal_data)
    code, _, err = run_cli(capsys, ["train", str(config), "--set", f"lora.target_modules={targets}"])
    assert code == 2
    assert "qproj_typo" in err and "matches no module of the model" in err
    assert "did you mean q_proj" in err  # the closest module names (difflib)
    assert "lora.target_modules" in err and LLAMA_LINEAR in err  # the key to fix and the model's linear modules
    assert not (tmp_path / "run" / "adapter").exists()


def _tiny_model(tiny_llama):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama)


def test_a_mistyped_modules_to_save_is_refused_and_real_names_are_taken(tiny_llama):
    from lora_ft.config import LoraSection
    from lora_ft.model.loading import attach_lora

    with pytest.raises(UserError) as info:
        attach_lora(_tiny_model(tiny_llama), LoraSection(r=4, alpha=8, modules_to_save=["lm_haed"]))
    text = info.value.render()
    assert "lm_haed" in text and "lora.modules_to_save" in text and "did you mean lm_head" in text
    # full module names and short ones that exist are accepted
    model = attach_lora(_tiny_model(tiny_llama), LoraSection(
        r=4, alpha=8, target_modules=["q_proj", "model.layers.0.self_attn.v_proj"], modules_to_save=["lm_head"]))
    targeted = model.base_model.targeted_module_names
    assert "model.layers.0.self_attn.v_proj" in targeted and "model.layers.2.self_attn.q_proj" in targeted


def test_a_target_module_outside_the_top_n_layers_is_an_error_not_silently_untrained(tiny_llama):
    from lora_ft.config import LoraSection
    from lora_ft.model.loading import attach_lora

    # embed_tokens is no layer's: PEFT gives it no LoRA when layers are selected, and says nothing
    section = LoraSection(r=4, alpha=8, target_modules=["q_proj", "embed_tokens"], top_n_layers=1)
    with pytest.raises(UserError) as info:
        attach_lora(_tiny_model(tiny_llama), section)
    text = info.value.render()
    assert "embed_tokens" in text and "lora.top_n_layers" in text and "lora.target_modules" in text
    # top_n_layers with all-linear builds the list itself: every name in it is real and in the top layers
    model = attach_lora(_tiny_model(tiny_llama), LoraSection(r=4, alpha=8, top_n_layers=1))
    assert all(".layers.2." in name for name in model.base_model.targeted_module_names)


# --- 2. the verdict follows the figures: a paired bootstrap says what is beyond noise ---------------------------

def test_a_tiny_noisy_difference_is_within_noise_and_a_consistent_one_is_better():
    from lora_ft.evaluation.stats import paired_mean, paired_ratio

    base = [40.0 + 7 * (i % 5) for i in range(40)]
    noisy = [b + (0.4 if i % 2 else -0.35) for i, b in enumerate(base)]  # +0.025 on average, either way per answer
    within = paired_mean(base, noisy)
    assert within.low < 0 < within.high and within.n == 40
    assert within.judgement(higher_is_better=True) == "within noise"
    consistent = [b + 2.0 + 0.5 * (i % 3) for i, b in enumerate(base)]
    assert paired_mean(base, consistent).judgement(higher_is_better=True) == "better"
    assert paired_mean(consistent, base).judgement(higher_is_better=True) == "worse"
    same = paired_mean(base, list(base))
    assert (same.change, same.low, same.high) == (0.0, 0.0, 0.0) and same.judgement(True) == "no difference"
    # too few pairs: even all moving one way is no verdict
    assert paired_mean(base[:4], consistent[:4]).judgement(True) == "too few to tell"
    # the loss: summed per-sample losses over their token counts; lower is better
    tokens = [10 + i % 4 for i in range(40)]
    nll = [2.0 * t for t in tokens]
    lower = paired_ratio(nll, [v * 0.9 for v in nll], tokens)
    assert lower.change == pytest.approx(-0.2) and lower.high < 0
    assert lower.judgement(higher_is_better=False) == "better"
    # a fixed seed: the same figures give the same interval
    assert paired_mean(base, noisy) == within


def test_the_probes_case_identical_answers_and_a_loss_moved_by_noise_is_not_called_better():
    from lora_ft.evaluation.report import EvalReport, SetResult
    from lora_ft.evaluation.stats import paired_mean, paired_ratio

    tokens = [12] * 30
    base_nll = [12 * (2.0 + 0.1 * (i % 5)) for i in range(30)]
    tuned_nll = [v + (0.9 if i % 2 else -1.0) for i, v in enumerate(base_nll)]  # mean loss moves by -0.002
    rouge = [20.0 + i for i in range(30)]
    loss = paired_ratio(base_nll, tuned_nll, tokens)
    assert loss.change == pytest.approx(-0.0042, abs=1e-3)
    domain = SetResult(name="domain", source="eval.jsonl", samples=30, scored_tokens=360,
                       base_loss=sum(base_nll) / 360, tuned_loss=sum(tuned_nll) / 360, prompts=30,
                       differences={"loss": loss, "rouge_l": paired_mean(rouge, list(rouge))})
    report = EvalReport(run_dir="run", domain=domain)
    verdict = report.verdict()
    assert "beats" not in verdict and "better" not in verdict
    assert "no clear difference" in verdict and "within noise" in verdict
    assert "n=30" in verdict and "95%" in verdict
    table = report.table()
    assert "95% interval" in table and "n=30" in table


@pytest.fixture(scope="module")
def identical_run(trained_run, tmp_path_factory) -> Path:
    """The trained run with its LoRA B matrices zeroed: the tuned model is the base model."""
    from safetensors.torch import load_file, save_file

    run = tmp_path_factory.mktemp("identical") / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("eval"))
    weights = run / "adapter" / "adapter_model.safetensors"
    tensors = {k: (v * 0 if "lora_B" in k else v) for k, v in load_file(weights).items()}
    save_file(tensors, weights)
    return run


def test_a_model_evaluated_against_itself_gives_no_difference(identical_run, tmp_path, capsys):
    out = tmp_path / "eval"
    code, printed, _ = run_cli(capsys, ["eval", str(identical_run), "--no-general", "--max-new-tokens", "8",
                                                "--out", str(out)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    verdict = report["verdict"]
    assert "beats" not in verdict and "better" not in verdict and "worse" not in verdict
    assert verdict.startswith("no difference between the tuned and the base model on the domain")
    loss = report["domain"]["differences"]["loss"]
    assert loss["change"] == loss["low"] == loss["high"] == 0.0 and loss["judgement"] == "no difference"
    assert f"verdict: {verdict}" in printed


def test_a_clearly_trained_adapter_is_better_with_each_interval_in_the_report(trained_run, tmp_path, capsys):
    out = tmp_path / "eval"
    code, printed, _ = run_cli(capsys, ["eval", str(trained_run), "--no-general", "--max-new-tokens", "16",
                                                "--out", str(out)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["verdict"].startswith("tuned is better than the base model on the domain")
    differences = report["domain"]["differences"]
    assert differences["loss"]["high"] < 0 and differences["loss"]["judgement"] == "better"
    assert differences["loss"]["n"] == 12 and differences["rouge_l"]["n"] == 12
    assert differences["rouge_l"]["judgement"] != "worse"
    assert "95% interval" in printed and "n=12" in printed
    assert "95% interval" in (out / "report.md").read_text()


def test_preference_rewards_come_with_their_intervals_and_no_change_is_no_difference():
    from lora_ft.evaluation.preferences import PairScores, reward_summary

    start = PairScores([-10.0 - i for i in range(20)], [-12.0 - i for i in range(20)], [5] * 20, [5] * 20)
    same = reward_summary(start, start, beta=0.1)
    assert same["reward_margin"] == 0.0 and same["reward_margin_interval"]["judgement"] == "no difference"
    tuned = PairScores([c + 2 + (i % 3) for i, c in enumerate(start.chosen)], start.rejected, [5] * 20, [5] * 20)
    moved = reward_summary(start, tuned, beta=0.1)
    assert moved["reward_margin_interval"]["low"] > 0 and moved["reward_margin_interval"]["judgement"] == "better"


# --- 3. a run started from a damaged adapter ---------------------------------------------------------------------

def test_training_from_a_run_whose_adapter_is_truncated_is_a_one_screen_error(trained_run, tiny_llama, legal_data,
                                                                              tmp_path, capsys):
    damaged = tmp_path / "damaged"
    shutil.copytree(trained_run, damaged, ignore=shutil.ignore_patterns("eval", "checkpoints"))
    weights = damaged / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    config = write_config(tmp_path / "second.yaml", tiny_llama, legal_data, output_dir=tmp_path / "second")
    code, _, err = run_cli(capsys, ["train", str(config), "--set", f"model.adapter={damaged}"])
    assert code == 2
    assert "adapter_model.safetensors (of the run model.adapter names) is damaged" in err  # what
    assert f"error: {weights}: " in err  # where
    assert "fix:" in err and "point model.adapter at another finished run" in err
    assert len(err.strip().splitlines()) <= 6 and not (tmp_path / "second").exists()


# --- 4. prompts ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, text", [("prompts.txt", ""), ("blank.txt", "\n   \n\n"), ("prompts.jsonl", "")])
def test_generate_on_an_empty_prompts_file_is_an_error_naming_it(trained_run, tmp_path, capsys, name, text):
    prompts = tmp_path / name
    prompts.write_text(text)
    code, out, err = run_cli(capsys, ["generate", str(trained_run), "--prompts", str(prompts)])
    assert code == 2 and out == ""
    assert str(prompts) in err and "no prompt" in err
    assert ("one prompt per line" if name.endswith(".txt") else '{"prompt": "..."}') in err


def test_a_prompt_longer_than_the_context_is_cut_from_the_left_with_a_warning(trained_run, tmp_path, capsys):
    code, out, err = run_cli(capsys, ["generate", str(trained_run), "--prompt", LONG_PROMPT,
                                              "--max-new-tokens", "4"])
    assert code == 0 and out.strip()
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    assert "prompt 1" in warnings[0] and "512-token context" in warnings[0]
    assert "truncated from the left" in warnings[0]
    # a file of prompts (answered in batches): the long one is named, the short one is not warned about
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"What is consideration?\n{LONG_PROMPT}\n")
    code, out, err = run_cli(capsys, ["generate", str(trained_run), "--prompts", str(prompts),
                                              "--max-new-tokens", "4"])
    assert code == 0 and len(out.strip().splitlines()) == 2
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "prompt 2" in warnings[0] and "512-token context" in warnings[0]


def test_chat_warns_when_the_conversation_outgrows_the_context(trained_run, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{LONG_PROMPT}\n/exit\n"))
    code, _, err = run_cli(capsys, ["chat", str(trained_run), "--max-new-tokens", "4"])
    assert code == 0
    assert "512-token context" in err and "truncated from the left" in err


def test_eval_warns_about_prompts_longer_than_the_context(trained_run, tmp_path, capsys):
    data = write_jsonl(tmp_path / "long.jsonl", legal_rows(2) + [
        {"instruction": LONG_PROMPT, "input": "", "output": "The tenant pays rent."}])
    code, printed, _ = run_cli(capsys, ["eval", str(trained_run), "--data", str(data), "--no-general",
                                                "--max-new-tokens", "4", "--out", str(tmp_path / "eval")])
    assert code == 0
    warnings = [line for line in printed.splitlines() if "512-token context" in line]
    assert len(warnings) == 1 and f"{data.name}:3" in warnings[0] and "truncated from the left" in warnings[0]


@pytest.mark.parametrize("case", ["too many bad rows", "unknown columns", "pairs under sft"])
def test_eval_errors_give_fixes_eval_can_act_on(trained_run, tmp_path, capsys, case):
    data = tmp_path / "eval.jsonl"
    if case == "too many bad rows":
        data.write_text("\n".join([json.dumps(legal_rows(1)[0]), "{not json", "[1, 2]", "{also bad"]) + "\n")
    elif case == "unknown columns":
        write_jsonl(data, [{"question": "Q?", "reply": "A."}] * 3)
    else:
        write_jsonl(data, preference_rows(3))
    code, _, err = run_cli(capsys, ["eval", str(trained_run), "--data", str(data), "--no-general",
                                            "--out", str(tmp_path / "eval")])
    assert code == 2
    fix = err[err.rindex("fix:"):]
    assert "--data" in fix  # what the eval user can change
    # settings of the run are named as such, never as something to set for eval
    assert "--set" not in fix and "set format" not in fix and "set method" not in fix
    assert "raise data.max_dropped_fraction to train" not in fix
    if case == "too many bad rows":
        assert "data.max_dropped_fraction = " in fix and "train the run again" in fix


def _long_prompt_pairs(data_dir: Path) -> Path:
    rows = preference_rows(6)
    rows[2]["prompt"] = LONG_PROMPT
    write_jsonl(data_dir / "train.jsonl", rows)
    write_jsonl(data_dir / "eval.jsonl", preference_rows(2, offset=50))
    return data_dir


@pytest.mark.parametrize("method, command", [("dpo", "train"), ("kto", "train"), ("dpo", "data")])
def test_an_over_long_preference_prompts_fix_names_the_methods_max_prompt_length(tiny_llama, tmp_path, capsys,
                                                                                  method, command):
    data_dir = tmp_path / "pairs"
    data_dir.mkdir()
    config = write_config(tmp_path / "pref.yaml", tiny_llama, _long_prompt_pairs(data_dir))
    config.write_text(f"method: {method}\n" + config.read_text())
    code, out, err = run_cli(capsys, [command, str(config), "--set", "data.overlength=error"])
    assert code == 2
    text = err if command == "train" else out + err
    assert "longer than data.max_seq_length" in text
    for key in (f"{method}.max_prompt_length", "data.max_seq_length", "data.overlength"):
        assert key in text[text.index("longer than data.max_seq_length"):], key
