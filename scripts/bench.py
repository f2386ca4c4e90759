"""Benchmark `lora-ft train` against the fine-tuning script a careful user writes by hand from the TRL and PEFT docs.

    python scripts/bench.py                          # the embedded model on the legal sample data (CPU or GPU)
    python scripts/bench.py --workload llama-8b      # GPU: Llama-3-8B shape, random weights, Alpaca-like lengths
    python scripts/bench.py --steps 6 --rounds 2 --out bench-results
    python scripts/bench.py --workload tiny --steps 3   # a smoke run in seconds (CI): the script works, no figures
    python scripts/bench.py --method dpo             # DPO: lora-ft against TRL's DPOTrainer + PEFT, and lora-ft's SFT

With ``--method dpo`` the arms are those of scripts/bench_preference.py (its docstring says what each runs):
trl-dpo (the baseline), ours (lora-ft DPO) and ours-sft (lora-ft SFT on the same model, the figure the DPO
targets are stated against); the ratios printed are ours against trl-dpo and ours against ours-sft.

Both arms run the same work: same model, data, sequence length, effective batch, learning rate, seed and number of
optimizer steps. Each arm runs in a fresh process (so peak memory is its own), and the arms alternate round by round
(baseline, ours, baseline, ours, ...) so that a machine that slows down mid-run hurts both alike. The first
``--warmup`` steps of every run are not timed.

- baseline: SFTTrainer + LoraConfig as their docs show, prompt/completion data (loss on the answers), padded
  batches, no packing; 4-bit NF4 through bitsandbytes when CUDA is present; precision and gradient checkpointing set
  for the device by hand (CPU: float32, no checkpointing; GPU: bfloat16 compute, checkpointing on).
- trl-defaults (CPU only, fewer steps): the same script left at TRL's defaults of bf16 and gradient checkpointing,
  which is what a user gets without setting them. Shown as an extra row; targets are against the careful baseline.
- ours: `lora-ft train` with its defaults, only the shared work settings given with --set.

Figures: non-pad tokens/s (tokens the model reads, padding excluded), trained-label tokens/s (estimated as the
non-pad rate times the data's trained-token fraction: both arms see the same samples), seconds per optimizer
step, peak memory (RSS on a CPU; max allocated and reserved on a GPU), final logged loss, and on a GPU model FLOPs
utilisation (MFU) and hardware FLOPs utilisation (HFU).

How the FLOPs per non-pad token are counted (a multiply-add is 2 FLOPs; N = the frozen matmul weights of the
decoder layers, h = hidden size, V = vocabulary, hq = query heads x head size, f = the trained-token fraction,
P = LoRA parameters, E[L], E[L^2] = mean and mean square of the samples' token lengths):
- frozen layers: forward 2N, backward 2N (gradients to the activations only: frozen weights need none) = 4N;
- LM head: 4 h V, counted for trained positions only (TRL's loss projects only those through the head) = 4 h V f;
- LoRA: forward 2P, backward 4P (to the activations and to the LoRA weights) = 6P;
- attention scores and mixing (QK^T and AV), causal within each sample: a token at position i attends to i
  tokens, so the mean over tokens is E[L^2] / (2 E[L]), not E[L] / 2; forward 4 hq x that per layer, backward twice
  the forward (all three inputs need gradients) = 3 x forward;
- HFU adds what gradient checkpointing recomputes: the decoder layers' forward (2N + 2P + attention forward).
Peak: the GPU's dense bf16 TFLOP/s (H100 989, H200 989, A100 312).
Writes RESULTS.json and RESULTS.md under --out, and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LEGAL_CONFIG = REPO / "configs" / "legal_domain.yaml"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_preference import (DPO_CONFIG, PAIRS, SYSTEM, baseline_arguments, baseline_model, preference_workload,  # noqa: E402
                              trained)
LORA_R = 16  # both arms: the legal config's rank and the baseline's LoraConfig
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "4090": 165.0}
SHAPES = {  # Llama-architecture shapes, random weights: speed and memory only
    # a smoke workload: proves the script runs end to end in seconds (CI runs it); its figures measure nothing
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, tie_word_embeddings=True),
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "llama-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
}
WORDS = ("the tenant shall pay rent on the first day of each month consideration is something of value exchanged "
         "by each party to a contract indemnification shifts the cost of certain losses from one party to another "
         "force majeure excuses performance when events beyond control occur").split()


# --------------------------------------------------------------------------------------------------------------
# Workloads: a model directory and an alpaca-format data file


def embedded_workload(work: Path) -> tuple[Path, Path, int]:
    from lora_ft import embedded

    model_dir = embedded.ensure_embedded_model()
    return Path(model_dir), REPO / "examples" / "legal" / "train.jsonl", 512


def synthetic_workload(name: str, work: Path, tokenizer_dir: str | None = None) -> tuple[Path, Path, int]:
    """A random-weight Llama of the named shape with a local tokenizer (``--tokenizer``, else the embedded
    model's: no hub), and Alpaca-like data (long tail). The model is built in a child process, so this process
    never holds GPU memory while the arms run."""
    model_dir = work / name
    if not (model_dir / "config.json").is_file():
        command = [sys.executable, __file__, "--arm", "build", "--workload", name, "--model-dir", str(model_dir)]
        if tokenizer_dir:
            command += ["--tokenizer", tokenizer_dir]
        subprocess.run(command, check=True)
    data = work / "alpaca-like.jsonl"
    if not data.is_file():
        rng = random.Random(0)
        with data.open("w") as fh:
            for _ in range(200 if name == "tiny" else 2000):  # Alpaca: prompts median ~20 words, answers median ~50, long tails to ~1000
                prompt = min(int(rng.lognormvariate(3.0, 0.8)), 600)
                answer = min(int(rng.lognormvariate(3.9, 0.9)), 1200)
                fh.write(json.dumps({"instruction": " ".join(rng.choices(WORDS, k=max(prompt, 3))), "input": "",
                                     "output": " ".join(rng.choices(WORDS, k=max(answer, 3)))}) + "\n")
    return model_dir, data, 256 if name == "tiny" else 1024


# --------------------------------------------------------------------------------------------------------------
# The arms (each runs in its own process)


class StepClock:
    """Per optimizer step: wall time and non-pad tokens seen (the trainer counts them)."""

    def __init__(self):
        self.steps: list[dict] = []

    def callback(self):
        from transformers import TrainerCallback

        clock = self

        class _Clock(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                clock.steps.append({"step": state.global_step, "time": time.perf_counter(),
                                    "tokens": state.num_input_tokens_seen})

            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs and clock.steps:
                    clock.steps[-1]["loss"] = logs["loss"]

        return _Clock()


def run_baseline(model_dir: Path, data: Path, max_len: int, steps: int, work: Path, trl_defaults: bool) -> dict:
    """The script a careful user writes from the TRL and PEFT docs."""
    import torch
    from datasets import load_dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    cuda = torch.cuda.is_available()

    def to_prompt_completion(row):
        question = row["instruction"] + (f"\n\n{row['input']}" if row["input"] else "")
        return {"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
                "completion": [{"role": "assistant", "content": row["output"]}]}

    dataset = load_dataset("json", data_files=str(data), split="train")
    dataset = dataset.map(to_prompt_completion, remove_columns=dataset.column_names)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model, peft_config = baseline_model(model_dir)
    precision = {} if trl_defaults else {"bf16": cuda, "gradient_checkpointing": cuda}
    args = SFTConfig(**baseline_arguments(work, steps, max_len, 5e-4), **precision)
    clock = StepClock()
    return trained(SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                              peft_config=peft_config, callbacks=[clock.callback()]), clock)


def run_ours(config: Path, model_dir: Path, data: Path, max_len: int, steps: int, work: Path,
             extra: list[str] = ()) -> dict:
    """`lora-ft train` with its defaults; the shared work settings given with --set (and ``extra`` ones)."""
    from lora_ft import cli

    run_dir = work / "ours-run"
    overrides = [f"output_dir={run_dir}", f"model.base={model_dir}", f"data.train.0.path={data}", "data.eval=[]",
                 f"data.max_seq_length={max_len}", f"train.max_steps={steps}", "train.logging_steps=1",
                 "train.save_steps=null", "train.save_every_minutes=null", "train.eval_before_training=false",
                 *extra]
    code = cli.main(["train", str(config), *[a for o in overrides for a in ("--set", o)]])
    if code != 0:
        raise SystemExit(code)
    import yaml

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    steps_out = [{"step": r["step"], "time": r["time"], "tokens": r["num_input_tokens_seen"], "loss": r["loss"]}
                 for r in records if "loss" in r]
    return {"steps": steps_out, "checkpointing": bool(resolved["model"]["gradient_checkpointing"])}


def build_model(name: str, model_dir: Path, tokenizer_dir: str | None) -> None:
    """Save a random-weight model of the shape ``name`` with the tokenizer (the ``build`` arm)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if tokenizer_dir is None:
        from lora_ft import embedded

        tokenizer_dir = str(embedded.ensure_embedded_model())
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    shape = {"vocab_size": len(tokenizer), **SHAPES[name]}
    config = LlamaConfig(**shape, max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, torch_dtype="bfloat16")
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)


