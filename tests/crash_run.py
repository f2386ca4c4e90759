"""Run `lora-ft train` in this process and SIGKILL it at a chosen point, as a crash or an OOM killer would.

    python tests/crash_run.py KILL CONFIG [train options...]

KILL is one of
  none                  run to the end
  step:N                during the N-th micro-batch this process trains
  sigterm:N             SIGTERM (not a kill) during the N-th micro-batch: the run saves and stops after it
  save:STEP:FILE        while the trainer writes FILE of checkpoint-STEP (half of it is on disk)
  commit:STEP           while lora-ft hashes checkpoint-STEP, before its manifest is committed
  committed:STEP        right after checkpoint-STEP is committed

Used by the kill-and-resume tests; it wraps functions only inside this throwaway process.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def arm(kill: str) -> None:
    kind, _, where = kill.partition(":")
    if kind in ("step", "sigterm"):
        import transformers

        original = transformers.Trainer.training_step
        calls = {"n": 0}

        def training_step(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == int(where):
                if kind == "step":
                    die()
                os.kill(os.getpid(), signal.SIGTERM)
            return original(self, *args, **kwargs)

        transformers.Trainer.training_step = training_step
    elif kind == "save":
        import torch

        step, name = where.split(":")
        original_save = torch.save

        def save(obj, f, *args, **kwargs):
            path = Path(str(f))
            if path.name == name and path.parent.name == f"checkpoint-{step}":
                original_save(obj, f, *args, **kwargs)
                data = path.read_bytes()
                path.write_bytes(data[: len(data) // 2])
                die()
            return original_save(obj, f, *args, **kwargs)

        torch.save = save
    elif kind == "commit":
        from lora_ft.rundir import checkpoints

        original_hash = checkpoints.file_sha256

        def file_sha256(path):
            if Path(path).parent.name == f"checkpoint-{where}":
                die()
            return original_hash(path)

        checkpoints.file_sha256 = file_sha256
    elif kind == "committed":
        from lora_ft.rundir import checkpoints

        original_commit = checkpoints.commit

        def commit(path, step, fingerprint):
            committed = original_commit(path, step, fingerprint)
            if step == int(where):
                die()
            return committed

        checkpoints.commit = commit
    elif kind != "none":
        raise SystemExit(f"unknown kill point {kill!r}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    arm(sys.argv[1])
    from lora_ft import cli

    raise SystemExit(cli.main(["train", *sys.argv[2:]]))
