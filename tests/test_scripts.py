"""Every script in scripts/ is part of the product: each runs here in a mode that takes seconds, so a change that
breaks one turns CI red (the GPU check up to its refusal on a machine without a GPU, and its reading of results)."""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
import sys

import pytest
import torch

from lora_ft import cli

from .conftest import REPO, write_config

SCRIPTS = REPO / "scripts"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(*command: str, timeout: int = 600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(list(command), capture_output=True, text=True, timeout=timeout, cwd=REPO, **kwargs)


def test_every_script_is_covered_by_this_file():
    covered = {"bench.py", "bench_preference.py", "profile_step.py", "bench_data.py", "bench_distributed.py", "bench_eval_generation.py", "bench_hash.py", "browser_check.sh", "engine_check.sh",
               "engine_envs.sh", "gen_config_docs.py", "gpu_check.py", "gpu_check.sh", "gpu_wheels.sh", "setup.sh",
               "slurm_train.sh", "gpu_reference_losses.json"}
    present = {p.name for p in SCRIPTS.iterdir() if p.is_file()}
    assert present <= covered, f"scripts with no test here: {sorted(present - covered)}"


@pytest.mark.parametrize("script", sorted(p.name for p in SCRIPTS.glob("*.sh")))
def test_every_shell_script_parses(script):
    # setup.sh runs at the start of CI, browser_check.sh in its browser tier (tests/test_ui_browser.py), engine_envs.sh
    # and engine_check.sh in its engine tier, gpu_wheels.sh
    # through `gpu_check.py prepare` where the GPU check is prepared; here each must at least parse
    result = _run("bash", "-n", str(SCRIPTS / script))
    assert result.returncode == 0, result.stderr


def test_bench_distributed_prints_ddp_and_fsdp_side_by_side_in_smoke_mode(tmp_path):
    out = tmp_path / "bench-distributed"
    result = _run(sys.executable, str(SCRIPTS / "bench_distributed.py"), "--smoke", "--out", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "flags: avx2=" in result.stdout and "| ddp |" in result.stdout and "| fsdp |" in result.stdout
    rows = json.loads((out / "RESULTS.json").read_text())["rows"]
    assert [r["strategy"] for r in rows] == ["ddp", "fsdp"]
    assert all(r["steps_per_s"] > 0 and len(r["peak_rss_bytes"]) == 2 and min(r["peak_rss_bytes"]) > 0 for r in rows)


@pytest.mark.embedded
def test_bench_runs_its_smoke_workload_and_prints_the_machine_with_the_figures(tmp_path):
    out = tmp_path / "bench"
    result = _run(sys.executable, str(SCRIPTS / "bench.py"), "--workload", "tiny", "--steps", "3", "--warmup", "1",
                  "--defaults-steps", "0", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "RESULTS.json").read_text())
    assert set(report["rows"]) == {"baseline", "ours"}
    assert all(row["tokens_per_s"] > 0 and row["final_loss"] > 0 for row in report["rows"].values())
    assert "flags:" in result.stdout and "| baseline |" in result.stdout and "| ours |" in result.stdout
    summary = _module("gpu_check").bench_summary(out)  # what the GPU check keeps of a bench folder
    assert summary["ratios"]["tokens_per_s"] == pytest.approx(report["ratios"]["tokens_per_s"])
    assert set(summary["mfu"]) == {"baseline", "ours"}


@pytest.mark.embedded
def test_bench_method_dpo_runs_trl_dpo_ours_and_ours_sft_in_smoke_mode(tmp_path):
    out = tmp_path / "bench-dpo"
    result = _run(sys.executable, str(SCRIPTS / "bench.py"), "--method", "dpo", "--workload", "tiny", "--steps", "3",
                  "--warmup", "1", "--out", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "RESULTS.json").read_text())
    assert set(report["rows"]) == {"trl-dpo", "ours", "ours-sft"}
    assert all(row["tokens_per_s"] > 0 and row["final_loss"] > 0 for row in report["rows"].values())
    assert {"tokens_per_s", "tokens_per_s_vs_sft", "rss_vs_sft"} <= set(report["ratios"])
    assert "flags:" in result.stdout and "| trl-dpo |" in result.stdout and "ours (dpo) / ours-sft" in result.stdout


@pytest.mark.embedded
def test_gpu_check_prepare_copies_the_tokenizer_without_the_wheels(tmp_path):
    result = _run(sys.executable, str(SCRIPTS / "gpu_check.py"), "prepare", "--skip-wheels",
                  "--dest", str(tmp_path / "gpucheck"))
    assert result.returncode == 0, result.stderr[-3000:]
    tokenizer = tmp_path / "gpucheck" / "tokenizer"
    assert (tokenizer / "tokenizer.json").is_file() and (tokenizer / "config.json").is_file()
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tokenizer).eos_token == "<|im_end|>"


def test_gpu_check_sh_runs_the_check_and_refuses_a_machine_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    for argv in (["run", "--wheels", ".whl"], ["--wheels", ".whl"]):
        result = _run("bash", str(SCRIPTS / "gpu_check.sh"), *argv, env={**os.environ, "PYTHON": sys.executable})
        assert result.returncode == 2 and "needs a CUDA GPU" in result.stderr, result.stderr


