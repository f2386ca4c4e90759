"""The tokenized-data cache serves only what the data files hold now and what was written whole: a file changed
behind unchanged metadata is tokenized again, a damaged entry is found, said and replaced, every spelling of a file
shares one entry, a read-only cache is read, and the workers of a killed command leave no traceback."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from lora_ft import cli, console
from lora_ft.config import load_config
from lora_ft.errors import UserError
from lora_ft.model import load_chat_tokenizer
from lora_ft.tokenized import cache as cache_lib
from lora_ft.tokenized import tokenized_data

from .conftest import REPO, legal_rows, write_config, write_jsonl

GUARD = 300  # seconds: a safety net for a subprocess that never gets where a test waits for it, never a measure


def _load(path, cache_dir, *overrides):
    loaded = load_config(path, [f"data.cache_dir={cache_dir}", *overrides])
    return loaded, load_chat_tokenizer(loaded, loaded.config.model)


def _tokenized(path, cache_dir, *overrides):
    loaded, chat = _load(path, cache_dir, *overrides)
    said = []
    with console.capture(said.append):
        data = tokenized_data(loaded, loaded.config, chat.renderer)
    return data, "\n".join(said)


def _key(path, cache_dir) -> str:
    loaded, chat = _load(path, cache_dir)
    return cache_lib.key_of(cache_lib.key_parts(loaded, loaded.config, chat.renderer))


def _folders(cache_dir: Path) -> list[str]:
    return sorted(p.name for p in cache_dir.iterdir() if p.is_dir())


def _data_command(config: Path, cache_dir: Path, capsys) -> tuple[str, str]:
    assert cli.main(["data", str(config), "--set", f"data.cache_dir={cache_dir}"]) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


def _same_length_change(path: Path) -> bytes:
    """The file's first answer changed, its length kept: the new bytes."""
    text = path.read_text(encoding="utf-8")
    old = "Consideration is something of value exchanged by each party 0."
    new = "Consideration is a promise or an act given in return, party 0."
    assert len(old) == len(new) and old in text
    return text.replace(old, new, 1).encode("utf-8")


@pytest.mark.parametrize("how", ["rewritten in place, its times put back", "cp -p of a new version"])
def test_a_changed_file_with_the_same_size_times_and_inode_is_tokenized_again(tmp_path, tiny_llama, legal_data,
                                                                             capsys, how):
    config = write_config(tmp_path / "cfg.yaml", tiny_llama, legal_data, eval_file=None)
    cache_dir = tmp_path / "cache"
    first, _ = _data_command(config, cache_dir, capsys)
    assert "exchanged by each party 0." in first
    data_file = legal_data / "train.jsonl"
    before = data_file.stat()
    new_bytes = _same_length_change(data_file)
    if how.startswith("rewritten"):
        with data_file.open("r+b") as fh:
            fh.write(new_bytes)
        os.utime(data_file, ns=(before.st_atime_ns, before.st_mtime_ns))
    else:
        new_version = tmp_path / "new.jsonl"
        new_version.write_bytes(new_bytes)
        os.utime(new_version, ns=(before.st_atime_ns, before.st_mtime_ns))
        subprocess.run(["cp", "-p", str(new_version), str(data_file)], check=True)
    after = data_file.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)
    second, _ = _data_command(config, cache_dir, capsys)
    assert "reused from the cache" not in second and "tokenized in" in second
    assert "a promise or an act given in return" in second  # the sample shown is the new text
    data, said = _tokenized(config, cache_dir)
    assert data.reused, said  # the new version's own entry
    assert data.reports[0].sha256 == hashlib.sha256(new_bytes).hexdigest()
    assert "a promise or an act given in return" in json.dumps(data.train.head(1)[0].messages)


def test_training_records_the_hash_of_the_bytes_it_trained_on(tmp_path, tiny_llama, legal_data):
    from lora_ft.commands.train import train

    config = write_config(tmp_path / "cfg.yaml", tiny_llama, legal_data)
    cache = f"data.cache_dir={tmp_path / 'cache'}"
    data_file = legal_data / "train.jsonl"
    first = train(load_config(config, [cache, f"output_dir={tmp_path / 'run1'}"]))
    assert first.manifest["data"][0]["sha256"] == hashlib.sha256(data_file.read_bytes()).hexdigest()
    before = data_file.stat()
    new_bytes = _same_length_change(data_file)
    with data_file.open("r+b") as fh:
        fh.write(new_bytes)
    os.utime(data_file, ns=(before.st_atime_ns, before.st_mtime_ns))
    second = train(load_config(config, [cache, f"output_dir={tmp_path / 'run2'}"]))
    assert not second.manifest["tokenized_data"]["reused"]
    assert second.manifest["data"][0]["sha256"] == hashlib.sha256(new_bytes).hexdigest()
    assert second.manifest["tokenized_data"]["cache_key"] != first.manifest["tokenized_data"]["cache_key"]


