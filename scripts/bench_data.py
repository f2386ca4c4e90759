"""Benchmark reading and tokenizing large data: `lora-ft data` on synthetic alpaca rows, first run and second run.

    python scripts/bench_data.py                       # 20k and 200k rows
    python scripts/bench_data.py --rows 20000 200000 1000000 --out bench-data

For each size it writes a synthetic alpaca JSONL (varied instructions, optional inputs and answers of realistic
length, seeded), then runs `lora-ft data CONFIG` twice, each in a fresh process: the first run, and a second one
that a tokenized-data cache would answer. Figures per run: wall seconds, rows per second, and peak RSS of the process
(from the kernel's accounting of the finished child). The config is the legal one with the embedded model's
tokenizer and chat template, max_seq_length 512, no eval file (5% held out).

Prints the machine (CPU model, cores, bfloat16 flags) with the table, and writes RESULTS.json and RESULTS.md under
--out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SUBJECTS = ("lease", "employment contract", "non-disclosure agreement", "loan agreement", "purchase order",
            "software licence", "partnership deed", "insurance policy", "service agreement", "will")
VERBS = ("Explain", "Summarise", "What does this clause in a", "List the risks in a", "Rewrite in plain English a",
         "Who benefits from a", "How would a court read a", "Draft a short reply about a")
WORDS = ("the party shall pay on demand any amount due under this agreement within thirty days of notice and "
         "the tenant may terminate if the landlord fails to repair the premises after written request consideration "
         "is something of value exchanged by each party indemnification shifts the cost of certain losses force "
         "majeure excuses performance when events beyond control occur").split()


def synthetic_rows(count: int, seed: int = 0):
    rng = random.Random(seed)
    for index in range(count):
        subject = rng.choice(SUBJECTS)
        instruction = f"{rng.choice(VERBS)} {subject} (case {index})."
        passage = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))) if rng.random() < 0.4 else ""
        answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(30, 120))).capitalize() + "."
        yield {"instruction": instruction, "input": passage, "output": answer}


def write_data(path: Path, count: int) -> None:
    if path.is_file() and sum(1 for _ in path.open()) == count:
        return
    with path.open("w") as out:
        for row in synthetic_rows(count):
            out.write(json.dumps(row) + "\n")


def write_config(path: Path, data: Path) -> None:
    path.write_text(f"""output_dir: {path.parent / 'run'}
model:
  base: embedded
data:
  train:
    - path: {data}
  system_prompt: You are a careful legal assistant.
  max_seq_length: 512
""")


# Runs `lora-ft data` as its own child and reports that child's peak RSS: a fresh wrapper per measurement, so the
# kernel's "largest child" figure belongs to that run alone.
WRAPPER = """
import json, resource, subprocess, sys
done = subprocess.run([sys.executable, "-m", "lora_ft", "data", sys.argv[1]], capture_output=True, text=True)
print(json.dumps({"rc": done.returncode, "out": done.stdout[-4000:], "err": done.stderr[-2000:],
                  "peak_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def run_data(config: Path) -> dict:
    """`lora-ft data CONFIG` in a fresh process: wall seconds and its peak RSS."""
    started = time.perf_counter()
    wrapper = subprocess.run([sys.executable, "-c", WRAPPER, str(config)], cwd=REPO, capture_output=True, text=True,
                             check=True)
    seconds = time.perf_counter() - started
    done = json.loads(wrapper.stdout.strip().splitlines()[-1])
    if done["rc"] != 0:
        raise SystemExit(f"lora-ft data failed ({done['rc']}):\n{done['out']}\n{done['err']}")
    return {"seconds": seconds, "peak_rss_gib": done["peak_kib"] / 2**20,
            "cached": "cache" in done["out"].lower() and "reus" in done["out"].lower()}


def machine() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
        flags = next(line for line in info.splitlines() if line.startswith("flags")).split()
        bf16 = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags) or "none"
    except (OSError, StopIteration):
        model, bf16 = platform.processor(), "unknown"
    return f"{model}, {os.cpu_count()} cores, flags: {bf16}; Python {platform.python_version()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--out", default="bench-data")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}", flush=True)
    results = []
    for count in sorted(args.rows):
        work = out / f"rows-{count}"
        work.mkdir(exist_ok=True)
        data = work / "train.jsonl"
        write_data(data, count)
        write_config(work / "run.yaml", data)
        for attempt in ("first", "second"):
            figures = run_data(work / "run.yaml")
            results.append({"rows": count, "run": attempt, "megabytes": data.stat().st_size / 1e6, **figures,
                            "rows_per_second": count / figures["seconds"]})
            row = results[-1]
            peak = f"{row['peak_rss_gib']:.2f}"
            print(f"{count:>9,} rows ({row['megabytes']:.0f} MB), {attempt} run: {row['seconds']:.1f} s, "
                  f"{row['rows_per_second']:,.0f} rows/s, peak RSS {peak} GiB"
                  + (" (cache reused)" if row["cached"] else ""), flush=True)
    lines = [f"Machine: {machine()}", "", "| rows | MB | run | seconds | rows/s | peak RSS GiB |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in results:
        peak = f"{row['peak_rss_gib']:.2f}"
        lines.append(f"| {row['rows']:,} | {row['megabytes']:.0f} | {row['run']} | {row['seconds']:.1f} | "
                     f"{row['rows_per_second']:,.0f} | {peak} |")
    (out / "RESULTS.md").write_text("\n".join(lines) + "\n")
    (out / "RESULTS.json").write_text(json.dumps({"machine": machine(), "results": results}, indent=2) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