def arm_main(args) -> None:
    import torch

    if args.arm == "build":
        build_model(args.workload, Path(args.model_dir), args.tokenizer)
        return

    work = Path(args.work)
    model_dir, data, max_len = Path(args.model_dir), Path(args.data), args.max_len
    if args.arm == "ours":
        result = run_ours(Path(args.config), model_dir, data, max_len, args.steps, work, args.ours_overrides)
    elif args.arm == "trl-dpo":
        from bench_preference import run_trl_dpo

        result = run_trl_dpo(model_dir, data, max_len, args.steps, work, StepClock())
    else:
        result = run_baseline(model_dir, data, max_len, args.steps, work, trl_defaults=args.arm == "trl-defaults")
    result["rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if torch.cuda.is_available():
        result["gpu_allocated_bytes"] = torch.cuda.max_memory_allocated()
        result["gpu_reserved_bytes"] = torch.cuda.max_memory_reserved()
        result["gpu"] = torch.cuda.get_device_name(0)
    Path(args.result).write_text(json.dumps(result))


# --------------------------------------------------------------------------------------------------------------
# Orchestration


def token_statistics(model_dir: Path, data: Path, max_len: int) -> tuple[float, float, float]:
    """The data's trained-token fraction, and the mean and mean square of its samples' token lengths, as lora-ft
    tokenizes it."""
    from lora_ft.config import load_config
    from lora_ft import data as data_lib
    from lora_ft import model as model_lib
    from lora_ft.data import tokenization

    loaded = load_config(LEGAL_CONFIG, [f"model.base={model_dir}", f"data.train.0.path={data}", "data.eval=[]",
                                        f"data.max_seq_length={max_len}"])
    chat = model_lib.load_chat_tokenizer(loaded, loaded.config.model)
    rows = data_lib.load_data(loaded).train
    toks = tokenization.tokenize_samples(rows, chat.renderer, max_len, "answers", "truncate")
    lengths = [len(ids) for ids in toks.input_ids]
    return (toks.trained_tokens / toks.tokens, sum(lengths) / len(lengths),
            sum(n * n for n in lengths) / len(lengths))


def lora_parameters(config: dict, r: int) -> int:
    """LoRA parameters for rank ``r`` on every linear layer of a Llama-style model (what `all-linear` targets)."""
    h, inter, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    head = config.get("head_dim") or h // heads
    kv = config.get("num_key_value_heads", heads) * head
    shapes = [(h, heads * head), (h, kv), (h, kv), (heads * head, h), (h, inter), (h, inter), (inter, h)]
    return layers * sum(r * (i + o) for i, o in shapes)


def model_flops_per_token(model_dir: Path, mean_length: float, mean_square_length: float, trained_fraction: float,
                          lora_r: int, checkpointing: bool) -> tuple[float, float]:
    """(model FLOPs, hardware FLOPs) per non-pad token for LoRA training, counted as the docstring says."""
    config = json.loads((model_dir / "config.json").read_text())
    h, layers = config["hidden_size"], config["num_hidden_layers"]
    inter, vocab = config["intermediate_size"], config["vocab_size"]
    heads = config["num_attention_heads"]
    head = config.get("head_dim") or h // heads
    kv = config.get("num_key_value_heads", heads) * head
    hq = heads * head
    frozen = layers * (h * hq + 2 * h * kv + hq * h + 3 * h * inter)  # N: q, k, v, o and the three MLP matrices
    lora = lora_parameters(config, lora_r)
    attended = mean_square_length / (2 * mean_length)  # mean tokens a token attends to, causal within its sample
    attention_forward = layers * 4 * hq * attended
    model = 4 * frozen + 4 * h * vocab * trained_fraction + 6 * lora + 3 * attention_forward
    recomputed = 2 * frozen + 2 * lora + attention_forward if checkpointing else 0
    return model, model + recomputed


def summarize(run: dict, warmup: int) -> dict:
    steps = run["steps"]
    timed = steps[warmup:]
    if len(timed) < 2:
        raise SystemExit("too few steps to time: raise --steps")
    seconds = timed[-1]["time"] - timed[0]["time"]
    tokens = timed[-1]["tokens"] - timed[0]["tokens"]
    out = {"tokens_per_s": tokens / seconds, "step_s": seconds / (len(timed) - 1), "gpu": run.get("gpu"),
           "final_loss": next((s["loss"] for s in reversed(steps) if "loss" in s), None),
           "losses": [s.get("loss") for s in steps], "rss_gib": run["rss_bytes"] / 2**30,
           "checkpointing": run.get("checkpointing")}
    if "gpu_allocated_bytes" in run:
        out["gpu_allocated_gib"] = run["gpu_allocated_bytes"] / 2**30
        out["gpu_reserved_gib"] = run["gpu_reserved_bytes"] / 2**30
    return out


def cpu_flags() -> str:
    """The CPU flags that decide bfloat16 and matrix speed (figures differ between machines that have them and not)."""
    try:
        line = next(x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown"
    flags = set(line.split(":", 1)[1].split())
    return " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags) or "no AVX2"


def environment(gpu: str | None = None) -> dict:
    from lora_ft.rundir.artifacts import package_versions

    info = {"machine": platform.platform(), "cpu": platform.processor() or platform.machine(),
            "cpu_flags": cpu_flags(), "cpu_count": os.cpu_count(), "packages": package_versions()}
    if gpu:
        info["gpu"] = gpu  # as the arms saw it: the parent process never starts a CUDA context
    return info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=["legal", *SHAPES], default="legal")
    parser.add_argument("--method", choices=["sft", "dpo"], default="sft",
                        help="sft (default): lora-ft against TRL's SFTTrainer; dpo: against TRL's DPOTrainer")
    parser.add_argument("--steps", type=int, default=7, help="optimizer steps per run (default 7)")
    parser.add_argument("--warmup", type=int, default=1, help="first steps not timed (default 1)")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds of baseline and ours")
    parser.add_argument("--defaults-steps", type=int, default=3,
                        help="steps for the TRL-defaults row on a CPU (0 leaves it out)")
    parser.add_argument("--out", default="bench-results", help="folder for RESULTS.json and RESULTS.md")
    parser.add_argument("--set", dest="ours_overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra config override for the `ours` arm (repeatable), e.g. to compare "
                        "train.optimizer=paged_adamw_8bit with the default")
    parser.add_argument("--tokenizer", help="synthetic workloads: a local tokenizer folder (default: the embedded "
                        "model's, fetched once through the package index)")
    parser.add_argument("--arm", help=argparse.SUPPRESS)
    for hidden in ("--config", "--model-dir", "--data", "--max-len", "--work", "--result"):
        parser.add_argument(hidden, help=argparse.SUPPRESS, type=int if hidden == "--max-len" else str)
    args = parser.parse_args()
    if args.arm:
        arm_main(args)
        return 0

    import torch

    cuda = torch.cuda.is_available()
    if args.workload not in ("legal", "tiny") and not cuda:
        raise SystemExit(f"--workload {args.workload} needs a CUDA GPU (random-weight {args.workload} on a CPU "
                         "measures nothing useful)")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="lora-ft-bench-"))
    model_dir, data, max_len = (embedded_workload(work) if args.workload == "legal"
                                else synthetic_workload(args.workload, work, args.tokenizer))
    fraction, mean_length, mean_square_length = token_statistics(model_dir, data, max_len)
    pairs = PAIRS if args.workload == "legal" else preference_workload(data, work)

    plan = []
    for _ in range(args.rounds):
        if args.method == "dpo":
            plan += [("trl-dpo", args.steps), ("ours", args.steps), ("ours-sft", args.steps)]
        else:
            plan += [("baseline", args.steps), ("ours", args.steps)]
    if not cuda and args.defaults_steps and args.method == "sft":
        plan.append(("trl-defaults", args.defaults_steps))
    runs: dict[str, list[dict]] = {}
    for i, (arm, steps) in enumerate(plan, 1):
        print(f"[{i}/{len(plan)}] {arm}: {steps} steps ...", flush=True)
        arm_work = work / f"{arm}-{i}"
        arm_work.mkdir()
        result_file = arm_work / "result.json"
        started = time.perf_counter()
        config, arm_data, overrides = LEGAL_CONFIG, data, args.ours_overrides
        if args.method == "dpo" and arm != "ours-sft":  # the DPO arms read the pairs; ours starts from the base
            config, arm_data, overrides = DPO_CONFIG, pairs, ["model.adapter=null", *args.ours_overrides]
        proc = subprocess.run(
            [sys.executable, __file__, "--arm", "ours" if arm == "ours-sft" else arm, "--config", str(config),
             "--model-dir", str(model_dir), "--data", str(arm_data), "--max-len", str(max_len), "--steps",
             str(steps), "--work", str(arm_work), "--result", str(result_file),
             *(a for o in overrides for a in ("--set", o))],
            capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"the {arm} run failed (exit {proc.returncode})")
        summary = summarize(json.loads(result_file.read_text()), min(args.warmup, steps - 2))
        summary["wall_s"] = time.perf_counter() - started
        runs.setdefault(arm, []).append(summary)
        print(f"      {summary['tokens_per_s']:.0f} non-pad tok/s, {summary['step_s']:.2f} s/step, "
              f"peak RSS {summary['rss_gib']:.2f} GiB", flush=True)

    rows = {}
    for arm, results in runs.items():
        row = {key: statistics.median(r[key] for r in results)
               for key in ("tokens_per_s", "step_s", "rss_gib") if all(key in r for r in results)}
        for key in ("gpu_allocated_gib", "gpu_reserved_gib"):
            if all(key in r for r in results):
                row[key] = statistics.median(r[key] for r in results)
        sft_arm = args.method == "sft" or arm == "ours-sft"  # the trained fraction is the SFT data's
        row["trained_tokens_per_s"] = row["tokens_per_s"] * fraction if sft_arm else None
        row["final_loss"] = results[-1]["final_loss"]
        row["losses"] = results[-1]["losses"]
        row["runs"] = len(results)
        if cuda:
            gpu = results[-1].get("gpu", "")
            peak = next((v for k, v in PEAK_TFLOPS.items() if k in gpu), None)
            model_flops, hardware_flops = model_flops_per_token(model_dir, mean_length, mean_square_length, fraction,
                                                                LORA_R, bool(results[-1]["checkpointing"]))
            if peak:
                row["mfu"] = row["tokens_per_s"] * model_flops / (peak * 1e12)
                row["hfu"] = row["tokens_per_s"] * hardware_flops / (peak * 1e12)
        rows[arm] = row
    base, ours = rows["trl-dpo" if args.method == "dpo" else "baseline"], rows["ours"]
    ratios = {"tokens_per_s": ours["tokens_per_s"] / base["tokens_per_s"], "rss": ours["rss_gib"] / base["rss_gib"]}
    if args.method == "dpo":
        sft = rows["ours-sft"]
        ratios["tokens_per_s_vs_sft"] = ours["tokens_per_s"] / sft["tokens_per_s"]
        ratios["rss_vs_sft"] = ours["rss_gib"] / sft["rss_gib"]
        if "gpu_reserved_gib" in ours:
            ratios["gpu_reserved_vs_sft"] = ours["gpu_reserved_gib"] / sft["gpu_reserved_gib"]
    if "gpu_reserved_gib" in ours:
        ratios["gpu_reserved"] = ours["gpu_reserved_gib"] / base["gpu_reserved_gib"]
        ratios["gpu_allocated"] = ours["gpu_allocated_gib"] / base["gpu_allocated_gib"]
    command = "python scripts/bench.py " + " ".join(sys.argv[1:])
    report = {"workload": args.workload, "method": args.method, "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds,
              "max_seq_length": max_len, "effective_batch": 8, "trained_fraction": fraction,
              "environment": environment(next((r[-1].get("gpu") for r in runs.values() if r[-1].get("gpu")), None)),
              "command": command.strip(), "rows": rows, "ratios": ratios}
    (out_dir / "RESULTS.json").write_text(json.dumps(report, indent=2))
    table = render(report)
    (out_dir / "RESULTS.md").write_text(table)
    print("\n" + table)
    return 0