def test_a_file_changed_while_it_is_tokenized_leaves_no_entry(tmp_path, tiny_llama, legal_data, monkeypatch):
    config = write_config(tmp_path / "cfg.yaml", tiny_llama, legal_data, eval_file=None)
    cache_dir = tmp_path / "cache"
    data_file = legal_data / "train.jsonl"
    real_write_sources = cache_lib.write_sources

    def changed_after_hashing(*args, **kwargs):  # the file is rewritten once its hash is in the key
        write_jsonl(data_file, legal_rows(12, offset=50))
        return real_write_sources(*args, **kwargs)

    monkeypatch.setattr(cache_lib, "write_sources", changed_after_hashing)
    with pytest.raises(UserError) as caught:
        _tokenized(config, cache_dir)
    message = caught.value.render()
    assert "changed while it was read" in message and "train.jsonl" in message
    assert _folders(cache_dir) == []  # no entry published, no temporary folder left
    monkeypatch.undo()
    data, _ = _tokenized(config, cache_dir)  # once it stays still, it is tokenized and cached as usual
    assert not data.reused and data.reports[0].sha256 == hashlib.sha256(data_file.read_bytes()).hexdigest()


# --- damaged entries -------------------------------------------------------------------------------------------

def _batch_boundary(arrow: Path) -> int:
    """The offset where the stream's second record batch starts."""
    import pyarrow as pa

    with pa.OSFile(str(arrow)) as fh:
        pa.ipc.read_message(fh)  # the schema
        pa.ipc.read_message(fh)  # the first batch
        return fh.tell()


