"""Benchmark what the tokenized-data cache's checks cost: hashing every data file on every command, against the
memo of file metadata it replaces, and checking a cache entry's checksums.

    python scripts/bench_hash.py                          # 200k and 1M rows: the data files
    python scripts/bench_hash.py --entry-rows 1000000     # and a 1M-row entry's check (tokenizes it once: minutes)

For each size it writes the synthetic alpaca JSONL of scripts/bench_data.py (the same seeded rows, in the same
folder, so the two scripts share their files), then times, in this process, with the file in the page cache (read
once first; a cold read is bounded by the disk instead):

- old: what a cached command paid before, a memo hit: the file's path, size, modification time and inode looked up
  in a JSON memo (trusting metadata that ``cp -p`` keeps while the contents change);
- new: the file's SHA-256, read in 1 MB blocks (what the cache's key and the run's manifest now use, every command);
- the same with 8 MB blocks, and XXH3-128 (not cryptographic, several times faster), for comparison.

With ``--entry-rows`` it tokenizes that many rows into a cache entry (``lora-ft data``, once), then times the check
each command makes when it opens the entry (every file's size and XXH3-128 checksum against its meta file), and
one whole cached ``lora-ft data`` run for scale. Prints the CPU model and its flags (sha_ni, avx2, avx512f,
avx512_bf16, amx) with the figures, and writes HASH.md and HASH.json under --out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from bench_data import write_config, write_data  # noqa: E402

FLAGS = ("sha_ni", "avx2", "avx512f", "avx512_bf16", "vaes", "amx_tile", "amx_bf16")


def cpu() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
        flags = next(line for line in info.splitlines() if line.startswith("flags")).split()
        shown = " ".join(f for f in FLAGS if f in flags[1:]) or "none of " + ", ".join(FLAGS)
    except (OSError, StopIteration):
        model, shown = platform.processor(), "unknown"
    return f"{model}, {os.cpu_count()} cores, flags: {shown}; Python {platform.python_version()}"


def timed(function, repeat: int) -> float:
    """The median of ``repeat`` runs, in seconds."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def old_memo_hit(path: Path, memo: Path) -> str:
    """The removed lora_ft.files.file_sha256 memo lookup, as a cached command ran it."""
    stat = path.stat()
    known = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    entry = json.loads(memo.read_text()).get(known[0])
    assert isinstance(entry, list) and tuple(entry[:3]) == known[1:]
    return entry[3]


def hash_file(path: Path, make, block: int) -> str:
    digest = make()
    buffer = bytearray(block)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as fh:
        while count := fh.readinto(buffer):
            digest.update(view[:count])
    return digest.hexdigest()


def data_figures(path: Path, repeat: int) -> dict:
    import xxhash

    from lora_ft.files import file_sha256

    megabytes = path.stat().st_size / 1e6
    sha = file_sha256(path)  # also reads the file into the page cache
    stat = path.stat()
    memo = path.with_name("file-hashes.json")
    memo.write_text(json.dumps({str(path.resolve()): [stat.st_size, stat.st_mtime_ns, stat.st_ino, sha]}))
    figures = {
        "old: metadata memo hit": timed(lambda: old_memo_hit(path, memo), repeat * 10),
        "new: SHA-256, 1 MB blocks": timed(lambda: file_sha256(path), repeat),
        "SHA-256, 8 MB blocks": timed(lambda: hash_file(path, hashlib.sha256, 8 << 20), repeat),
        "XXH3-128, 1 MB blocks": timed(lambda: hash_file(path, xxhash.xxh3_128, 1 << 20), repeat),
    }
    memo.unlink()
    return {"megabytes": megabytes, "seconds": figures}


def entry_figures(work: Path, data: Path, repeat: int) -> dict:
    """Tokenize ``data`` into a cache entry (once), then time its check, and one cached `lora-ft data` run."""
    from lora_ft.tokenized import integrity
    from lora_ft.tokenized.folders import META_FILE

    config, cache = work / "run.yaml", work / "cache"
    write_config(config, data)
    command = [sys.executable, "-m", "lora_ft", "data", str(config)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    entries = [p for p in cache.iterdir() if (p / META_FILE).is_file()] if cache.is_dir() else []
    if not entries:
        print(f"tokenizing {data} into a cache entry (once) ...", flush=True)
        subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True)
        entries = [p for p in cache.iterdir() if (p / META_FILE).is_file()]
    entry = max(entries, key=lambda p: (p / META_FILE).stat().st_mtime)
    meta = json.loads((entry / META_FILE).read_text())
    if "files" not in meta:
        raise SystemExit(f"{entry} was written by code without entry checksums: remove {cache} and run again")
    megabytes = sum(f.stat().st_size for f in entry.glob("*.arrow")) / 1e6
    assert integrity.damage(entry, meta) is None  # also reads the entry into the page cache
    check = timed(lambda: integrity.damage(entry, meta), repeat)
    started = time.perf_counter()
    run = subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True, text=True)
    whole = time.perf_counter() - started
    assert "reused from the cache" in run.stdout
    return {"entry_megabytes": megabytes, "check_seconds": check, "cached_data_command_seconds": whole,
            "rows": meta["rows"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[200_000, 1_000_000])
    parser.add_argument("--entry-rows", type=int, help="also tokenize this many rows into an entry and time its check")
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure (the median is shown)")
    parser.add_argument("--out", default="bench-data", help="the folder bench_data.py uses: the files are shared")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    machine = cpu()
    print(f"machine: {machine}", flush=True)
    lines = [f"Machine: {machine}", "", "| rows | MB | way | ms | MB/s |", "| --- | --- | --- | --- | --- |"]
    results: dict = {"machine": machine, "files": {}, "entry": None}
    for count in sorted(set(args.rows) | ({args.entry_rows} if args.entry_rows else set())):
        work = out / f"rows-{count}"
        work.mkdir(parents=True, exist_ok=True)
        data = work / "train.jsonl"
        write_data(data, count)
        if count not in args.rows:
            continue
        figures = data_figures(data, args.repeat)
        results["files"][count] = figures
        for way, seconds in figures["seconds"].items():
            rate = "(reads no data)" if way.startswith("old") else f"{figures['megabytes'] / seconds:,.0f}"
            lines.append(f"| {count:,} | {figures['megabytes']:.0f} | {way} | {seconds * 1000:,.2f} | {rate} |")
            print(lines[-1], flush=True)
    if args.entry_rows:
        work = out / f"rows-{args.entry_rows}"
        entry = entry_figures(work, work / "train.jsonl", args.repeat)
        results["entry"] = entry
        rate = entry["entry_megabytes"] / entry["check_seconds"]
        lines += ["", "| entry rows | entry MB | check ms | MB/s | cached `lora-ft data`, whole command |",
                  "| --- | --- | --- | --- | --- |",
                  f"| {args.entry_rows:,} | {entry['entry_megabytes']:.0f} | {entry['check_seconds'] * 1000:,.0f} | "
                  f"{rate:,.0f} | {entry['cached_data_command_seconds']:.1f} s |"]
        print("\n".join(lines[-3:]), flush=True)
    (out / "HASH.md").write_text("\n".join(lines) + "\n")
    (out / "HASH.json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
