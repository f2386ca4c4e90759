"""``data.streaming: true``: the training rows read and tokenized as training consumes them, never all at once.

For data too large to tokenize up front or to keep a tokenized copy of. The trainer gets an iterable dataset
(``datasets.IterableDataset``) whose rows are read from the same files, in the same formats, with the same chat
template, labels and over-length policy as a tokenized run, and whose bad rows are counted with their reasons and
locations as they are met (the run stops, naming them, once a dataset's share of bad rows passes
``data.max_dropped_fraction``). The number of steps is ``train.max_steps`` (the number of rows is not known before
they are read). Rows are mixed in a seeded shuffle buffer, reshuffled each pass; the order is a function of the
seed and the pass alone, so a resumed run skips exactly the batches it had trained and goes on from the next one.
Eval data (``data.eval``) is tokenized as usual: it is small and read many times.
"""

from __future__ import annotations

from dataclasses import dataclass

from lora_ft.config import LoadedConfig, RunConfig
from lora_ft.data.loading import DatasetReport, check_drops, data_files, source_report
from lora_ft.data.length_policy import LengthPolicy
from lora_ft.data.tokenization import ChatRenderer
from lora_ft.tokenized.encoding import Settings
from lora_ft.tokenized.writing import Encoders, source_batches

SHUFFLE_BUFFER = 10_000  # rows
CHECK_DROPS_FROM = 1_000  # rows read before the share of bad rows is judged (earlier it says little)


@dataclass
class StreamedTrainSet:
    """The training rows as a stream, and what reading them has found so far."""

    loaded: LoadedConfig
    config: RunConfig
    renderer: ChatRenderer
    reports: list[DatasetReport]
    key: str  # a hash of everything that changes the stream (tokenized_cache's key), for resume

    def dataset(self):
        """The iterable dataset the trainer reads: ``input_ids`` and ``labels`` of the rows that train."""
        from datasets import Features, IterableDataset, Sequence, Value

        features = Features({"input_ids": Sequence(Value("int32")), "labels": Sequence(Value("int32"))})
        _STREAMS[self.key] = self  # found by key: the library hashes what it is given, a tokenizer cannot be hashed
        stream = IterableDataset.from_generator(_stream_rows, features=features, gen_kwargs={"key": self.key})
        return stream.shuffle(seed=self.config.train.seed, buffer_size=SHUFFLE_BUFFER)

    def fingerprint(self) -> dict:
        return {"streamed": self.key, "files": {r.path: r.sha256 for r in self.reports}}

    def summary_lines(self) -> list[str]:
        return [line for report in self.reports for line in report.summary_lines()]


def streamed_train_set(loaded: LoadedConfig, cfg: RunConfig, renderer: ChatRenderer) -> StreamedTrainSet:
    from lora_ft.tokenized.keys import file_hashes, key_of, key_parts

    hashes = file_hashes(loaded, cfg)  # read once: the key and the reports (the manifest) share them
    parts = key_parts(loaded, cfg, renderer, hashes)
    parts["streaming"] = {"overlength": cfg.data.overlength, "seed": cfg.train.seed, "buffer": SHUFFLE_BUFFER}
    reports = [source_report(source, data_files(source, loaded), hashes) for source in cfg.data.train]
    return StreamedTrainSet(loaded, cfg, renderer, reports, key_of(parts))


_STREAMS: dict[str, StreamedTrainSet] = {}


def _stream_rows(key: str):
    yield from _rows(_STREAMS[key])


def _rows(stream: StreamedTrainSet):
    """Every row that trains, in file order: one pass over the data (the trainer starts another for a new epoch)."""
    cfg = stream.config
    policy = LengthPolicy.of(cfg.data)
    settings = Settings(stream.renderer, cfg.data.train_on, policy.max_length, cfg.data.system_prompt)
    encoders = Encoders(settings, 1)  # in the training process: one tokenizing thread keeps ahead of any GPU
    for source, report in zip(cfg.data.train, stream.reports):
        report.rows_read, report.kept, report.dropped = 0, 0, {}  # the counts of this pass
        for batch in source_batches(source, data_files(source, stream.loaded), cfg.method, encoders, report):
            if report.rows_read >= CHECK_DROPS_FROM:
                check_drops([report], cfg.data.max_dropped_fraction)
            columns = batch.to_pydict()
            for location, ids, labels, length, trained_kept in zip(
                    columns["location"], columns["input_ids"], columns["labels"], columns["length"],
                    columns["trained_kept"]):
                if policy.is_over(length) and policy.stops:
                    raise policy.error([location], length)
                if trained_kept == 0 or not policy.keeps(length):
                    continue
                yield {"input_ids": ids, "labels": labels}
        check_drops([report], cfg.data.max_dropped_fraction)


def first_rows(stream: StreamedTrainSet, count: int) -> tuple[list[list[int]], list[list[int]]]:
    """The first rows that train (for the checks made before training), read and tokenized now."""
    rows = _rows(stream)
    ids, labels = [], []
    for row in rows:
        ids.append(row["input_ids"])
        labels.append(row["labels"])
        if len(ids) == count:
            break
    rows.close()
    return ids, labels


@dataclass
class StreamedData:
    """A streamed run's data: the training stream, and the eval set tokenized as usual."""

    train: StreamedTrainSet
    eval_data: object | None  # TokenizedData of the data.eval files
    eval_source: str

    @property
    def eval(self):
        return self.eval_data.train if self.eval_data is not None else None

    @property
    def reports(self) -> list[DatasetReport]:
        return self.train.reports + (self.eval_data.reports if self.eval_data is not None else [])

    def fingerprint(self) -> dict:
        """What a resume must find unchanged. The streamed rows are never all tokenized before training, so the
        tokens' hash stands on what makes them: the stream's key (the files' contents and every setting that
        changes the tokens or their order) and the eval set's tokens."""
        import hashlib

        evaluation = self.eval_data.tokens_sha256() if self.eval_data is not None else None
        tokens = hashlib.sha256(f"{self.train.key}:{evaluation}".encode()).hexdigest()
        return {**self.train.fingerprint(), "tokens_sha256": tokens}


def streamed_data(loaded: LoadedConfig, cfg: RunConfig, renderer: ChatRenderer, cache: bool) -> StreamedData:
    """The stream of training rows and, when the config has ``data.eval`` files, the eval set tokenized (through
    the cache) as in any run."""
    from lora_ft.tokenized.cache import tokenized_data

    stream = streamed_train_set(loaded, cfg, renderer)
    if not cfg.data.eval:
        return StreamedData(stream, None, "none (a streamed run holds no rows out: give data.eval files)")
    eval_only = cfg.model_copy(deep=True)
    eval_only.data.train, eval_only.data.eval, eval_only.data.eval_fraction = cfg.data.eval, [], 0.0
    tokens = tokenized_data(loaded, eval_only, renderer, cache=cache)
    check_drops(tokens.reports, cfg.data.max_dropped_fraction)
    return StreamedData(stream, tokens, f"{len(tokens.train)} rows from data.eval")


def stream_note(cfg: RunConfig) -> str:
    return (f"train: streamed (data.streaming): rows are read and tokenized as training takes them, mixed in a "
            f"shuffle buffer of {SHUFFLE_BUFFER:,} rows; {cfg.train.max_steps} steps (train.max_steps)")
