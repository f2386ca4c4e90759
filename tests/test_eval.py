"""lora-ft eval: answer metrics on known strings, batched generation, the forgetting check, the harness, trackers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lora_ft import answer_metrics as m
from lora_ft import cli
from tests.conftest import legal_rows, write_config, write_jsonl

REPO = Path(__file__).resolve().parent.parent


# --- metrics on known strings -----------------------------------------------------------------------------------

def test_token_f1_follows_squad():
    # normalised: [cat, sat, on, mat] against [cat, sat]: precision 2/4, recall 2/2
    assert m.token_f1("The cat sat on the mat.", "A cat sat") == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert m.token_f1("Paris!", "paris") == 1.0
    assert m.token_f1("dog", "cat") == 0.0
    assert m.token_f1("", "") == 1.0 and m.token_f1("", "cat") == 0.0
    # a repeated word counts only as often as the reference has it: one shared "cat", precision 1/2, recall 1/2
    assert m.token_f1("cat cat", "cat dog") == pytest.approx(2 * 0.5 * 0.5 / 1.0)


def test_rouge_l_is_the_longest_common_subsequence_f1():
    # LCS of "the cat sat on the mat" and "the cat is on the mat" is "the cat on the mat": 5 of 6 words each way
    assert m.rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # stemming: "running" and "runs" both stem to "run"; 2 of 3 answer words, 2 of 2 reference words
    assert m.rouge_l("dogs running fast", "dog runs") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert m.rouge_l("alpha beta", "gamma delta") == 0.0


def test_chrf_of_identical_and_disjoint_answers():
    assert m.chrf_sentence("The lease ends in May.", "The lease ends in May.") == pytest.approx(100.0)
    assert m.chrf_sentence("xyz", "abc") == 0.0
    # one answer: the corpus score is the sentence score
    answer, reference = "The tenant pays rent monthly.", "Rent is paid by the tenant each month."
    assert m.chrf_corpus([answer], [reference]) == pytest.approx(m.chrf_sentence(answer, reference))
    assert 0 < m.chrf_sentence(answer, reference) < 100


def test_repetition_is_the_share_of_repeated_4grams():
    # 8 words, 5 four-grams, one of them ("a b c d") seen before: 1/5
    assert m.repetition("a b c d a b c d") == pytest.approx(0.2)
    assert m.repetition("one two three four five") == 0.0
    assert m.repetition("too short") == 0.0
    # a loop: "x y" x 10 -> 17 four-grams, 2 distinct
    assert m.repetition(" ".join(["x y"] * 10)) == pytest.approx(1 - 2 / 17)


def test_summary_of_answers():
    answers = ["the cat sat", "a dog"]
    references = ["the cat sat", "the dog barked loudly"]
    records = [m.answer_scores(a, r, stopped, tokens) for a, r, stopped, tokens
               in zip(answers, references, (True, False), (4, 10))]
    summary = m.summarize(answers, references, records, seconds=2.0)
    assert summary.stop_rate == 0.5 and summary.stopped == 1 and summary.tokens == 14
    assert summary.tokens_per_second == 7.0
    assert summary.length_ratio == pytest.approx((3 + 2) / (3 + 4))
    # ROUGE-L: 1.0 and "a dog" vs "the dog barked loudly" (LCS 1: P 1/2, R 1/4 -> 1/3)
    assert summary.rouge_l == pytest.approx(100 * (1.0 + 1 / 3) / 2)
    assert summary.token_f1 == pytest.approx(100 * (1.0 + 2 * 1 * (1 / 3) / (4 / 3)) / 2)


# --- batched generation -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def eval_run(tiny_llama, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval-run")
    data_dir = root / "data"
    data_dir.mkdir()
    write_jsonl(data_dir / "train.jsonl", legal_rows(16))
    write_jsonl(data_dir / "eval.jsonl", legal_rows(6, offset=100))
    config = write_config(root / "run.yaml", tiny_llama, data_dir, output_dir=root / "run",
                          extra="tracking:\n  report_to: [tensorboard]\n")
    assert cli.main(["train", str(config), "--set", "train.max_steps=30"]) == 0
    return root / "run"


@pytest.mark.parametrize("decoding", ["refilling", "in batches of 3 steps", "in batches of 32 steps"])
def test_batched_greedy_answers_equal_one_at_a_time(eval_run, decoding, monkeypatch):
    from lora_ft import batched_decoding, inference
    from lora_ft.rundir.finished import open_run

    # refilling: rows that stop leave the batch and waiting prompts are prefilled into it, their caches padded to
    # one length; in batches: 3 (or 32) new tokens per generate call, rows that stopped leave the batch, the rest
    # go on from the KV cache
    if decoding != "refilling":
        monkeypatch.setattr(batched_decoding, "STEPS_PER_CALL", int(decoding.split()[3]))
    else:
        assert batched_decoding._plain_cache(inference.load_base(open_run(eval_run)))
    run = open_run(eval_run)
    model = inference.load_tuned(run)
    tokenizer = inference.load_tokenizer(run)
    prompts = ["What is consideration?", "Explain force majeure in plain English, briefly please.",
               "hello", "What is the statute of frauds? Explain it.", "The tenant shall pay rent"]
    conversations = [[{"role": "user", "content": p}] for p in prompts]
    for merge in (False, True):
        with inference.merged_adapter(model, merge):
            batched = inference.generate_batch(model, tokenizer, run, conversations, max_new_tokens=12, batch_size=3,
                                               refill=decoding == "refilling")
            single = [inference.generate(model, tokenizer, run, c, max_new_tokens=12) for c in conversations]
        assert [(a.text, a.stopped) for a in batched] == single
        assert all(0 < a.tokens <= 12 for a in batched)
    # merging is undone: the adapter can be switched off again for the base model
    assert not any(getattr(module, "merged", False) for module in model.modules())


# --- the whole command ------------------------------------------------------------------------------------------

def test_eval_reports_answers_forgetting_and_a_verdict(eval_run, tmp_path, capsys):
    general = write_jsonl(tmp_path / "general.jsonl", [
        {"instruction": "Name a primary colour.", "input": "", "output": "Red is a primary colour."},
        {"instruction": "What is two plus two?", "input": "", "output": "Two plus two is four."},
        {"instruction": "Say hello.", "input": "", "output": "Hello!"}])
    out = tmp_path / "eval"
    assert cli.main(["eval", str(eval_run), "--general", str(general), "--max-new-tokens", "8", "--samples", "2",
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    domain, forgetting = report["domain"], report["general"]
    assert domain["samples"] == 6 and domain["tuned_answers"]["answers"] == 6
    assert forgetting["samples"] == 3 and forgetting["tuned_answers"]["answers"] == 3
    assert report["tuned_loss"] == domain["tuned_loss"] < domain["base_loss"]
    assert report["verdict"].startswith("tuned is better than the base model on the domain")
    assert "general loss" in report["verdict"] and f"verdict: {report['verdict']}" in printed
    # every answer saved with its scores; the summary is their mean
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["set"] for s in samples] == ["domain"] * 6 + ["general"] * 3
    for s in samples:
        assert s["tuned_scores"]["rouge_l"] == pytest.approx(100 * m.rouge_l(s["tuned"], s["reference"]))
        assert s["tuned_scores"]["tokens"] <= 8
    mean = sum(s["tuned_scores"]["rouge_l"] for s in samples[:6]) / 6
    assert domain["tuned_answers"]["rouge_l"] == pytest.approx(mean)
    markdown = (out / "report.md").read_text()
    assert "**Verdict:**" in markdown and "## General instructions (forgetting check)" in markdown
    assert "| ROUGE-L |" in markdown and "## Sample 2" in markdown
    for label in ("ROUGE-L", "chrF", "token F1", "stop rate", "words / reference", "repeated 4-grams %"):
        assert label in printed
    # logged to the run's TensorBoard next to its training curves
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(eval_run / "tensorboard")).Reload()
    assert "eval/domain/tuned_rouge_l" in events.Tags()["scalars"]
    assert events.Scalars("eval/domain/tuned_loss")[-1].value == pytest.approx(domain["tuned_loss"], rel=1e-5)
    assert "results logged to TensorBoard" in printed


def test_eval_logs_into_the_runs_own_wandb_run(tiny_llama, legal_data, tmp_path, capsys):
    config = write_config(tmp_path / "run.yaml", tiny_llama, legal_data,
                          extra="tracking:\n  report_to: [wandb]\n  project: eval-test\n")
    assert cli.main(["train", str(config), "--set", "train.max_steps=2"]) == 0  # W&B offline (conftest)
    run_dir = tmp_path / "run"
    run_id = (run_dir / "wandb" / "lora-ft-run-id").read_text().strip()
    capsys.readouterr()
    assert cli.main(["eval", str(run_dir), "--no-general", "--max-answers", "2", "--max-new-tokens", "4"]) == 0
    assert "results logged to the run's W&B run (offline" in capsys.readouterr().out
    # W&B's service writes a run's file after finish() returns, and completes it when the process ends: end it
    # here as the command's exit does, so the file is read whole
    import wandb
    wandb.teardown()
    # the eval went into a resumed W&B run with the training run's id, with its figures and its answers table
    logs = sorted(run_dir.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(logs) == 2
    assert b"eval/domain/tuned_loss" in logs[-1].read_bytes() and b"eval/answers" in logs[-1].read_bytes()


def test_eval_uses_the_shipped_general_file_by_default(eval_run, tmp_path):
    from lora_ft.evaluation.run import general_data_file

    rows = [json.loads(line) for line in general_data_file().read_text().splitlines()]
    assert len(rows) >= 250 and len({r["instruction"] for r in rows}) == len(rows)
    out = tmp_path / "eval"
    assert cli.main(["eval", str(eval_run), "--max-answers", "0", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    # every row is read; the few longer than this tiny run's max_seq_length (128) are left out as in training
    assert 0.8 * len(rows) < report["general"]["samples"] <= len(rows)
    assert "shipped with lora-ft" in report["general"]["source"]
    assert report["general"]["tuned_answers"] is None  # --max-answers 0: losses only


def test_eval_flags_are_checked_before_anything_slow(eval_run, tmp_path, capsys):
    for argv, message in (
            (["--general", str(tmp_path / "missing.jsonl")], "does not exist"),
            (["--general", "x", "--no-general"], "contradict"),
            (["--include-path", str(tmp_path)], "without --tasks"),
            (["--tasks", "legal_mcq", "--include-path", str(REPO / "examples" / "legal" / "harness")],
             "did you mean legal_mc")):
        capsys.readouterr()
        assert cli.main(["eval", str(eval_run), "--out", str(tmp_path / "never"), *argv]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


# --- lm-evaluation-harness ----------------------------------------------------------------------------------------

def test_the_shipped_legal_task_runs_offline_for_base_and_tuned(eval_run, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # the task finds its data beside its YAML, not in the working directory
    out = tmp_path / "eval"
    assert cli.main(["eval", str(eval_run), "--no-general", "--max-answers", "0", "--tasks", "legal_mc",
                     "--include-path", str(REPO / "examples" / "legal" / "harness"), "--task-limit", "6",
                     "--out", str(out)]) == 0
    scores = json.loads((out / "report.json").read_text())["harness"]["legal_mc"]
    assert set(scores) == {"acc"}
    for values in scores.values():
        assert {"base", "tuned"} == set(values) and all(v * 6 == pytest.approx(round(v * 6)) for v in values.values())
    assert "legal_mc acc" in (out / "report.md").read_text()


def test_the_shipped_legal_task_is_well_formed():
    rows = [json.loads(line) for line in (REPO / "examples" / "legal" / "harness" / "legal_mc.jsonl").open()]
    eval_rows = (REPO / "examples" / "legal" / "eval.jsonl").read_text().splitlines()
    assert [r["id"] for r in rows] == list(range(len(eval_rows)))
    for r in rows:
        assert len(r["choices"]) == 4 and len(set(r["choices"])) == 4 and r["answer"] in range(4)
