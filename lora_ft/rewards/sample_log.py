"""``completions.jsonl`` in the run directory: every N steps, the answers the policy sampled with each reward and
their weighted total, and at each held-out evaluation the greedy answers and their scores -- where reward hacking
shows first (answers that score without doing the task). One JSON object per answer."""

from __future__ import annotations

import json
import math
from pathlib import Path


class SampleLog:
    def __init__(self, path: Path, every: int, labels: list[str]) -> None:
        self.path, self.every, self.labels = path, every, labels
        self._trimmed = False

    def _append(self, rows: list[dict], step: int) -> None:
        if not self._trimmed:  # a resumed run: what the interrupted session wrote after the checkpoint goes
            self._trimmed = True
            if self.path.is_file():
                kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                        if line.strip() and json.loads(line).get("step", 0) < step]
                self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        with self.path.open("a", encoding="utf-8") as out:
            for row in rows:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")

    def write(self, step: int, split: str, prompts: list[str], completions: list, rewards: list[list[float]],
              weights: list[float]) -> None:
        """A training step's sampled answers (``step``: the step they train), when the step is due."""
        if not self.every or (step != 1 and step % self.every):
            return
        rows = []
        for prompt, completion, values in zip(prompts, completions, rewards):
            named = {label: (None if math.isnan(v) else v) for label, v in zip(self.labels, values)}
            present = [w * v for w, v in zip(weights, values) if not math.isnan(v)]
            rows.append({"step": step, "split": split, "prompt": prompt, "completion": completion,
                         "rewards": named, "total": sum(present) if present else None})
        self._append(rows, step)

    def write_held_out(self, step: int, scores) -> None:
        """A held-out evaluation's greedy answers (step 0: before training)."""
        self._append([{"step": step, "split": "eval", **row} for row in scores.rows], step)
