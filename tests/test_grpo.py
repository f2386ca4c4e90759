"""GRPO (`method: grpo`): prompts read and checked, rewards (built-in and the user's own) loaded and checked,
a reward the tiny model can learn rising, the sampled answers logged, and a killed run resumed bitwise."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lora_ft.commands.train import train
from lora_ft.config import load_config
from lora_ft.errors import UserError
from tests.conftest import build_llama, build_tokenizer, killed_and_resumed, run_cli, same_adapter, write_jsonl

LOW_IDS = '''
def low_ids(completions, completion_ids, **kwargs):
    """The share of an answer's tokens whose id is under 200: a reward a tiny random model can learn."""
    return [sum(t < 200 for t in ids) / max(len(ids), 1) for ids in completion_ids]
'''


@pytest.fixture(scope="module")
def peaked_llama(tmp_path_factory) -> Path:
    """A tiny Llama whose random weights are large enough for peaked next-token distributions (the usual 0.02
    gives nearly uniform ones, which a few steps of policy gradient cannot move)."""
    directory = tmp_path_factory.mktemp("peaked-llama")
    tokenizer = build_tokenizer(directory)
    build_llama(directory, len(tokenizer), layers=2, init_range=0.3)
    return directory


def _write_prompts(data: Path) -> Path:
    data.mkdir()
    write_jsonl(data / "train.jsonl", [{"prompt": f"Write about contract {i}.", "answer": "contract"}
                                       for i in range(16)])
    write_jsonl(data / "eval.jsonl", [{"prompt": f"Write about contract {i}.", "answer": "contract"}
                                      for i in range(100, 108)])
    (data / "rewards.py").write_text(LOW_IDS)
    return data


@pytest.fixture
def prompts(tmp_path) -> Path:
    return _write_prompts(tmp_path / "prompts")


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory, peaked_llama):
    """One GRPO run of 30 steps on the learnable reward, shared by the tests that read a finished run."""
    folder = tmp_path_factory.mktemp("grpo-run")
    data = _write_prompts(folder / "prompts")
    return train(load_config(grpo_config(folder / "grpo.yaml", peaked_llama, data)), say=_quiet)


def grpo_config(path: Path, model: Path, data: Path, *, steps: int = 30, rewards: str | None = None,
                extra: str = "", output: Path | None = None) -> Path:
    rewards = rewards or f"    - type: python\n      function: {data / 'rewards.py'}:low_ids\n"
    path.write_text(f"""method: grpo
output_dir: {output or path.parent / 'run'}
model:
  base: {model}
lora:
  r: 8
  alpha: 16
  dropout: 0.0
data:
  train:
    - path: {data / 'train.jsonl'}
  eval:
    - path: {data / 'eval.jsonl'}
  max_seq_length: 64
train:
  max_steps: {steps}
  batch_size: 8
  gradient_accumulation_steps: 1
  learning_rate: 2.0e-2
  warmup_ratio: 0.0
  logging_steps: 1
grpo:
  num_generations: 8
  max_completion_length: 4
  rewards:
{rewards}{extra}""", encoding="utf-8")
    return path


def _quiet(_line):
    return None


def test_grpo_reward_rises_on_a_reward_the_tiny_model_can_learn(grpo_run):
    result = grpo_run
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["rewards/low_ids/mean"] for r in records if "rewards/low_ids/mean" in r]
    assert len(rewards) == 30
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5 + 0.2, rewards
    assert all("completions/clipped_ratio" in r and "reward_std" in r for r in records if "loss" in r)
    outcome = result.outcome
    assert outcome.rewards_after["reward"] > outcome.rewards_before["reward"]
    # the sampled answers with their rewards: step 1, then every 5 steps; the held-out ones before and after
    logged = [json.loads(line) for line in (result.run_dir / "completions.jsonl").read_text().splitlines()]
    assert sorted({r["step"] for r in logged if r["split"] == "train"}) == [1, 5, 10, 15, 20, 25, 30]
    assert {r["step"] for r in logged if r["split"] == "eval"} == {0, 30}
    first = next(r for r in logged if r["split"] == "train")
    assert first["prompt"].startswith("<|im_start|>user\nWrite about contract") and set(first["rewards"]) == {"low_ids"}
    card = (result.adapter_dir / "README.md").read_text()
    assert "held-out mean reward" in card and "low_ids: `" in card and "weight 1" in card
    metrics = json.loads((result.run_dir / "manifest.json").read_text())["metrics"]
    assert metrics["method"] == "grpo" and metrics["held_out_reward_after"] == outcome.rewards_after["reward"]


def test_eval_scores_the_held_out_prompts_by_the_runs_rewards_and_exports_work(grpo_run, capsys, tmp_path):
    code, out, err = run_cli(capsys, ["eval", str(grpo_run.run_dir), "--no-general", "--out", str(tmp_path / "ev")])
    assert code == 0, err
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    rewards = report["rewards"]
    assert rewards["prompts"] == 8 and set(rewards["rewards"]) == {"low_ids"}
    # greedy answers, as the training run's own held-out figures were
    assert rewards["base"]["total"] == pytest.approx(grpo_run.outcome.rewards_before["reward"])
    assert rewards["tuned"]["total"] == pytest.approx(grpo_run.outcome.rewards_after["reward"])
    assert "held-out prompts" in report["verdict"] and report["domain"] is None
    markdown = (tmp_path / "ev" / "report.md").read_text()
    assert "## Rewards on held-out prompts" in markdown and "low_ids (x1)" in markdown
    samples = [json.loads(line) for line in (tmp_path / "ev" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 8 and {"base_rewards", "tuned_rewards"} <= set(samples[0])
    code, _, err = run_cli(capsys, ["export", str(grpo_run.run_dir), "--format", "merged", "--out",
                                    str(tmp_path / "merged")])
    assert code == 0, err
    assert (tmp_path / "merged" / "config.json").is_file()


def test_plan_counts_the_sampled_answers(tmp_path, peaked_llama, prompts, capsys):
    config = grpo_config(tmp_path / "grpo.yaml", peaked_llama, prompts)
    code, out, err = run_cli(capsys, ["plan", str(config)])
    assert code == 0, err
    assert "16 prompts x 8 sampled answers of up to 4 tokens" in out + err


def test_a_killed_grpo_run_resumes_bitwise_equal(tmp_path, peaked_llama, prompts):
    config = grpo_config(tmp_path / "grpo.yaml", peaked_llama, prompts, steps=6)
    reference, resumed, finished = killed_and_resumed(config, tmp_path, "step:4", "--set", "train.save_steps=2",
                                                      "--set", "train.keep_last=3")
    assert "from checkpoint-2 (step 2)" in finished.stdout

    def history(run_dir):
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"], r["reward"], r["grad_norm"]) for r in records if "loss" in r]

    assert history(resumed) == history(reference)
    assert same_adapter(resumed, reference)
    # the sampled answers too (the sampling RNG resumed), each step's once
    def sampled(run_dir):
        return [line for line in (run_dir / "completions.jsonl").read_text().splitlines()]

    assert sampled(resumed) == sampled(reference)


BAD_FUNCTIONS = {
    "a list of the wrong length": ("def f(completions, **kw):\n    return [1.0]\n", "returned 1 values for 8"),
    "not a list": ("def f(completions, **kw):\n    return 1.0\n", "returned float, not a list of floats"),
    "a NaN": ("def f(prompts, completions, **kw):\n    return [float('nan')] * len(completions)\n",
              "returned nan for completion 0"),
    "text": ("def f(completions, **kw):\n    return ['1'] * len(completions)\n", "returned '1' (str)"),
    "an exception": ("def f(completions, **kw):\n    return [1 / 0 for c in completions]\n",
                     "raised ZeroDivisionError: division by zero"),
    "a failing import": ("import not_a_module_anywhere\ndef f(completions, **kw):\n    return []\n",
                         "importing"),
    "no completions argument": ("def f(x):\n    return []\n", "takes neither `completions` nor **kwargs"),
}


@pytest.mark.parametrize("case", list(BAD_FUNCTIONS))
def test_each_bad_reward_function_gets_its_one_screen_error(case, tmp_path, tiny_llama, prompts, capsys):
    source, expected = BAD_FUNCTIONS[case]
    (prompts / "bad.py").write_text(source)
    config = grpo_config(tmp_path / "grpo.yaml", tiny_llama, prompts, steps=2,
                         rewards=f"    - type: python\n      function: {prompts / 'bad.py'}:f\n")
    code, out, err = run_cli(capsys, ["train", str(config)])
    assert code == 2, out + err
    assert expected in err and "grpo.rewards (f)" in err and "fix:" in err
    assert len(err.strip().splitlines()) < 25
    if case in ("a NaN", "text", "a list of the wrong length"):
        assert "Write about contract" in err  # the prompt that caused it


@pytest.mark.parametrize("function, expected", [
    ("missing.py:f", "missing.py does not exist"),
    ("rewards.py:nope", "defines no function `nope` (its functions: low_ids)"),
    ("broken.py:f", "broken.py:1 is not valid Python"),
])
def test_a_reward_file_is_checked_at_validation_without_running_it(function, expected, tmp_path, tiny_llama,
                                                                  prompts, capsys):
    (prompts / "broken.py").write_text("def f(:\n")
    config = grpo_config(tmp_path / "grpo.yaml", tiny_llama, prompts,
                         rewards=f"    - type: python\n      function: {prompts / function}\n")
    code, _, err = run_cli(capsys, ["validate", str(config)])
    assert code == 2 and expected in err and "grpo.rewards.0.function" in err.replace("[0]", ".0"), err


def test_a_users_reward_file_is_never_imported_until_the_config_has_validated(tmp_path, tiny_llama, prompts,
                                                                             capsys):
    marker = tmp_path / "imported"
    (prompts / "marking.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n{LOW_IDS}")
    rewards = f"    - type: python\n      function: {prompts / 'marking.py'}:low_ids\n"
    broken = grpo_config(tmp_path / "broken.yaml", tiny_llama, prompts, rewards=rewards, extra="  tempreature: 1\n")
    code, _, err = run_cli(capsys, ["train", str(broken)])
    assert code == 2 and "tempreature" in err and "temperature" in err
    assert not marker.exists()
    good = grpo_config(tmp_path / "good.yaml", tiny_llama, prompts, rewards=rewards, steps=1)
    assert run_cli(capsys, ["validate", str(good)])[0] == 0
    assert not marker.exists()
    assert run_cli(capsys, ["train", str(good)])[0] == 0
    assert marker.exists()


@pytest.mark.parametrize("reward, expected", [
    ("    - type: regex\n", "a `regex` reward needs `pattern`"),
    ("    - type: regex\n      pattern: '(['\n", "not a valid regular expression"),
    ("    - type: length\n      target: 4\n      column: answer\n", "`column` applies to"),
    ("    - type: exact\n      target: 4\n", "`target` applies to a `length` reward"),
    ("    - type: exakt\n", "exact"),
    ("    - type: python\n      function: rewards.py\n", "path/to/file.py:function_name"),
])
def test_reward_settings_are_strict(reward, expected, tmp_path, tiny_llama, prompts):
    with pytest.raises(UserError) as info:
        load_config(grpo_config(tmp_path / "grpo.yaml", tiny_llama, prompts, rewards=reward))
    assert expected in info.value.render()


def test_prompts_are_read_checked_and_named_by_file_and_line(tmp_path, tiny_llama, prompts, capsys):
    write_jsonl(prompts / "train.jsonl", [
        {"prompt": "Write about contract 1.", "answer": "a", "meta": {"k": 1}},
        {"prompt": ""},
        {"prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a clause."}],
         "answer": "b"},
    ] + [{"prompt": f"Write about contract {i}.", "answer": "c"} for i in range(8)])
    config = grpo_config(tmp_path / "grpo.yaml", tiny_llama, prompts, steps=1,
                         extra="  log_completions_every: 1\n")
    text = config.read_text().replace("data:\n", "data:\n  max_dropped_fraction: 0.5\n")
    config.write_text(text)
    code, out, err = run_cli(capsys, ["data", str(config)])
    assert code == 0, err
    assert "train.jsonl:2" in out + err and "empty prompt" in out + err
    assert "train.jsonl:3" in out + err and "the prompt does not end with a user turn" in out + err
    result = train(load_config(config), say=_quiet)
    logged = [json.loads(line) for line in (result.run_dir / "completions.jsonl").read_text().splitlines()]
    assert any(r["prompt"].startswith("<|im_start|>system\nBe brief.") for r in logged if r["split"] == "train") \
        or len(logged)


def test_sft_data_under_grpo_and_prompts_under_sft_are_refused(tmp_path, tiny_llama, prompts, legal_data):
    config = grpo_config(tmp_path / "grpo.yaml", tiny_llama, prompts)
    config.write_text(config.read_text().replace(str(prompts / "train.jsonl"), str(legal_data / "train.jsonl")))
    with pytest.raises(UserError) as info:
        train(load_config(config), say=_quiet)
    assert "which reads prompts" in info.value.render()
    sft = tmp_path / "sft.yaml"
    sft.write_text(config.read_text().replace("method: grpo\n", "").split("grpo:\n")[0]
                   .replace(str(legal_data / "train.jsonl"), str(prompts / "train.jsonl")))
    with pytest.raises(UserError) as info:
        train(load_config(sft), say=_quiet)
    assert "prompts for RL (GRPO)" in info.value.render() and "set method: grpo" in info.value.render()


REPO = Path(__file__).resolve().parents[1]


def test_the_shipped_prompt_examples_read_whole():
    from lora_ft.data import load_data

    loaded = load_config(REPO / "configs" / "grpo_legal_choice.yaml")
    data = load_data(loaded)
    assert (len(data.train), len(data.eval)) == (327, 70)
    assert all(r.dropped_count == 0 and r.format == "prompts" for r in data.reports)
    assert {s.columns["answer"] for s in data.train} == set("AB")
    assert not {s.messages[-1]["content"] for s in data.eval} & {s.messages[-1]["content"] for s in data.train}
    template = REPO / "data_templates" / "formats" / "prompts.jsonl"
    loaded = load_config(REPO / "configs" / "grpo_legal_choice.yaml", [f"data.train.0.path={template}"])
    samples = load_data(loaded).train
    assert len(samples) == 2 and samples[1].messages[0]["role"] == "system"


@pytest.mark.parametrize("spec, completion, columns, expected", [
    ({"type": "exact"}, " 42 ", {"answer": "42"}, 1.0),
    ({"type": "exact"}, "42.", {"answer": "42"}, 0.0),
    ({"type": "normalized"}, "The Statute of Frauds!", {"answer": "statute of frauds"}, 1.0),
    ({"type": "choice"}, "B", {"answer": "B"}, 1.0),
    ({"type": "choice"}, "(c) because ...", {"answer": "C"}, 0.0),  # a lower-case letter is no choice
    ({"type": "choice"}, "The answer is C.", {"answer": "C"}, 1.0),
    ({"type": "choice"}, "A condition precedent is an event", {"answer": "A"}, 0.0),  # an article, not a choice
    ({"type": "math"}, "So the total is $\\frac{1}{2}$.", {"answer": "0.5"}, 1.0),
    ({"type": "math"}, "The result is 3.", {"answer": "4"}, 0.0),
    ({"type": "regex", "pattern": "[A-D]"}, " B\n", {}, 1.0),
    ({"type": "regex", "pattern": "[A-D]"}, "B because", {}, 0.0),
    ({"type": "rouge_l"}, "a lien secures a debt", {"answer": "a lien secures a debt"}, 1.0),
    ({"type": "rouge_l", "column": "reference"}, "nothing alike", {"reference": "a lien secures a debt"}, 0.0),
])
def test_each_builtin_reward_scores_what_it_says(spec, completion, columns, expected):
    from lora_ft.rewards import RewardSpec
    from lora_ft.rewards.functions import reward_functions

    (function,), _ = reward_functions([RewardSpec(**spec)], str)
    got = function(prompts=["p"], completions=[completion], completion_ids=[[1, 2]],
                   **{k: [v] for k, v in columns.items()})
    assert got == [pytest.approx(expected)]


def test_the_length_and_tool_call_rewards():
    from lora_ft.rewards import RewardSpec
    from lora_ft.rewards.functions import reward_functions

    (length,), _ = reward_functions([RewardSpec(type="length", target=4)], str)
    assert length(prompts=["p"] * 4, completions=["x"] * 4, completion_ids=[[1] * n for n in (4, 2, 8, 12)]) \
        == [1.0, 0.5, 0.0, 0.0]
    tools = json.dumps([{"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"section": {"type": "string"}}, "required": ["section"]}}}])
    (call,), _ = reward_functions([RewardSpec(type="tool_call")], str)
    answers = ['<tool_call>{"name": "lookup", "arguments": {"section": "2-201"}}</tool_call>',
               '<tool_call>{"name": "lookup", "arguments": {}}</tool_call>',
               '<tool_call>{"name": "other", "arguments": {"section": "1"}}</tool_call>', "No call."]
    assert call(prompts=["p"] * 4, completions=answers, completion_ids=[[1]] * 4, tools=[tools] * 4) \
        == [1.0, 0.0, 0.0, 0.0]


def test_grpo_on_two_gloo_processes_samples_trains_and_writes_once(tmp_path, tiny_llama, prompts):
    """DDP: each process samples its share of each step's groups (batch 4 x 2 processes = two groups of 4); the
    run says its story and writes its adapter and its sampled answers once."""
    import os

    config = grpo_config(tmp_path / "grpo.yaml", tiny_llama, prompts, steps=3,
                         extra="  log_completions_every: 1\n")
    config.write_text(config.read_text().replace("num_generations: 8", "num_generations: 4")
                      .replace("batch_size: 8", "batch_size: 4"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "lora_ft", "train", str(config), "--nproc", "2",
                             "--set", f"output_dir={tmp_path / 'ddp'}"],
                            capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("== summary") == 1
    assert (tmp_path / "ddp" / "adapter" / "adapter_model.safetensors").is_file()
    logged = [json.loads(line) for line in (tmp_path / "ddp" / "completions.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if r["split"] == "train"] == [1] * 4 + [2] * 4 + [3] * 4


def test_grpo_starts_from_a_finished_sft_runs_adapter(tmp_path, tiny_llama, prompts, legal_data):
    from tests.conftest import write_config

    sft = train(load_config(write_config(tmp_path / "sft.yaml", tiny_llama, legal_data)), say=_quiet)
    config = grpo_config(tmp_path / "grpo.yaml", tiny_llama, prompts, steps=2, output=tmp_path / "grpo")
    config.write_text(config.read_text().replace("model:\n", f"model:\n  adapter: {sft.run_dir}\n")
                      .replace("  r: 8\n  alpha: 16\n", "  r: 4\n  alpha: 8\n"))  # the SFT adapter's
    result = train(load_config(config), say=_quiet)
    card = (result.adapter_dir / "README.md").read_text()
    assert f"Started from the adapter of the finished run `{sft.run_dir}`" in card
    assert "the adapter it started from" in card
    started = load_file(sft.adapter_dir / "adapter_model.safetensors")
    trained = load_file(result.adapter_dir / "adapter_model.safetensors")
    assert trained.keys() == started.keys() and any(not torch.equal(trained[k], started[k]) for k in started)
