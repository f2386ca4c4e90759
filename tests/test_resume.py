"""Never lose a run: complete-or-absent checkpoints, exact resume after a kill, signals, a full disk, corruption."""

from __future__ import annotations

import errno
import json
import shutil
import signal
import subprocess
import threading
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lora_ft import cli
from lora_ft.rundir import checkpoints

from .conftest import legal_rows, write_config, write_jsonl

CRASH_RUN = Path(__file__).with_name("crash_run.py")
# 12 samples, batch 2: six optimizer steps an epoch; twelve steps cross an epoch boundary. Dropout makes the RNG
# state matter; a checkpoint every 2 steps, three kept.
RUN = ["--set", "train.max_steps=12", "--set", "lora.dropout=0.1", "--set", "train.save_steps=2",
       "--set", "train.keep_last=3"]


@pytest.fixture(scope="module")
def setup(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    data_dir = root / "data"
    data_dir.mkdir()
    write_jsonl(data_dir / "train.jsonl", legal_rows(12))
    write_jsonl(data_dir / "eval.jsonl", legal_rows(4, offset=100))
    config = write_config(root / "run.yaml", tiny_llama, data_dir)
    reference = root / "reference"
    assert cli.main(["train", str(config), *RUN, "--set", f"output_dir={reference}"]) == 0
    return config, reference


def _history(run_dir: Path) -> list[tuple]:
    """(step, loss, learning rate, grad norm) of every logged training step, exactly as logged."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["learning_rate"], r["grad_norm"]) for r in records if "loss" in r]


def _adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def _assert_same_run(run_dir: Path, reference: Path) -> None:
    assert (run_dir / "manifest.json").is_file(), "the resumed run finished"
    assert _history(run_dir) == _history(reference)
    ours, theirs = _adapter(run_dir), _adapter(reference)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def _crash_run(kill: str, config: Path, run_dir: Path, *extra: str, timeout: int = 900):  # a hang guard
    return subprocess.run([sys.executable, str(CRASH_RUN), kill, str(config), *RUN, "--set", f"output_dir={run_dir}",
                           *extra], capture_output=True, text=True, timeout=timeout)


def test_sigkill_at_several_points_then_resume_is_bitwise_the_uninterrupted_run(setup, tmp_path):
    config, reference = setup
    run_dir = tmp_path / "run"
    kills = [
        # (where this attempt is killed, the checkpoint it resumed from)
        ("step:5", None),              # mid-step 5, after checkpoint-4 was committed
        ("save:6:optimizer.pt", 4),    # mid-save: half of checkpoint-6's optimizer state on disk
        ("commit:8", 4),               # checkpoint-6 was cut short; now every file of checkpoint-8 is written,
    ]                                  # its manifest not yet
    for kill, resumes_from in kills:
        result = _crash_run(kill, config, run_dir)
        assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
        if resumes_from is not None:
            assert f"from checkpoint-{resumes_from} (step {resumes_from})" in result.stdout
    cut_short = [p.name for p in checkpoints.scan_names(run_dir / "checkpoints")[1]]
    assert cut_short == ["checkpoint-8"], "the last kill left a checkpoint without its manifest"
    assert _history(run_dir)[-1][0] >= 8, "the killed attempt logged past the last checkpoint"

    result = _crash_run("none", config, run_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "checkpoint-8 is incomplete" in result.stdout and "from checkpoint-6 (step 6)" in result.stdout
    _assert_same_run(run_dir, reference)
    kept = [c.path.name for c in checkpoints.scan(run_dir / "checkpoints")[0]]
    assert kept == ["checkpoint-8", "checkpoint-10", "checkpoint-12"]


def _interrupted_copy(reference: Path, run_dir: Path, newest: int) -> None:
    """The reference run as it was when killed just after checkpoint-``newest`` was committed."""
    shutil.copytree(reference, run_dir)
    (run_dir / "manifest.json").unlink()
    shutil.rmtree(run_dir / "adapter")
    for folder in (run_dir / "checkpoints").glob("checkpoint-*"):
        if int(folder.name.split("-")[1]) > newest:
            shutil.rmtree(folder)


def test_damaged_checkpoints_are_skipped_and_named(setup, tmp_path, capsys):
    config, reference = setup
    run_dir = tmp_path / "run"
    _interrupted_copy(reference, run_dir, newest=10)  # checkpoints 8 and 10 are on disk
    flipped = run_dir / "checkpoints" / "checkpoint-10" / "adapter_model.safetensors"
    blob = bytearray(flipped.read_bytes())
    blob[-7] ^= 0x10
    flipped.write_bytes(bytes(blob))
    truncated = run_dir / "checkpoints" / "checkpoint-8" / "optimizer.pt"
    size = truncated.stat().st_size
    truncated.write_bytes(truncated.read_bytes()[:-100])
    capsys.readouterr()

    assert cli.main(["train", str(config), *RUN, "--set", f"output_dir={run_dir}"]) == 0
    out = capsys.readouterr().out
    assert "checkpoint-10 is damaged: adapter_model.safetensors does not match its hash" in out
    assert f"checkpoint-8 is damaged: optimizer.pt has {size - 100:,} bytes, {size:,} were written" in out
    assert (run_dir / "checkpoints" / "checkpoint-10.corrupt").is_dir(), "kept for a look, out of the way"
    assert "no complete checkpoint: it starts again from step 0" in out
    _assert_same_run(run_dir, reference)


def test_resume_falls_back_to_the_previous_checkpoint_when_the_newest_is_damaged(setup, tmp_path, capsys):
    config, reference = setup
    run_dir = tmp_path / "run"
    _interrupted_copy(reference, run_dir, newest=10)
    damaged = run_dir / "checkpoints" / "checkpoint-10" / "rng_state.pth"
    blob = bytearray(damaged.read_bytes())
    blob[len(blob) // 2] ^= 0x01  # one bit
    damaged.write_bytes(bytes(blob))
    capsys.readouterr()
    assert cli.main(["train", str(config), *RUN, "--set", f"output_dir={run_dir}"]) == 0
    out = capsys.readouterr().out
    assert "checkpoint-10 is damaged: rng_state.pth does not match its hash" in out
    assert "from checkpoint-8 (step 8)" in out
    _assert_same_run(run_dir, reference)


def test_a_full_disk_mid_save_keeps_the_previous_checkpoint(setup, tmp_path, monkeypatch, capsys):
    config, reference = setup
    run_dir = tmp_path / "run"
    real_save = torch.save

    def save_until_the_disk_fills(obj, f, *args, **kwargs):
        path = Path(str(f))
        if path.parent.name == "checkpoint-6" and path.name == "optimizer.pt":
            path.write_bytes(b"\0" * 1000)  # what fitted before the disk filled
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_the_disk_fills)
    assert cli.main(["train", str(config), *RUN, "--set", f"output_dir={run_dir}"]) == 4
    err = capsys.readouterr().err
    assert "could not write the checkpoint at step 6" in err and "No space left on device" in err
    assert f"the previous checkpoint {run_dir.resolve() / 'checkpoints' / 'checkpoint-4'} is intact" in err
    assert "free disk space" in err
    assert not (run_dir / "checkpoints" / "checkpoint-6").exists(), "the half-written checkpoint is removed"
    complete, rejected = checkpoints.scan(run_dir / "checkpoints")
    assert [c.step for c in complete] == [2, 4] and not rejected

    monkeypatch.setattr(torch, "save", real_save)  # space freed
    assert cli.main(["train", str(config), *RUN, "--set", f"output_dir={run_dir}"]) == 0
    _assert_same_run(run_dir, reference)


def test_no_room_for_the_next_checkpoint_stops_before_the_save(tmp_path):
    from types import SimpleNamespace

    from lora_ft.training import CheckpointKeeper, CheckpointNoSpace

    keeper = CheckpointKeeper(tmp_path / "checkpoints", {}, keep_last=2, expected_bytes=10 * 2**20,
                              disk_free=lambda _: 40 * 2**20, commit=checkpoints.commit, prune=checkpoints.prune)
    state = SimpleNamespace(global_step=7, is_world_process_zero=True)
    control = SimpleNamespace(should_save=True, should_training_stop=False)
    keeper.on_step_end(None, state, control)  # fits
    keeper.disk_free = lambda _: 5 * 2**20
    control.should_save = False
    keeper.on_step_end(None, state, control)  # no save due: no check
    control.should_save = True
    with pytest.raises(CheckpointNoSpace) as exc:
        keeper.on_step_end(None, state, control)
    assert exc.value.step == 7 and exc.value.needed > exc.value.free


def test_sigterm_commits_a_checkpoint_and_exits_143_then_the_run_resumes(setup, tmp_path):
    config, _ = setup
    run_dir = tmp_path / "run"
    long_run = ["--set", "train.max_steps=400", "--set", "train.save_steps=null"]
    process = subprocess.Popen([sys.executable, str(CRASH_RUN), "none", str(config), *RUN, *long_run,
                                "--set", f"output_dir={run_dir}"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(900, process.kill)  # fails a hung run instead of hanging the suite; times nothing
    watchdog.start()
    seen = []
    for line in process.stderr:  # progress lines: wait until training is under way, however slow the machine
        seen.append(line)
        if line.startswith("step 3/400"):
            break
    else:
        watchdog.cancel()
        pytest.fail("the run ended before step 3: " + "".join(seen)[-2000:])
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate()
    watchdog.cancel()
    assert process.returncode == 143, err[-2000:]
    assert "SIGTERM received: finishing this step and saving a checkpoint" in err
    assert "stopped: SIGTERM received: training stopped after step" in err and "is complete" in err
    assert f"run the same command to resume from there: lora-ft train {config}" in err
    complete, rejected = checkpoints.scan(run_dir / "checkpoints")
    assert len(complete) == 1 and not rejected and 3 <= complete[0].step < 400
    assert not (run_dir / "manifest.json").exists() and not (run_dir / "adapter").exists()

    step = complete[0].step
    assert cli.main(["train", str(config), *RUN, *long_run, "--set", f"output_dir={run_dir}"]) == 0
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["metrics"]["steps"] == 400 and manifest["metrics"]["resumed_from_step"] == step


def test_a_second_signal_stops_at_once(tmp_path):
    script = (
        "import os, signal, sys, time\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})\n"
        "from lora_ft.training import StopRequest\n"
        "with StopRequest() as stop:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(0.2)\n"
        "    assert stop.signum == signal.SIGTERM\n"
        "    print('first signal noted', flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(5)\n"
        "print('not reached')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.stdout == "first signal noted\n"
    assert result.returncode == -signal.SIGTERM


def test_resume_refuses_a_changed_config_or_data_unless_forced(tiny_llama, legal_data, tmp_path, capsys):
    config = write_config(tmp_path / "run.yaml", tiny_llama, legal_data)
    run_dir = tmp_path / "run"
    assert cli.main(["train", str(config), "--set", "train.max_steps=4", "--set", "train.save_steps=2"]) == 0
    (run_dir / "manifest.json").unlink()  # interrupted after checkpoint-2
    shutil.rmtree(run_dir / "adapter")
    shutil.rmtree(run_dir / "checkpoints" / "checkpoint-4")
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    capsys.readouterr()

    assert cli.main(["train", str(config), "--set", "train.max_steps=4", "--set", "train.save_steps=2",
                     "--set", "train.learning_rate=0.02", "--set", "train.logging_steps=2"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume checkpoint-2: the config or data differ from what it was trained with" in err
    assert "train.learning_rate: 0.01 -> 0.02" in err and "logging_steps" not in err, "logging changes nothing"
    assert "--force-resume" in err

    original = (legal_data / "train.jsonl").read_text()
    rows = legal_rows(12)
    rows[3]["output"] = "A changed answer."
    write_jsonl(legal_data / "train.jsonl", rows)
    assert cli.main(["train", str(config), "--set", "train.max_steps=4", "--set", "train.save_steps=2"]) == 2
    err = capsys.readouterr().err
    assert f"data file {legal_data / 'train.jsonl'} changed (sha256" in err
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before, "a refusal changes nothing"
    (legal_data / "train.jsonl").write_text(original)

    assert cli.main(["train", str(config), "--set", "train.max_steps=4", "--set", "train.save_steps=2",
                     "--set", "train.learning_rate=0.02", "--force-resume"]) == 0
    out = capsys.readouterr().out
    assert "warning: --force-resume: resuming with a change: train.learning_rate: 0.01 -> 0.02" in out
    assert "learning_rate: 0.02" in (run_dir / "config.yaml").read_text()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["metrics"]["forced_resume_changes"] == ["train.learning_rate: 0.01 -> 0.02"]


def test_resume_modes_never_and_path(setup, tmp_path, capsys):
    config, reference = setup
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    (run_dir / "manifest.json").unlink()
    capsys.readouterr()
    assert cli.main(["train", str(config), *RUN, "--set", f"output_dir={run_dir}", "--resume", "never"]) == 2
    assert "already holds files from an earlier run" in capsys.readouterr().err

    # a finished run is never resumed into; branching off one of its checkpoints goes to a new directory
    assert cli.main(["train", str(config), *RUN, "--set", f"output_dir={reference}"]) == 2
    err = capsys.readouterr().err
    assert "already holds a finished run" in err and "--resume" in err
    branch = tmp_path / "branch"
    assert cli.main(["train", str(config), *RUN, "--set", f"output_dir={branch}",
                     "--resume", str(reference / "checkpoints" / "checkpoint-10")]) == 0
    assert "starting from" in capsys.readouterr().out
    assert (branch / "manifest.json").is_file()
    assert _adapter(branch).keys() == _adapter(reference).keys()
    assert all(torch.equal(_adapter(branch)[k], _adapter(reference)[k]) for k in _adapter(reference))

    assert cli.main(["train", str(config), *RUN, "--set", f"output_dir={tmp_path / 'other'}",
                     "--resume", str(tmp_path / "nowhere")]) == 2
    assert "no such checkpoint folder" in capsys.readouterr().err


def test_commit_verify_and_retention(tmp_path):
    from lora_ft.rundir import lock as run_lock
    from lora_ft.errors import UserError

    run_lock.write_mark(tmp_path)
    checkpoint_dir = tmp_path / "checkpoints"
    folder = checkpoint_dir / "checkpoint-3"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"weights" * 100)
    (folder / "training_args.bin").write_bytes(b"a pickle")
    assert checkpoints.verify(folder)[0] is None and "incomplete" in checkpoints.verify(folder)[1]
    committed = checkpoints.commit(folder, 3, {"config": {}})
    assert not (folder / "training_args.bin").exists(), "the trainer's pickled arguments are not kept"
    assert checkpoints.verify(folder)[0].step == 3 and committed.size == 700
    (folder / "adapter_model.safetensors").write_bytes(b"weights" * 99)
    assert "bytes" in checkpoints.verify(folder)[1]

    for step in (5, 7, 9):
        other = checkpoint_dir / f"checkpoint-{step}"
        other.mkdir()
        (other / "a.json").write_text("{}")
        checkpoints.commit(other, step, {})
    (checkpoint_dir / "checkpoint-11").mkdir()  # a save cut short: not counted, never deletes a complete one
    # outside a folder lora-ft made (no mark), nothing is ever deleted
    foreign = tmp_path / "user" / "checkpoints"
    shutil.copytree(checkpoint_dir, foreign)
    with pytest.raises(UserError, match="does not carry lora-ft's mark"):
        checkpoints.prune(foreign, keep_last=1)
    with pytest.raises(UserError, match="does not carry lora-ft's mark"):
        checkpoints.newest(foreign)
    assert sorted(p.name for p in foreign.iterdir()) == sorted(p.name for p in checkpoint_dir.iterdir())

    deleted = checkpoints.prune(checkpoint_dir, keep_last=1, best=str(checkpoint_dir / "checkpoint-5"))
    assert sorted(p.name for p in deleted) == ["checkpoint-3", "checkpoint-7"]
    assert sorted(p.name for p in checkpoint_dir.iterdir()) == ["checkpoint-11", "checkpoint-5", "checkpoint-9"]


def test_checkpoint_interval_and_time_based_saves(tiny_llama, legal_data, tmp_path):
    from types import SimpleNamespace

    from lora_ft.config import load_config
    from lora_ft.training import CheckpointKeeper, checkpoint_interval

    def interval(total, *overrides, has_eval=True):
        cfg = load_config(write_config(tmp_path / "run.yaml", tiny_llama, legal_data), list(overrides)).config
        return checkpoint_interval(cfg, total, has_eval)

    assert interval(1000, "train.logging_steps=5") == 100  # about ten saves, on a logged step
    assert interval(37, "train.logging_steps=5") == 5
    assert interval(3, "train.logging_steps=1") == 1
    assert interval(1000, "train.save_steps=7") == 7
    assert interval(1000, "train.save_steps=null") is None
    keep_best = ("train.eval_steps=30", "train.early_stopping_patience=2")
    assert interval(1000, *keep_best) == 120  # a multiple of eval_steps: the best checkpoint must be saved
    assert interval(1000, *keep_best, "train.save_steps=null") == 30

    keeper = CheckpointKeeper(tmp_path, {}, keep_last=2, expected_bytes=0, save_every_minutes=0.5,
                              disk_free=lambda _: 2**40, commit=checkpoints.commit, prune=checkpoints.prune)
    state = SimpleNamespace(global_step=3, is_world_process_zero=True)
    control = SimpleNamespace(should_save=False, should_training_stop=False)
    keeper.on_step_end(None, state, control)
    assert not control.should_save
    keeper.last_save -= 31
    keeper.on_step_end(None, state, control)
    assert control.should_save and not control.should_training_stop


def test_a_cut_short_save_is_found_under_a_relative_output_dir(tmp_path, monkeypatch):
    from lora_ft.rundir import lock as run_lock
    from lora_ft.rundir.failures import checkpoint_write_failed

    monkeypatch.chdir(tmp_path)  # output_dir defaults to runs/<name>, a relative path
    checkpoint_dir = Path("runs") / "legal" / "checkpoints"
    done = checkpoint_dir / "checkpoint-2"
    done.mkdir(parents=True)
    run_lock.write_mark(checkpoint_dir.parent)
    (done / "adapter_model.safetensors").write_bytes(b"w")
    checkpoints.commit(done, 2, {})
    (checkpoint_dir / "checkpoint-4").mkdir()
    assert checkpoints.is_cut_short(checkpoint_dir / "checkpoint-4")
    assert not checkpoints.is_cut_short(done) and not checkpoints.is_cut_short(checkpoint_dir / "checkpoint-6")
    error = checkpoint_write_failed(checkpoint_dir, 4, "No space left on device")
    assert not (checkpoint_dir / "checkpoint-4").exists(), "the half-written checkpoint is removed"
    assert "checkpoint-2 is intact and complete" in error.title and error.exit_code == 4


# --- a run directory is lora-ft's only when it carries the mark; one process at a time writes in it ---------


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_folder_lora_ft_did_not_make_is_never_touched(setup, tmp_path, capsys):
    """A user's folder that looks like an unfinished run (config.yaml, a checkpoint folder without a manifest):
    nothing in it is deleted, renamed or written, whatever the resume flags."""
    config, _ = setup
    user = tmp_path / "userproj"
    (user / "checkpoints" / "checkpoint-500").mkdir(parents=True)
    (user / "config.yaml").write_text("experiment: x\n")
    (user / "checkpoints" / "checkpoint-500" / "model.safetensors").write_bytes(bytes(range(256)) * 400)
    before = _snapshot(user)
    for flags in ([], ["--force-resume"], ["--resume", "never"],
                  ["--resume", str(user / "checkpoints" / "checkpoint-500")]):
        capsys.readouterr()
        assert cli.main(["train", str(config), *RUN, "--set", f"output_dir={user}", *flags]) == 2, flags
        err = capsys.readouterr().err
        assert "error:" in err and "fix:" in err and "removed" not in err
        assert _snapshot(user) == before and sorted(p.name for p in user.iterdir()) == ["checkpoints",
                                                                                      "config.yaml"], flags
    assert cli.main(["train", str(config), *RUN, "--set", f"output_dir={user}"]) == 2
    err = capsys.readouterr().err
    assert "lora-ft did not make it (it has no .lora-ft-run mark)" in err
    assert f"--set output_dir={user}-2" in err


def test_a_run_directory_is_marked_before_anything_else(setup):
    _, reference = setup
    mark = json.loads((reference / ".lora-ft-run").read_text())
    assert mark["made_by"] == "lora-ft" and mark["version"] and mark["host"]
    assert (reference / ".lora-ft-run").stat().st_mtime <= (reference / "config.yaml").stat().st_mtime


@pytest.mark.parametrize("kill", ["committed:7", "sigterm:7"])
def test_a_run_resumed_from_its_last_step_finishes_without_training_more(setup, tmp_path, kill):
    """max_steps 7 with six steps an epoch: the last checkpoint falls partway through the second epoch, where the
    trainer would run a step 8 before checking max_steps. Killed right after committing checkpoint-7, or stopped
    by SIGTERM during step 7 (it saves, then exits 143), the same command finishes the run."""
    config, _ = setup
    seven = [*RUN, "--set", "train.max_steps=7", "--set", "lora.dropout=0.0", "--set", "train.lr_scheduler=constant"]
    reference = tmp_path / "reference"
    assert cli.main(["train", str(config), *seven, "--set", f"output_dir={reference}"]) == 0
    run_dir = tmp_path / "run"
    stopped = subprocess.run([sys.executable, str(CRASH_RUN), kill, str(config), *seven,
                              "--set", f"output_dir={run_dir}"], capture_output=True, text=True, timeout=900)
    assert stopped.returncode == (-signal.SIGKILL if kill.startswith("committed") else 143), stopped.stderr[-2000:]
    assert [c.step for c in checkpoints.scan(run_dir / "checkpoints")[0]][-1] == 7
    assert not (run_dir / "manifest.json").exists()

    resumed = subprocess.run([sys.executable, str(CRASH_RUN), "none", str(config), *seven,
                              "--set", f"output_dir={run_dir}"], capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "checkpoint-7 holds the run's last step (7): nothing is left to train" in resumed.stdout
    assert "step 8" not in resumed.stderr
    assert json.loads((run_dir / "manifest.json").read_text())["metrics"]["steps"] == 7
    _assert_same_run(run_dir, reference)


def test_a_second_process_is_refused_at_once_and_a_killed_holder_leaves_no_lock(setup, tmp_path, capsys):
    import os
    import socket

    from lora_ft.rundir import lock as run_lock

    config, reference = setup
    run_dir = tmp_path / "run"
    with run_lock.RunLock(run_dir, "lora-ft train held-by-test", create=True):
        assert cli.main(["train", str(config), *RUN, "--set", f"output_dir={run_dir}"]) == 2
        captured = capsys.readouterr()
        assert "== data" not in captured.out and "== model" not in captured.out, "refused before data or model"
        err = captured.err
        assert f"is in use by another lora-ft process: pid {os.getpid()} on host {socket.gethostname()}" in err
        assert "lora-ft train held-by-test" in err
        assert sorted(p.name for p in run_dir.iterdir()) == [".lora-ft-run", ".lora-ft.lock"]
        # commands that write into a finished run respect it too
    finished = tmp_path / "finished"
    shutil.copytree(reference, finished)
    with run_lock.RunLock(finished, "lora-ft train held-by-test"):
        for command in (["eval", str(finished)], ["merge", str(finished)],
                        ["export", str(finished), "--format", "peft"]):
            assert cli.main(command) == 2, command
            assert "is in use by another lora-ft process" in capsys.readouterr().err
        assert not any((finished / name).exists() for name in ("eval", "merged", "export-peft"))

    # a holder that is killed leaves no stale lock behind
    holder = subprocess.Popen([sys.executable, "-c", (
        f"import sys, time; sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})\n"
        "from lora_ft.rundir.lock import RunLock\n"
        f"RunLock({str(run_dir)!r}, 'holder').acquire(); print('held', flush=True); time.sleep(600)")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(Exception, match="in use by another lora-ft process"):
        run_lock.RunLock(run_dir, "second").acquire()
    holder.kill()
    holder.wait()
    run_lock.RunLock(run_dir, "after the kill").acquire().release()


def test_a_full_disk_at_the_final_save_keeps_the_last_checkpoint_and_a_rerun_finishes(setup, tmp_path,
                                                                                       monkeypatch, capsys):
    from lora_ft.rundir import artifacts

    config, reference = setup
    run_dir = tmp_path / "run"
    real_save = artifacts.publish_adapter

    def disk_fills(staging, run):
        (staging / "adapter_model.safetensors").write_bytes(b"\0" * 100)  # cut short by the full disk
        raise OSError(errno.ENOSPC, "No space left on device", str(staging / "adapter_model.safetensors"))

    monkeypatch.setattr(artifacts, "publish_adapter", disk_fills)
    assert cli.main(["train", str(config), *RUN, "--set", f"output_dir={run_dir}"]) == 4
    err = capsys.readouterr().err
    assert "could not write the final adapter" in err and "No space left on device" in err
    assert "safe in checkpoint-12, the run's last step" in err and "MiB under" in err
    assert not (run_dir / "adapter").exists() and not (run_dir / artifacts.STAGED_ADAPTER).exists()
    assert not (run_dir / "manifest.json").exists()
    assert [c.step for c in checkpoints.scan(run_dir / "checkpoints")[0]][-1] == 12

    monkeypatch.setattr(artifacts, "publish_adapter", real_save)  # space freed
    assert cli.main(["train", str(config), *RUN, "--set", f"output_dir={run_dir}"]) == 0
    assert "nothing is left to train" in capsys.readouterr().out
    _assert_same_run(run_dir, reference)


def test_the_free_space_check_counts_only_what_is_left_to_write(tiny_llama, legal_data, tmp_path):
    from lora_ft.rundir import artifacts
    from lora_ft.config import load_config

    cfg = load_config(write_config(tmp_path / "run.yaml", tiny_llama, legal_data), ["train.save_steps=10"]).config
    tokenizer = artifacts.tokenizer_bytes(tiny_llama)
    assert 0 < tokenizer < 2**20, "measured from the base model's tokenizer files"
    adapter_only = artifacts.run_disk_need(1_000_000, cfg, tokenizer, saves_left=False)
    assert adapter_only == int((4_000_000 + tokenizer + 256 * 2**10) * 1.1) + 8 * 2**20  # about 12 MiB
    fresh = artifacts.run_disk_need(1_000_000, cfg, tokenizer)
    assert fresh == int((4_000_000 + tokenizer + 256 * 2**10 + 3 * (12_000_000 + tokenizer + 2**20)) * 1.1) \
        + 8 * 2**20
    assert artifacts.run_disk_need(1_000_000, cfg, tokenizer, checkpoints_on_disk=2) < fresh


def test_a_run_killed_between_its_adapter_and_its_manifest_finishes_on_the_same_command(setup, tmp_path, capsys):
    config, reference = setup
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    (run_dir / "manifest.json").unlink()  # the adapter was moved into place; the kill came before the manifest
    (run_dir / "adapter" / "adapter_model.safetensors").write_bytes(b"stale")
    assert cli.main(["train", str(config), *RUN, "--set", f"output_dir={run_dir}"]) == 0
    assert "nothing is left to train" in capsys.readouterr().out
    _assert_same_run(run_dir, reference)