def _flip_a_bit(arrow: Path) -> None:
    raw = bytearray(arrow.read_bytes())
    raw[len(raw) // 2] ^= 0x04
    arrow.write_bytes(bytes(raw))


def _cut_at_a_batch(arrow: Path) -> None:
    at = _batch_boundary(arrow)
    assert at < arrow.stat().st_size
    with arrow.open("r+b") as fh:
        fh.truncate(at)


def _edit_the_meta(entry: Path) -> None:
    meta_file = entry / cache_lib.META_FILE
    meta = json.loads(meta_file.read_text())
    meta["reports"][0]["rows_read"] += 1  # still valid JSON, still naming its key
    meta_file.write_text(json.dumps(meta, indent=1))


@pytest.fixture
def large(tmp_path, tiny_llama) -> tuple[Path, Path]:
    """A config whose train file is several record batches, no eval file."""
    data_dir = tmp_path / "big"
    data_dir.mkdir()
    write_jsonl(data_dir / "train.jsonl", legal_rows(3000))
    return write_config(tmp_path / "big.yaml", tiny_llama, data_dir, eval_file=None), tmp_path / "cache"


@pytest.mark.parametrize("damage", ["a flipped bit", "cut at a record batch", "meta edited"])
def test_a_damaged_entry_is_said_set_aside_and_tokenized_again(large, damage):
    config, cache_dir = large
    first, _ = _tokenized(config, cache_dir)
    whole = (len(first.train), len(first.eval), first.tokens_sha256())
    if damage == "a flipped bit":
        _flip_a_bit(first.path / "train.arrow")
    elif damage == "cut at a record batch":
        _cut_at_a_batch(first.path / "train.arrow")
    else:
        _edit_the_meta(first.path)
    again, said = _tokenized(config, cache_dir)
    assert not again.reused and again.key == first.key
    notices = [line for line in said.splitlines() if line.startswith("warning:")]
    assert len(notices) == 1 and "damaged" in notices[0], said
    assert ("meta.json" if damage == "meta edited" else "train.arrow") in notices[0]
    assert "tokenizing again" in notices[0]
    assert (len(again.train), len(again.eval), again.tokens_sha256()) == whole
    assert _folders(cache_dir) == [first.key]  # the damaged entry is gone, the new one whole
    third, said = _tokenized(config, cache_dir)
    assert third.reused and "warning" not in said


def test_the_data_command_says_a_damaged_entry_is_tokenized_again(large, capsys):
    config, cache_dir = large
    first, _ = _data_command(config, cache_dir, capsys)
    entry = cache_dir / _key(config, cache_dir)
    _cut_at_a_batch(entry / "train.arrow")
    out, err = _data_command(config, cache_dir, capsys)
    notices = [line for line in (out + err).splitlines() if line.startswith("warning:")]
    assert len(notices) == 1 and "damaged" in notices[0], out + err
    assert "train.arrow" in notices[0] and "tokenizing again" in notices[0]
    assert "3000 rows read, 3000 kept" in out
    assert first.split("== train", 1)[1] in out  # the same report as the whole entry gave


def test_a_folder_named_like_an_entry_that_is_not_one_is_left_alone(large):
    config, cache_dir = large
    key = _key(config, cache_dir)
    users = cache_dir / key
    users.mkdir(parents=True)
    (users / cache_lib.META_FILE).write_text("my own notes, not JSON")
    (users / "keep.txt").write_text("mine")
    data, said = _tokenized(config, cache_dir)
    assert not data.reused and (users / "keep.txt").read_text() == "mine"
    assert (users / cache_lib.META_FILE).read_text() == "my own notes, not JSON"
    assert len(data.train) + len(data.eval) == 3000 and "left as it is" in said


# --- one entry for every spelling of a file -----------------------------------------------------------------------

def test_every_spelling_of_one_file_shares_one_entry(tmp_path, tiny_llama, legal_data):
    (tmp_path / "sub").mkdir()
    assert legal_data == tmp_path / "data"
    dotted = write_config(tmp_path / "dotted.yaml", tiny_llama, legal_data, eval_file=None)
    dotted.write_text(dotted.read_text().replace(f"path: {legal_data / 'train.jsonl'}",
                                                 "path: sub/../data/train.jsonl"))
    absolute = write_config(tmp_path / "absolute.yaml", tiny_llama, legal_data.resolve(), eval_file=None)
    (tmp_path / "link").symlink_to(legal_data)
    linked = write_config(tmp_path / "linked.yaml", tiny_llama, tmp_path / "link", eval_file=None)
    cache_dir = tmp_path / "cache"
    assert _key(dotted, cache_dir) == _key(absolute, cache_dir) == _key(linked, cache_dir)
    first, _ = _tokenized(dotted, cache_dir)
    second, _ = _tokenized(absolute, cache_dir)
    assert second.reused and _folders(cache_dir) == [first.key]
    assert second.reports[0].path == str(legal_data.resolve() / "train.jsonl")  # each config's own spelling
    assert first.reports[0].path == "sub/../data/train.jsonl"


def test_a_copy_elsewhere_reuses_the_entry_and_names_its_own_rows(tmp_path, tiny_llama, legal_data, monkeypatch):
    rows = legal_rows(12)
    rows[3] = {"instruction": "no answer", "output": ""}  # a row that is dropped, by its location
    write_jsonl(legal_data / "train.jsonl", rows)
    copy = tmp_path / "elsewhere" / "data"
    shutil.copytree(legal_data, copy)
    monkeypatch.chdir(tmp_path)
    cache_dir = tmp_path / "cache"
    first, _ = _tokenized(write_config(tmp_path / "a.yaml", tiny_llama, legal_data, eval_file=None), cache_dir)
    monkeypatch.chdir(tmp_path / "elsewhere")  # another folder: locations are shown relative to it
    second, _ = _tokenized(write_config(tmp_path / "b.yaml", tiny_llama, copy, eval_file=None), cache_dir)
    assert second.reused and second.key == first.key
    assert [loc for locs in first.reports[0].dropped.values() for loc in locs] == ["data/train.jsonl:4"]
    assert [loc for locs in second.reports[0].dropped.values() for loc in locs] == ["data/train.jsonl:4"]
    assert second.train.location(0).startswith("data/train.jsonl:")
    monkeypatch.chdir(tmp_path)
    third, _ = _tokenized(tmp_path / "b.yaml", cache_dir)
    assert third.train.location(0).startswith("elsewhere/data/train.jsonl:")
    assert [loc for locs in third.reports[0].dropped.values() for loc in locs] == ["elsewhere/data/train.jsonl:4"]


# --- the workers of a killed command ----------------------------------------------------------------------------

def _children(pid: int) -> list[int]:
    found = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    return found


def _workers(pid: int) -> list[int]:
    """The tokenizing processes under the command: its children, or, where they start from a fork server, that
    server's children (the resource tracker and the fork server themselves are not workers)."""
    found = []
    for child in _children(pid):
        below = _children(child)
        if below:
            found += below  # the fork server's workers
        elif "multiprocessing" not in _command_line(child):  # not the resource tracker or an idle fork server
            found.append(child)
    return found


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="watches the workers through /proc (Linux)")
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 if hasattr(os, "sched_getaffinity") else True,
                    reason="needs 2 cores: with one, data is tokenized without worker processes")
