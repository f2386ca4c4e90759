"""One chunk of rows to one Arrow record batch of tokens: the work each tokenizing process does.

A chunk is a list of ``(location, row)`` read from a data file (or of ready :class:`Sample` objects, for sets a
command brings itself). Each row becomes a sample as :func:`lora_ft.data.loading.row_sample` makes it (a row that
cannot be used comes back as a fault with its reason), then tokens and labels as
:func:`lora_ft.data.tokenization.encode_chunk` makes them, cut at ``data.max_seq_length``, with what the data report
and the statistics need per sample: its length and trained tokens before the cut, and a digest of its content for
the duplicate and leakage checks. Preference data (``dpo``, ``orpo``, ``kto``) keeps per pair its prompt's tokens and
each answer's, before any length limit (:func:`lora_ft.data.preference_tokens.encode_preferences`): the limits are
applied when the split is opened, so changing them does not tokenize again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from lora_ft.methods import method_of
from lora_ft.data.loading import row_sample, unpaired
from lora_ft.samples import RowFault, Sample
from lora_ft.data.statistics import content_key
from lora_ft.data.tokenization import IGNORE, ChatRenderer, encode_chunk


def schema(preference: bool = False):
    """The columns of a tokenized split: an SFT one, or (``preference``) a preference one."""
    import pyarrow as pa

    if preference:
        return pa.schema([
            ("location", pa.string()),
            ("sample", pa.string()),  # {"messages": prompt turns, "chosen": [...] or null, "rejected": [...] or null}
            ("prompt_ids", pa.list_(pa.int32())),  # untruncated; the answers run through their end-of-turn token
            ("chosen_ids", pa.list_(pa.int32())),  # null for a KTO row with only a rejected answer
            ("rejected_ids", pa.list_(pa.int32())),  # null for a KTO row with only a chosen answer
            ("content_key", pa.binary(16)),
        ])
    return pa.schema([
        ("location", pa.string()),  # file:line
        ("sample", pa.string()),  # the sample as JSON: {"messages": [...]} or {"text": "..."}
        ("input_ids", pa.list_(pa.int32())),  # as trained: cut at max_seq_length
        ("labels", pa.list_(pa.int32())),
        ("length", pa.int32()),  # tokens before the cut
        ("trained", pa.int32()),  # trained tokens before the cut
        ("trained_kept", pa.int32()),  # trained tokens within max_seq_length
        ("content_key", pa.binary(16)),  # the same for samples equal after normalization
    ])


@dataclass
class Settings:
    """What every chunk is encoded with."""

    renderer: ChatRenderer
    train_on: str
    max_length: int
    system_prompt: str | None
    method: str = "sft"  # the training method's name (lora_ft/methods/): it says whether rows are pairs

    @property
    def preference(self) -> bool:
        return method_of(self.method).pairs

    def schema(self):
        return schema(self.preference)


@dataclass
class EncodedChunk:
    items: int  # rows in the chunk
    positions: list[int]  # of the rows that became samples, in order; row i of ``batch`` is positions[i] (a KTO
    # pair is two samples of one row)
    faults: list[tuple[int, str, str]]  # (position, location, reason) of the rows that did not
    batch: Any  # pyarrow.RecordBatch


_SETTINGS: Settings | None = None  # in a tokenizing process: set before it starts (fork) or by its initializer


def use_settings(settings: Settings) -> None:
    global _SETTINGS
    _SETTINGS = settings


def sample_json(sample: Sample) -> str:
    if sample.is_preference:
        value = {"messages": sample.messages, "chosen": sample.chosen, "rejected": sample.rejected}
    else:
        value = {"messages": sample.messages} if sample.messages is not None else {"text": sample.text}
    if sample.tools is not None:
        value["tools"] = sample.tools
    return json.dumps(value, ensure_ascii=False)


def sample_from_json(location: str, text: str) -> Sample:
    value = json.loads(text)
    return Sample(location, messages=value.get("messages"), text=value.get("text"), chosen=value.get("chosen"),
                  rejected=value.get("rejected"), tools=value.get("tools"))


def encode_rows(fmt: str | None, items: list) -> EncodedChunk:
    """Encode one chunk with the process's settings (:func:`use_settings`)."""
    settings = _SETTINGS
    samples, positions, faults = [], [], []
    for position, item in enumerate(items):
        if isinstance(item, Sample):
            samples.append(item)
            positions.append(position)
            continue
        location, row = item
        try:
            sample = row_sample(row, fmt, location, settings.system_prompt)
        except RowFault as fault:
            faults.append((position, location, str(fault)))
            continue
        for one in unpaired(sample) if method_of(settings.method).splits_pairs else (sample,):
            samples.append(one)
            positions.append(position)
    batch = (preference_batch if settings.preference else encoded_batch)(samples, settings)
    return EncodedChunk(len(items), positions, faults, batch)


def encoded_batch(samples: list[Sample], settings: Settings):
    """The samples' columns (:func:`schema`) as one record batch."""
    import pyarrow as pa

    limit = settings.max_length
    ids_column, labels_column, lengths, trained, trained_kept = [], [], [], [], []
    for ids, labels in encode_chunk(samples, settings.renderer, settings.train_on) if samples else []:
        lengths.append(len(ids))
        trained.append(len(labels) - labels.count(IGNORE))
        kept = labels[:limit]
        trained_kept.append(len(kept) - kept.count(IGNORE))
        ids_column.append(ids[:limit])
        labels_column.append(kept)
    return pa.RecordBatch.from_arrays([
        pa.array([s.location for s in samples], pa.string()),
        pa.array([sample_json(s) for s in samples], pa.string()),
        pa.array(ids_column, pa.list_(pa.int32())),
        pa.array(labels_column, pa.list_(pa.int32())),
        pa.array(lengths, pa.int32()),
        pa.array(trained, pa.int32()),
        pa.array(trained_kept, pa.int32()),
        pa.array([content_key(s) for s in samples], pa.binary(16)),
    ], schema=schema())


def preference_batch(samples: list[Sample], settings: Settings):
    """Preference samples' columns (:func:`schema` with ``preference``) as one record batch."""
    import pyarrow as pa

    from lora_ft.data.preference_tokens import encode_preferences

    encoded = encode_preferences(samples, settings.renderer)
    ids = pa.list_(pa.int32())
    return pa.RecordBatch.from_arrays([
        pa.array([s.location for s in samples], pa.string()),
        pa.array([sample_json(s) for s in samples], pa.string()),
        pa.array([e[1] for e in encoded], ids),
        pa.array([e[2] for e in encoded], ids),
        pa.array([e[3] for e in encoded], ids),
        pa.array([content_key(s) for s in samples], pa.binary(16)),
    ], schema=schema(preference=True))
