"""Benchmark eval generation: one prompt at a time (what `lora-ft generate` does) against `lora-ft eval`'s
batched generation, on the same finished run and prompts, in one invocation.

    python scripts/bench_eval_generation.py runs/legal-domain
    python scripts/bench_eval_generation.py runs/legal-domain --prompts 32 --batch-size 16 --max-new-tokens 256

Arms (greedy, the same max_new_tokens, the tuned model = base + the run's adapter):
- one-at-a-time: ``inference.generate`` per prompt, the adapter unmerged (as `lora-ft generate` runs);
- batched: ``inference.generate_batch`` (prompts sorted by length, left padding, KV cache), the adapter merged in
  memory on a CPU (``inference.merged_adapter``), as `lora-ft eval` runs.

Figures: generated tokens per second (answer tokens up to and including the end-of-turn token; the padding a
batch generates after a row has finished is not counted) and wall seconds. It also checks that the answers are
equal, prompt by prompt, between one-at-a-time and batched with the adapter merged the same way (the equality the
suite asserts on tiny models), and reports how many differ between the two arms as run (merged vs unmerged
weights may round differently).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def machine() -> str:
    import torch

    if torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    flags = ""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        line = next(x for x in cpuinfo.splitlines() if x.startswith("flags"))
        wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
        flags = " ".join(f for f in wanted if f" {f}" in line) or "no AVX2"
    except (OSError, StopIteration):
        pass
    return (f"CPU {platform.machine()}, {torch.get_num_threads()} threads, flags: {flags}; torch {torch.__version__}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--prompts", type=int, default=16, help="eval prompts to answer (default 16)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    args = parser.parse_args()

    from lora_ft import console, inference
    from lora_ft.config import LoadedConfig
    from lora_ft.data import load_data
    from lora_ft.evaluation.run import eval_config
    from lora_ft.rundir.finished import open_run

    console.quiet_libraries()
    run = open_run(args.run_dir)
    config = eval_config(run)  # the run's own eval data: its eval files, or the same held-out split
    with console.silenced():
        loaded = load_data(LoadedConfig(config, None, []))
    source = loaded.eval_source
    conversations = [s.messages[:-1] for s in loaded.eval if s.messages][: args.prompts]
    model = inference.load_tuned(run)
    tokenizer = inference.load_tokenizer(run)
    print(f"machine: {machine()}")
    print(f"run: {run.run_dir}; {len(conversations)} prompts from {source}; max_new_tokens {args.max_new_tokens}")

    started = time.perf_counter()
    single = [inference.generate(model, tokenizer, run, c, args.max_new_tokens) for c in conversations]
    single_s = time.perf_counter() - started
    single_tokens = sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) + stopped
                        for text, stopped in single)

    with inference.merged_adapter(model):
        started = time.perf_counter()
        batched = inference.generate_batch(model, tokenizer, run, conversations, args.max_new_tokens,
                                           args.batch_size)
        batched_s = time.perf_counter() - started
        # the same weights, one at a time: batching itself must not change a greedy answer
        check = [inference.generate(model, tokenizer, run, c, args.max_new_tokens)[0]
                 for c in conversations[: min(8, len(conversations))]]
    batched_tokens = sum(a.tokens for a in batched)
    same_weights = sum(a.text == b for a, b in zip(batched, check))
    as_run = sum(a.text == b[0] for a, b in zip(batched, single))

    rows = [("arm", "answers", "tokens", "seconds", "tokens/s"),
            ("one at a time (unmerged)", str(len(single)), str(single_tokens), f"{single_s:.1f}",
             f"{single_tokens / single_s:.1f}"),
            (f"batched x{args.batch_size} (merged on CPU)", str(len(batched)), str(batched_tokens),
             f"{batched_s:.1f}", f"{batched_tokens / batched_s:.1f}")]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths)))
    if single_tokens and batched_tokens:
        print(f"speed-up: {(batched_tokens / batched_s) / (single_tokens / single_s):.2f}x")
    else:  # a model whose answers are all empty (a tiny test model) generates nothing to time
        print("speed-up: n/a (no answer tokens were generated)")
    print(f"batched vs one at a time on the same weights: {same_weights}/{len(check)} answers equal")
    print(f"batched (merged) vs one at a time (unmerged): {as_run}/{len(single)} answers equal")
    return 0 if same_weights == len(check) else 1


if __name__ == "__main__":
    raise SystemExit(main())
