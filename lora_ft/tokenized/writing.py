"""Data files to an Arrow file of tokens, on every core: the main process reads rows, worker processes turn
chunks of them into tokens (:mod:`lora_ft.tokenized.encoding`), and the main process writes their record batches
in order, counting what each dataset kept and dropped as training always has.

Memory stays flat whatever the size of the data: a few chunks are in flight at a time, and the rows go to disk as
they come back.

The workers are quiet: they leave Ctrl-C to the main process (which stops them), and when the main process is gone
(``kill -9``, out of memory) they end without a word as soon as they find nobody to send their results to.
"""

from __future__ import annotations

import multiprocessing.context
import multiprocessing.pool
import os
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from lora_ft.config import DatasetSource, LoadedConfig
from lora_ft.errors import UserError
from lora_ft.files import HASH_BLOCK, HashedFile
from lora_ft.data.loading import (DatasetReport, check_format_kind, data_files, detected_format, source_report,
                                  source_rows)
from lora_ft.samples import RowFault, Sample
from lora_ft.data.tokenization import ENCODE_CHUNK as ROWS_PER_CHUNK  # rows a tokenizing process takes at a time
from lora_ft.data.tokenization import Progress
from lora_ft.tokenized.encoding import EncodedChunk, Settings, encode_rows, schema, use_settings

PARALLEL_FROM_BYTES = 4 << 20  # data files smaller than this are tokenized in the main process: starting workers
# costs more than it saves
IN_FLIGHT_PER_WORKER = 2


def worker_count(files_bytes: int, requested: int | None = None) -> int:
    """Processes to tokenize with: one per core available to this process, one for small data."""
    if requested is not None:
        return max(1, requested)
    if files_bytes < PARALLEL_FROM_BYTES:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, 32))


class Encoders:
    """:func:`encode_rows` over chunks, in the main process or on a pool of processes, results in order."""

    def __init__(self, settings: Settings, workers: int):
        use_settings(settings)
        self.pool, self.workers = None, workers
        if workers > 1:
            # Each worker is one tokenizing thread; the tokenizer's own thread pool would only compete with the
            # other workers.
            self._parallelism = os.environ.get("TOKENIZERS_PARALLELISM")
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
            self.pool = _QuietPool(workers, initializer=_start_worker, initargs=(settings,),
                                   context=_worker_context(settings))

    def map(self, chunks: Iterator[tuple[str | None, list]]) -> Iterator[EncodedChunk]:
        if self.pool is None:
            for fmt, items in chunks:
                yield encode_rows(fmt, items)
            return
        pending: deque = deque()
        for fmt, items in chunks:
            pending.append(self.pool.apply_async(encode_rows, (fmt, items)))
            if len(pending) >= IN_FLIGHT_PER_WORKER * self.workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None
            if self._parallelism is None:
                os.environ.pop("TOKENIZERS_PARALLELISM", None)
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = self._parallelism


def _worker_context(settings: Settings) -> multiprocessing.context.BaseContext:
    """How the workers start: forked from this process while it runs no other Python thread; else from a fork
    server (POSIX), else spawned.

    A process that has trained, evaluated or served in-process before it tokenizes (a notebook, a test session)
    holds threads (a tracker's writer, a progress bar's monitor) whose locks a forked child inherits taken: a worker
    that needs one waits forever. The fork server is a fresh process that has imported only the tokenizing code;
    each worker is forked from it and receives the tokenizer by pickle once, in its initializer. It costs about
    2.7 s of start-up on a 2-core CPU, which a command that tokenizes first, with one thread, does not pay."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    if "forkserver" not in methods:
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__, type(settings.renderer.tokenizer).__module__])
    return context


def _start_worker(settings: Settings) -> None:
    """A tokenizing process: its settings; Ctrl-C (sent by the terminal to every process of the command) is for the
    main process, which stops the workers itself."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    use_settings(settings)


