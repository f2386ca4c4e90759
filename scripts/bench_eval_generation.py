"""Benchmark eval generation: the answers `lora-ft eval` gives, decoded the way it did before (fixed batches)
and the way it does now (a batch kept full), on the same finished run and prompts, in one invocation.

    python scripts/bench_eval_generation.py runs/legal-domain
    python scripts/bench_eval_generation.py runs/legal-domain --prompts 70 --batch-size 32 --max-new-tokens 256
    python scripts/bench_eval_generation.py runs/legal-domain --one-at-a-time   # also one prompt at a time

Arms (greedy, the same max_new_tokens; the tuned model = base + the run's adapter, merged into the float32 weights
in memory on a CPU, as `lora-ft eval` runs; then the base model, the adapter off):
- fixed batches (before): prompts sorted by length in batches of even size, each decoded by ``model.generate``
  with the KV cache, rows that stopped leaving the batch every 32 tokens (``decode_in_batches``);
- refilling (after, what `lora-ft eval` runs): one batch kept full: rows that stop leave, waiting prompts are
  prefilled into it (``decode_refilling``);
- one at a time (``--one-at-a-time``): ``inference.generate`` per prompt, as `lora-ft generate` runs.

Figures: generated tokens per second (answer tokens through the end-of-turn token) and wall seconds per arm and
model, and how many answers are identical between the arms (the refilling arm must give the fixed batches'
answers, prompt by prompt).
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
    parser.add_argument("--prompts", type=int, default=70, help="eval prompts to answer (default 70)")
    parser.add_argument("--batch-size", type=int, default=64, help="rows decoded at once (default 64, as eval)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--one-at-a-time", action="store_true", help="also answer one prompt at a time (slow)")
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
    conversations = [s.messages[:-1] for s in loaded.eval if s.messages][: args.prompts]
    model = inference.load_tuned(run)
    tokenizer = inference.load_tokenizer(run)
    print(f"machine: {machine()}")
    print(f"run: {run.run_dir}; {len(conversations)} prompts from {loaded.eval_source}; max_new_tokens "
          f"{args.max_new_tokens}; batch size {args.batch_size}")

    def timed(arm):
        started = time.perf_counter()
        answers = arm()
        return answers, time.perf_counter() - started

    def batched(refill: bool):
        return inference.generate_batch(model, tokenizer, run, conversations, args.max_new_tokens, args.batch_size,
                                        refill=refill)

    rows = [("model", "arm", "answers", "tokens", "seconds", "tokens/s")]
    equal = {}
    for label in ("tuned", "base"):
        with (inference.merged_adapter(model) if label == "tuned" else model.disable_adapter()):
            before, before_s = timed(lambda: batched(False))
            after, after_s = timed(lambda: batched(True))
            arms = [("fixed batches (before)", before, before_s), ("refilling (after)", after, after_s)]
            if args.one_at_a_time:
                single, single_s = timed(lambda: [inference.generate(model, tokenizer, run, c, args.max_new_tokens)
                                                  for c in conversations])
                arms.append(("one at a time", [inference.Answer(text, stopped, len(tokenizer(
                    text, add_special_tokens=False)["input_ids"]) + stopped) for text, stopped in single], single_s))
        for arm, answers, seconds in arms:
            tokens = sum(a.tokens for a in answers)
            rows.append((label, arm, str(len(answers)), f"{tokens:,}", f"{seconds:.1f}",
                         f"{tokens / seconds:.1f}" if seconds else "n/a"))
        equal[label] = sum(a.text == b.text for a, b in zip(before, after))
        rows.append((label, "speed-up", "", "", "", f"{before_s / after_s:.2f}x" if after_s else "n/a"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths)))
    for label, same in equal.items():
        print(f"{label}: refilling vs fixed batches: {same}/{len(conversations)} answers identical")
    return 0 if all(same == len(conversations) for same in equal.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