def test_gpu_check_reads_a_finished_runs_figures_against_the_reference(tiny_llama, legal_data, tmp_path):
    gpu_check = _module("gpu_check")
    config = write_config(tmp_path / "run.yaml", tiny_llama, legal_data)
    assert cli.main(["train", str(config), "--set", "train.max_steps=3"]) == 0
    run_dir = tmp_path / "run"
    losses = gpu_check.logged_losses(run_dir)
    assert len(losses) == 3
    near = gpu_check.qlora_summary(run_dir, [loss + 0.01 for loss in losses])
    assert near["agrees_with_cpu"] and near["max_loss_difference"] == pytest.approx(0.01)
    assert near["steps"] == 3 and near["eval_loss_after"] is not None
    far = gpu_check.qlora_summary(run_dir, [loss + 1.0 for loss in losses])
    assert not far["agrees_with_cpu"]


def test_slurm_script_starts_one_torchrun_per_node_with_the_rendezvous_of_the_job(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "srun.txt"
    fakes = {"srun": f'printf "%s\\n" "$@" > {log}\n', "scontrol": 'printf "node-a\\nnode-b\\n"\n'}
    for name, body in fakes.items():  # Slurm's own commands, which this machine has not
        (bin_dir / name).write_text("#!/usr/bin/env bash\n" + body)
        (bin_dir / name).chmod(stat.S_IRWXU)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_NNODES": "2", "SLURM_JOB_ID": "77",
           "SLURM_JOB_NODELIST": "node-[a-b]", "SLURM_GPUS_ON_NODE": "h100:8"}
    result = _run("bash", str(SCRIPTS / "slurm_train.sh"), "configs/legal_domain.yaml", "--set", "train.epochs=2",
                  env=env)
    assert result.returncode == 0, result.stderr
    argv = log.read_text().splitlines()
    assert argv[:4] == ["--kill-on-bad-exit=1", f"{REPO}/.venv/bin/python", "-m", "torch.distributed.run"]
    assert {"--nnodes=2", "--nproc-per-node=8", "--rdzv-id=77", "--rdzv-endpoint=node-a:29500"} <= set(argv)
    assert argv[-6:] == ["-m", "lora_ft", "train", "configs/legal_domain.yaml", "--set", "train.epochs=2"]


def test_config_docs_script_checks_the_reference_is_current():
    result = _run(sys.executable, str(SCRIPTS / "gen_config_docs.py"), "--check")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.embedded
def test_bench_data_times_the_first_and_the_cached_run_of_a_small_set(tmp_path):
    out = tmp_path / "bench-data"
    result = _run(sys.executable, str(SCRIPTS / "bench_data.py"), "--rows", "300", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "RESULTS.json").read_text())
    assert "300" in json.dumps(report) and "flags" in result.stdout.lower()


@pytest.mark.embedded
def test_bench_hash_times_hashing_a_small_file_and_an_entry_check(tmp_path):
    out = tmp_path / "bench-hash"
    result = _run(sys.executable, str(SCRIPTS / "bench_hash.py"), "--rows", "2000", "--entry-rows", "300",
                  "--repeat", "1", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "HASH.md").is_file() and (out / "HASH.json").is_file()
    assert "flags" in result.stdout.lower(), "the CPU's flags are printed with the figures"


def test_profile_step_puts_every_operator_in_a_part_of_the_step(tiny_llama, legal_data, tmp_path):
    config = write_config(tmp_path / "run.yaml", tiny_llama, legal_data)
    result = _run(sys.executable, str(SCRIPTS / "profile_step.py"), str(config), "--steps", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "flags:" in result.stdout and "2 profiled steps" in result.stdout
    shares = {line.split(" | ")[0].strip("| "): float(line.rsplit(" | ", 1)[1].strip(" |%"))
              for line in result.stdout.splitlines() if line.startswith("| ") and "%" in line}
    assert set(shares) == set(_module("profile_step").PARTS)
    assert shares["linear layers, frozen"] > 0 and shares["optimizer"] > 0 and shares["LoRA matmuls"] > 0
    assert 98 <= sum(shares.values()) <= 102


def test_bench_eval_generation_answers_a_few_prompts_both_ways(tiny_llama, legal_data, tmp_path):
    config = write_config(tmp_path / "run.yaml", tiny_llama, legal_data)
    assert cli.main(["train", str(config), "--set", "train.max_steps=1"]) == 0
    result = _run(sys.executable, str(SCRIPTS / "bench_eval_generation.py"), str(tmp_path / "run"), "--prompts", "3",
                  "--batch-size", "2", "--max-new-tokens", "4", "--one-at-a-time")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "flags:" in result.stdout and "tokens/s" in result.stdout, result.stdout
    assert "tuned: refilling vs fixed batches: 3/3 answers identical" in result.stdout
    assert "base: refilling vs fixed batches: 3/3 answers identical" in result.stdout