@pytest.mark.parametrize("stop", ["kill -9 of the command", "Ctrl-C"])
def test_the_workers_of_a_stopped_data_command_exit_without_a_traceback(tmp_path, tiny_llama, stop):
    import time

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    write_jsonl(data_dir / "train.jsonl", legal_rows(60_000))  # over 4 MB: tokenized by worker processes
    config = write_config(tmp_path / "cfg.yaml", tiny_llama, data_dir, eval_file=None)
    command = [sys.executable, "-m", "lora_ft", "data", str(config), "--set", f"data.cache_dir={tmp_path / 'c'}"]
    parent = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    deadline = time.monotonic() + GUARD
    workers: list[int] = []
    try:
        while parent.poll() is None and time.monotonic() < deadline:
            workers = _workers(parent.pid)
            if len(workers) >= 2 and all(_cpu_ticks(w) >= 5 for w in workers):  # each is encoding a chunk
                break
            time.sleep(0.01)  # polling the process state, not waiting for it to happen
        assert parent.poll() is None and len(workers) >= 2, "the workers never started tokenizing"
        if stop == "Ctrl-C":  # the terminal sends SIGINT to every process of the foreground group
            os.killpg(parent.pid, signal.SIGINT)
        else:
            os.kill(parent.pid, signal.SIGKILL)
        _, err = parent.communicate(timeout=GUARD)  # the end of stderr: every worker has closed it, so exited
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
            parent.wait()
    assert parent.returncode == (130 if stop == "Ctrl-C" else -signal.SIGKILL)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:  # stderr closed: exiting, if not gone
        time.sleep(0.01)
    assert not [w for w in workers if _alive(w)], [Path(f"/proc/{w}/stat").read_text() for w in workers if _alive(w)]


# --- a read-only cache ------------------------------------------------------------------------------------------

def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def _read_only_command(folder: Path, command: list[str]) -> list[str]:
    """``command`` with ``folder`` read-only for it: by its permissions, or, as root (whom permissions do not stop),
    by a read-only bind mount in a mount namespace of its own."""
    if os.geteuid() != 0:
        return command
    probe = subprocess.run(["unshare", "-m", "sh", "-c", 'mount --bind "$0" "$0" && mount -o remount,ro,bind '
                            '"$0" "$0" && ! touch "$0/.probe" 2>/dev/null', str(folder)], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("running as root, whom file permissions do not stop, and a read-only bind mount "
                    f"(unshare -m) is not allowed here: {probe.stderr.decode().strip()[:200]}")
    return ["unshare", "-m", "sh", "-c", 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" && '
            'exec "$@"', str(folder), *command]


def test_a_read_only_cache_that_holds_the_entry_is_read(tmp_path, tiny_llama, legal_data, capsys):
    config = write_config(tmp_path / "cfg.yaml", tiny_llama, legal_data)
    cache_dir = tmp_path / "cache"
    first, _ = _data_command(config, cache_dir, capsys)
    before = _snapshot(cache_dir)
    command = _read_only_command(cache_dir, [sys.executable, "-m", "lora_ft", "data", str(config),
                                             "--set", f"data.cache_dir={cache_dir}"])
    modes = {p: p.stat().st_mode for p in [cache_dir, *cache_dir.rglob("*")]}
    if os.geteuid() != 0:
        for path in modes:
            path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=GUARD)
    finally:
        for path, mode in modes.items():
            path.chmod(mode)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "reused from the cache" in result.stdout
    assert first.split("== train", 1)[1] in result.stdout
    assert "Traceback" not in result.stderr
    assert _snapshot(cache_dir) == before  # nothing written: no lock, no last-used time, no memo


# --- what `lora-ft data` says ------------------------------------------------------------------------------------

def test_the_data_command_says_it_waits_for_another_process(tmp_path, tiny_llama, legal_data):
    config = write_config(tmp_path / "cfg.yaml", tiny_llama, legal_data)
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    lock = (cache_dir / f".{_key(config, cache_dir)}.lock").open("a")
    fcntl.flock(lock, fcntl.LOCK_EX)  # as a process tokenizing the same data holds it
    process = subprocess.Popen([sys.executable, "-m", "lora_ft", "data", str(config), "--set",
                                f"data.cache_dir={cache_dir}"], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    waiting = threading.Event()

    def read_errors():
        for line in process.stderr:
            seen.append(line)
            if "waiting for it" in line:
                waiting.set()
        waiting.set()  # ended without it: the assertion below says so

    reader = threading.Thread(target=read_errors)
    reader.start()
    try:
        waiting.wait(GUARD)
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
    out = process.stdout.read()
    process.wait(GUARD)
    reader.join(GUARD)
    assert any("another process is tokenizing the same data; waiting for it" in line for line in seen), seen
    assert process.returncode == 0 and "== train" in out and "cached in" in out