def render(report: dict) -> str:
    rows, env = report["rows"], report["environment"]
    gpu = "gpu_reserved_gib" in rows["ours"]
    head = ["arm", "non-pad tok/s", "trained tok/s", "s/step",
            *(["GPU alloc GiB", "GPU reserved GiB", "MFU", "HFU"] if gpu else ["peak RSS GiB"]), "final loss"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for arm, r in rows.items():
        memory = ([f"{r['gpu_allocated_gib']:.2f}", f"{r['gpu_reserved_gib']:.2f}",
                   f"{100 * r['mfu']:.1f}%" if "mfu" in r else "n/a", f"{100 * r['hfu']:.1f}%" if "hfu" in r else "n/a"]
                  if gpu else [f"{r['rss_gib']:.2f}"])
        trained = "n/a" if r["trained_tokens_per_s"] is None else f"{r['trained_tokens_per_s']:.0f}"
        lines.append(f"| {arm} | {r['tokens_per_s']:.0f} | {trained} | {r['step_s']:.2f} | "
                     + " | ".join(memory) + f" | {r['final_loss']:.4f} |")
    ratio = report["ratios"]
    memory_ratio = (f"GPU reserved memory {ratio['gpu_reserved']:.2f}x, allocated {ratio['gpu_allocated']:.2f}x"
                    if gpu else f"peak RSS {ratio['rss']:.2f}x")
    return "\n".join([
        f"workload: {report['workload']}; {report['steps']} steps of effective batch {report['effective_batch']}, "
        f"max length {report['max_seq_length']}, first {report['warmup']} untimed; {report['rounds']} round(s)",
        f"machine: {env.get('gpu') or env['cpu']}, {env['cpu_count']} CPUs (flags: {env.get('cpu_flags', '?')}); "
        f"{env['machine']}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in env["packages"].items()),
        f"command: {report['command']}",
        "",
        *lines,
        "",
        f"ours / {'trl-dpo' if report.get('method') == 'dpo' else 'baseline'}: non-pad tokens/s "
        f"{ratio['tokens_per_s']:.2f}x, {memory_ratio}",
        *([f"ours (dpo) / ours-sft: non-pad tokens/s {ratio['tokens_per_s_vs_sft']:.2f}x, "
           + (f"GPU reserved memory {ratio['gpu_reserved_vs_sft']:.2f}x" if gpu else
              f"peak RSS {ratio['rss_vs_sft']:.2f}x")] if "tokens_per_s_vs_sft" in ratio else []),
    ]) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