class _QuietWorker:
    """A pool worker that ends quietly once the process that started it is gone (killed): the pipes to it are
    closed, which the library's worker reports in a traceback, from every worker, on the terminal. (Its parent is
    the fork server, so it asks after the process that made the pool by its id.)"""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.started_by = os.getpid()

    def run(self):
        try:
            super().run()
        except (BrokenPipeError, ConnectionResetError, EOFError):
            if _alive(self.started_by):
                raise  # the process that started it is alive: a real fault, shown


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs: a killed process that its own parent has not yet reaped (a zombie) does not."""
    stat = Path(f"/proc/{pid}/stat")
    if Path("/proc/self/stat").is_file():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
        except (OSError, IndexError):
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _QuietSpawnWorker(_QuietWorker, multiprocessing.context.SpawnProcess):
    pass


if hasattr(multiprocessing.context, "ForkServerProcess"):  # POSIX
    class _QuietForkWorker(_QuietWorker, multiprocessing.context.ForkProcess):
        pass

    class _QuietForkServerWorker(_QuietWorker, multiprocessing.context.ForkServerProcess):
        pass


class _QuietPool(multiprocessing.pool.Pool):
    """A process pool of :class:`_QuietWorker` processes."""

    @staticmethod
    def Process(ctx, *args, **kwds):  # noqa: N802 - the name the library's pool creates its workers by
        worker = {"fork": _QuietForkWorker, "forkserver": _QuietForkServerWorker}.get(ctx.get_start_method(),
                                                                                      _QuietSpawnWorker)
        return worker(*args, **kwds)


def _lines(files: list[Path]) -> int | None:
    """Rows to expect, for the progress line: the lines of JSON Lines and CSV files; None for other formats."""
    if not files or any(f.suffix.lower() not in (".jsonl", ".csv") for f in files):
        return None
    total = 0
    for path in files:
        with path.open("rb") as fh:
            while block := fh.read(1 << 24):
                total += block.count(b"\n")
    return total


class SplitWriter:
    """Writes one split's samples to an Arrow stream file, with ``columns`` (an SFT split's by default:
    :func:`lora_ft.tokenized.encoding.schema`)."""

    def __init__(self, path: Path, columns=None):
        import pyarrow as pa

        self.path = path
        self.sink = pa.OSFile(str(path), "wb")
        self.writer = pa.ipc.new_stream(self.sink, columns or schema())
        self.rows = 0

    def write(self, batch) -> None:
        if batch.num_rows:
            self.writer.write_batch(batch)
            self.rows += batch.num_rows

    def close(self) -> None:
        self.writer.close()
        self.sink.close()


class HashedReading:
    """Data files opened so that their bytes are hashed as they are read (:class:`lora_ft.files.HashedFile`), and
    the check that they are the bytes hashed before (the cache's key): a file changed in between, or while it was
    read, would give tokens of contents no key names."""

    def __init__(self):
        self.files: dict[Path, HashedFile] = {}

    def open(self, path: Path):
        import io

        try:
            self.files[path] = HashedFile(path)
        except OSError as exc:  # removed (or made unreadable) since it was hashed
            raise UserError(f"{path} changed while it was read: it cannot be opened now ({exc.strerror or exc}); "
                            "nothing was cached", fix="run the command again once the data stays still") from exc
        return io.BufferedReader(self.files[path], HASH_BLOCK)

    def check(self, expected: dict[Path, str]) -> None:
        for path, hashed in self.files.items():
            now = hashed.finish()
            if now != expected[path]:
                raise UserError(f"{path} changed while it was read (SHA-256 {expected[path][:12]} when the command "
                                f"started, {now[:12]} as read); nothing was cached",
                                fix="run the command again once the data stays still")

    def close(self) -> None:
        for hashed in self.files.values():
            hashed.release()


def write_sources(sources: list[DatasetSource], loaded: LoadedConfig, settings: Settings, out: SplitWriter,
                  workers: int | None = None, hashes: dict[Path, str] | None = None,
                  listed: list[list[Path]] | None = None) -> list[DatasetReport]:
    """Read, tokenize and write every dataset entry of one split; one report per entry. ``listed``: each entry's
    files as the command listed them, and ``hashes`` their SHA-256 then (the cache's key): exactly those files are
    read, and their bytes must be those, or nothing is written."""
    reports = []
    for index, source in enumerate(sources):
        files = data_files(source, loaded) if listed is None else listed[index]
        size = sum(f.stat().st_size for f in files)
        encoders = Encoders(settings, worker_count(size, workers))
        report = source_report(source, files, hashes)
        reading = HashedReading() if hashes is not None else None
        try:
            for batch in source_batches(source, files, loaded.config.method, encoders, report,
                                        reading.open if reading else None):
                out.write(batch)
            if reading is not None:
                reading.check(hashes)
        finally:
            encoders.close()
            if reading is not None:
                reading.close()
        reports.append(report)
    return reports


def write_samples(samples: list[Sample], settings: Settings, out: SplitWriter) -> None:
    """Tokenize and write samples a command brings itself (an evaluation's own set)."""
    encoders = Encoders(settings, 1)
    chunks = ((None, samples[at:at + ROWS_PER_CHUNK]) for at in range(0, len(samples), ROWS_PER_CHUNK))
    for encoded in encoders.map(chunks):
        out.write(encoded.batch)


def source_batches(source: DatasetSource, files: list[Path], method: str, encoders: Encoders,
                   report: DatasetReport, opener=None) -> Iterator:
    """One dataset entry's samples as record batches, in order, counting in ``report`` what was read, kept and
    dropped (and why, where) as they come; stops at ``max_samples``. ``opener``: how the files are opened
    (:class:`HashedReading`)."""
    fmt = None if source.format == "auto" else source.format
    if fmt is not None:
        check_format_kind(fmt, method, source.path, None)
    progress = Progress(_lines(files) if encoders.workers > 1 else None, "tokenizing", "rows")

    def chunks() -> Iterator[tuple[str | None, list]]:
        nonlocal fmt
        chunk: list = []
        for location, row in source_rows(source, files, opener):
            if fmt is None:  # rows before the first object, whose columns tell the format
                if not isinstance(row, dict):
                    report.rows_read += 1
                    report.drop(str(row if isinstance(row, RowFault) else RowFault("row is not an object")),
                                location)
                    continue
                fmt = detected_format(row, source, method, location)
            chunk.append((location, row))
            if len(chunk) == ROWS_PER_CHUNK:
                yield fmt, chunk
                chunk = []
        if chunk:
            yield fmt, chunk

    kept = 0
    for encoded in encoders.map(chunks()):
        take = len(encoded.positions)
        items = encoded.items
        if source.max_samples and kept + take >= source.max_samples:  # stop at the row that fills it
            take = source.max_samples - kept
            items = encoded.positions[take - 1] + 1
        report.rows_read += items
        for position, location, reason in encoded.faults:
            if position < items:
                report.drop(reason, location)
        kept += take
        report.kept, report.format = kept, fmt or source.format
        progress.update(report.rows_read)
        yield encoded.batch.slice(0, take)
        if source.max_samples and kept >= source.max_samples:
            break
    report.format = fmt or source.format
