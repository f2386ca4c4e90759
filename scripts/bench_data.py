"""Benchmark reading and tokenizing large data: `lora-ft data` on synthetic alpaca rows, first run and cached run.

    python scripts/bench_data.py                                     # 20k and 200k rows
    python scripts/bench_data.py --rows 20000 200000 1000000 --baseline 3485540
    python scripts/bench_data.py --method dpo --rows 20000 --baseline REF   # preference pairs

For each size it writes a synthetic alpaca JSONL (varied instructions, optional inputs and answers of realistic
length, seeded), empties the tokenized-data cache, then runs `lora-ft data CONFIG` twice, each in a fresh process:
the first run (reads and tokenizes) and the second (the cache answers). With --baseline, the same two runs of the
code at that commit (a git worktree), in the same invocation, so both are measured on the same machine and hour.
Figures per run: wall seconds, rows per second, and the peak memory of the process and its tokenizing workers
together (the sum of their proportional set sizes, sampled every 50 ms: pages the forked workers share are counted
once). The config is the legal one with the embedded model's tokenizer and chat template, max_seq_length 512, no
eval file (5% held out). ``--method dpo``: the same rows as preference pairs (the answer chosen, another row's answer
rejected), under method: dpo.

Prints the machine (CPU model, cores, bfloat16 flags) with the table, and writes RESULTS.json and RESULTS.md under
--out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
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


def synthetic_pairs(count: int, seed: int = 0):
    """The rows as preference pairs: the prompt, its answer chosen, the previous row's answer rejected."""
    previous = None
    for row in synthetic_rows(count + 1, seed):
        if previous is not None:
            prompt = row["instruction"] + (f"\n\n{row['input']}" if row["input"] else "")
            yield {"prompt": prompt, "chosen": row["output"], "rejected": previous}
        previous = row["output"]


def write_data(path: Path, count: int, method: str = "sft") -> None:
    if path.is_file() and sum(1 for _ in path.open()) == count:
        return
    with path.open("w") as out:
        for row in synthetic_rows(count) if method == "sft" else synthetic_pairs(count):
            out.write(json.dumps(row) + "\n")


def write_config(path: Path, data: Path, cache: bool = True, method: str = "sft") -> None:
    """The legal settings on the synthetic data; ``cache``: with this tree's data.cache_dir (the baseline's code
    has no such key)."""
    cache_line = f"  cache_dir: {path.parent / 'cache'}\n" if cache else ""
    path.write_text(f"""method: {method}
output_dir: {path.parent / 'run'}
model:
  base: embedded
data:
  train:
    - path: {data}
  system_prompt: You are a careful legal assistant.
  max_seq_length: 512
{cache_line}""")


def _tree(pid: int) -> list[int]:
    """The process and every descendant (the tokenizing workers)."""
    found, at = [pid], 0
    while at < len(found):
        try:
            for task in Path(f"/proc/{found[at]}/task").iterdir():
                found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
        at += 1
    return found


def _pss_kib(pid: int) -> int:
    """Proportional set size: pages shared between processes (forked workers) counted once in a sum."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_data(config: Path, source: Path, extra: list[str]) -> dict:
    """`lora-ft data CONFIG` (from the tree ``source``) in a fresh process: wall seconds and the peak memory of
    the process and its workers together (sum of PSS, sampled every 50 ms)."""
    env = {**os.environ, "PYTHONPATH": str(source)}
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "lora_ft", "data", str(config), *extra], cwd=source, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while child.poll() is None:
        peak = max(peak, sum(_pss_kib(pid) for pid in _tree(child.pid)))
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    out, err = child.communicate()
    if child.returncode != 0:
        raise SystemExit(f"lora-ft data failed ({child.returncode}):\n{out[-4000:]}\n{err[-2000:]}")
    return {"seconds": seconds, "peak_gib": peak / 2**20, "cached": "reused from the cache" in out}


def machine() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
        flags = next(line for line in info.splitlines() if line.startswith("flags")).split()
        bf16 = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags) or "none"
    except (OSError, StopIteration):
        model, bf16 = platform.processor(), "unknown"
    return f"{model}, {os.cpu_count()} cores, flags: {bf16}; Python {platform.python_version()}"


def baseline_tree(ref: str, out: Path) -> Path:
    """A checkout of ``ref`` (a commit before the change measured) to run side by side with this tree."""
    tree = out / f"baseline-{ref}"
    if not tree.is_dir():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), ref], cwd=REPO, check=True,
                       capture_output=True)
    return tree


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--method", choices=("sft", "dpo"), default="sft",
                        help="sft: instruction rows; dpo: the same rows as preference pairs")
    parser.add_argument("--out", default="bench-data")
    parser.add_argument("--baseline", metavar="GIT_REF",
                        help="also run `lora-ft data` from this commit (before the change), in the same run")
    parser.add_argument("--baseline-max-rows", type=int, default=200_000,
                        help="largest set the baseline runs on (it holds every row in memory)")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}; method: {args.method}", flush=True)
    trees = [("this tree", REPO)] + ([(f"baseline {args.baseline}", baseline_tree(args.baseline, out))]
                                     if args.baseline else [])
    results = []
    for count in sorted(args.rows):
        work = out / (f"rows-{count}" if args.method == "sft" else f"{args.method}-{count}")
        work.mkdir(exist_ok=True)
        data = work / "train.jsonl"
        write_data(data, count, args.method)
        write_config(work / "run.yaml", data, method=args.method)
        write_config(work / "baseline.yaml", data, cache=False, method=args.method)
        for name, tree in trees:
            if tree != REPO and count > args.baseline_max_rows:
                continue
            shutil.rmtree(work / "cache", ignore_errors=True)
            for attempt in ("first", "second"):
                figures = run_data(work / ("run.yaml" if tree == REPO else "baseline.yaml"), tree, [])
                results.append({"code": name, "rows": count, "run": attempt, "megabytes": data.stat().st_size / 1e6,
                                **figures, "rows_per_second": count / figures["seconds"]})
                row = results[-1]
                print(f"{name}: {count:>9,} rows ({row['megabytes']:.0f} MB), {attempt} run: {row['seconds']:.1f} s, "
                      f"{row['rows_per_second']:,.0f} rows/s, peak {row['peak_gib']:.2f} GiB"
                      + (" (cache reused)" if row["cached"] else ""), flush=True)
            shutil.rmtree(work / "cache", ignore_errors=True)
    lines = [f"Machine: {machine()}; method: {args.method}", "",
             "| code | rows | MB | run | seconds | rows/s | peak GiB (PSS, with workers) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in results:
        run = row["run"] + (" (cached)" if row["cached"] else "")
        lines.append(f"| {row['code']} | {row['rows']:,} | {row['megabytes']:.0f} | {run} | {row['seconds']:.1f} | "
                     f"{row['rows_per_second']:,.0f} | {row['peak_gib']:.2f} |")
    name = "RESULTS" if args.method == "sft" else f"RESULTS-{args.method}"
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    (out / f"{name}.json").write_text(json.dumps({"machine": machine(), "method": args.method, "results": results},
                                                 indent=2) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
