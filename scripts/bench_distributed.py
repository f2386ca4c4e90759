"""DDP and FSDP2 side by side on this machine's CPU processes (gloo): steps per second and each process's peak
memory (RSS), for one tiny-but-not-trivial Llama (random weights, built here) and the same config.

    .venv/bin/python scripts/bench_distributed.py                 # hidden 256, 4 layers, 20 steps, 2 processes
    .venv/bin/python scripts/bench_distributed.py --smoke         # seconds: hidden 64, 2 layers, 3 steps

Each strategy runs through `lora-ft train CONFIG --nproc N`; the processes' peak RSS is read from /proc (VmHWM)
while they run, and the step rate from the metrics log's timestamps (first step left out: warm-up). Both processes
step together, so the rate is the same for every process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CORPUS = ["A contract is a legally binding agreement between two or more parties.",
          "Consideration is something of value exchanged by each party to a contract.",
          "The tenant shall pay rent on the first day of each month.",
          "Indemnification shifts the cost of certain losses from one party to another.",
          "hello world the quick brown fox jumps over the lazy dog 0123456789 ,.;:!?'\"()[]{}"]
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
          "{% endif %}")


def build_model(directory: Path, hidden: int, layers: int) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS * 20, trainer=trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", bos_token="<|im_start|>",
                                   unk_token="<|endoftext|>", pad_token="<|im_end|>")
    fast.chat_template = CHATML
    fast.save_pretrained(directory)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                         tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(directory, safe_serialization=True)


def write_run(out: Path, model: Path, steps: int, batch: int) -> Path:
    rows = [{"instruction": f"{CORPUS[i % 4]} Question {i}: what does it mean?", "input": "",
             "output": " ".join([CORPUS[(i + j) % 4] for j in range(1 + i % 4)])} for i in range(96)]
    (out / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = out / "bench.yaml"
    config.write_text(f"""output_dir: {out / 'unused'}
model:
  base: {model}
data:
  train:
    - path: {out / 'train.jsonl'}
  max_seq_length: 256
  eval_fraction: 0
train:
  max_steps: {steps}
  batch_size: {batch}
  logging_steps: 1
  save_steps: null
  eval_before_training: false
""", encoding="utf-8")
    return config


def peak_rss(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def workers(pid: int) -> list[int]:
    try:
        tasks = Path(f"/proc/{pid}/task")
        return sorted(int(p) for t in tasks.iterdir() for p in (t / "children").read_text().split())
    except OSError:
        return []


def run(config: Path, out: Path, strategy: str, nproc: int) -> dict:
    run_dir = out / strategy
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // nproc)),
           "PYTHONPATH": str(REPO), "LORA_FT_CPU_BF16": "0"}
    log_file = out / f"{strategy}.log"
    with log_file.open("w") as log:  # a file, not a pipe: a full pipe would stall the run
        launcher = subprocess.Popen([sys.executable, "-m", "lora_ft", "train", str(config), "--nproc", str(nproc),
                                     "--set", f"distributed.strategy={strategy}", "--set", f"output_dir={run_dir}"],
                                    stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
    peaks: dict[int, int] = {}
    ranks: list[int] = []
    while launcher.poll() is None:
        for pid in workers(launcher.pid):
            if pid not in ranks:
                ranks.append(pid)
            rss = peak_rss(pid)
            if rss:
                peaks[pid] = max(peaks.get(pid, 0), rss)
        time.sleep(0.1)
    if launcher.returncode != 0:
        raise SystemExit(f"{strategy} run failed ({launcher.returncode}):\n{log_file.read_text()[-3000:]}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [(r["step"], r["time"]) for r in records if "loss" in r]
    (s0, t0), (s1, t1) = steps[0], steps[-1]
    return {"strategy": strategy, "steps": s1, "steps_per_s": (s1 - s0) / (t1 - t0) if t1 > t0 else 0.0,
            "peak_rss_bytes": [peaks.get(pid, 0) for pid in ranks[:nproc]],
            "final_loss": [r["loss"] for r in records if "loss" in r][-1]}


def cpu_flags() -> str:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = set()
    return " ".join(f"{f}={'yes' if f in flags else 'no'}" for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4, help="per process")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--out", default="bench-distributed")
    parser.add_argument("--smoke", action="store_true", help="hidden 64, 2 layers, 3 steps: seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.hidden, args.layers, args.steps = 64, 2, 3
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    build_model(out / "model", args.hidden, args.layers)
    config = write_run(out, out / "model", args.steps, args.batch)
    rows = [run(config, out, strategy, args.nproc) for strategy in ("ddp", "fsdp")]
    print(f"cpu: {os.cpu_count()} cores; flags: {cpu_flags()}")
    print(f"model: Llama, hidden {args.hidden}, {args.layers} layers, LoRA r=16 all-linear, float32; "
          f"{args.nproc} processes (gloo), batch {args.batch} per process, {args.steps} steps")
    print("| strategy | steps/s (each process) | s/step | " + " | ".join(
        f"rank {r} peak RSS" for r in range(args.nproc)) + " | final loss |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in range(args.nproc)) + " | --- |")
    for row in rows:
        rss = " | ".join(f"{b / 2**20:,.0f} MiB" for b in row["peak_rss_bytes"])
        rate = row["steps_per_s"]
        print(f"| {row['strategy']} | {rate:.2f} | {1 / rate if rate else float('nan'):.2f} | {rss} | "
              f"{row['final_loss']:.4f} |")
    (out / "RESULTS.json").write_text(json.dumps({"cpu_flags": cpu_flags(), "args": vars(args), "rows": rows},
                                                 indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
