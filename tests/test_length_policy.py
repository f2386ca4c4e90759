"""The length policy (``data.max_seq_length`` and ``data.overlength``) in one place: its rule one sample at a time
and on numpy arrays, its error, and the SFT list path and the stored path agreeing under it."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest

from lora_ft.data.length_policy import LengthPolicy
from lora_ft.data.tokenization import IGNORE, fit_to_length
from lora_ft.errors import UserError
from lora_ft.tokenized.split import TokenizedSplit

POLICIES = ("truncate", "drop", "error")
LIMIT = 8


@pytest.mark.parametrize("overlength", POLICIES)
def test_each_policy_below_at_and_above_the_limit(overlength):
    policy = LengthPolicy(LIMIT, overlength)
    for length in (0, LIMIT - 1, LIMIT):
        assert not policy.is_over(length)
        assert policy.keeps(length)
        assert policy.fitted(length) == length
    assert policy.is_over(LIMIT + 1)
    assert policy.keeps(LIMIT + 1) == (overlength != "drop")
    assert policy.fitted(LIMIT + 5) == (0 if overlength == "drop" else LIMIT)
    assert policy.stops == (overlength == "error")
    assert policy.drops == (overlength == "drop")
    assert policy.cuts == (overlength != "drop")


def test_of_reads_the_data_section_and_previewed_counts_error_as_truncate():
    policy = LengthPolicy.of(SimpleNamespace(max_seq_length=16, overlength="error"))
    assert policy == LengthPolicy(16, "error")
    assert policy.previewed() == LengthPolicy(16, "truncate")
    assert LengthPolicy(16, "drop").previewed() == LengthPolicy(16, "drop")


@pytest.mark.parametrize("overlength", POLICIES)
def test_the_numpy_twins_equal_the_scalar_rule(overlength):
    policy = LengthPolicy(LIMIT, overlength)
    lengths = np.random.default_rng(0).integers(0, 3 * LIMIT, size=500)
    assert policy.over_mask(lengths).tolist() == [policy.is_over(int(n)) for n in lengths]
    assert policy.kept_mask(lengths).tolist() == [policy.keeps(int(n)) for n in lengths]
    assert policy.fitted_lengths(lengths).tolist() == [policy.fitted(int(n)) for n in lengths]


def test_the_error_names_the_first_locations_and_the_prompt_key():
    locations = [f"data.jsonl:{i}" for i in range(1, 9)]
    error = LengthPolicy(LIMIT, "error").error(locations, 42, count=12, prompt_key="dpo.max_prompt_length")
    assert isinstance(error, UserError)
    assert "12 sample(s) are longer than data.max_seq_length = 8 tokens (the longest has 42)" in error.title
    assert [p.where for p in error.problems if p.where] == locations[:5]
    assert "... and 7 more" in [p.what for p in error.problems]
    assert "dpo.max_prompt_length" in error.fix and "dpo.max_prompt_length" in error.settings
    plain = LengthPolicy(LIMIT, "error").error(locations[:2], 9)
    assert "max_prompt_length" not in plain.fix
    assert [p.where for p in plain.problems] == locations[:2]


def test_the_report_texts_keep_their_wording():
    assert LengthPolicy(8, "truncate").effect == "are truncated"
    assert LengthPolicy(8, "drop").effect == "are left out"
    assert LengthPolicy(8, "error").effect == "stop training"
    assert LengthPolicy(8, "drop").consequence(3, 1234) == \
        "left out (data.overlength: drop), with their 1,234 trained tokens"
    assert LengthPolicy(8, "truncate").consequence(3, 1234) == "truncated, losing 3 trained tokens"
    assert LengthPolicy(8, "error").sample_note(9) == \
        "9 tokens: cut at max_seq_length 8; data.overlength is 'error', so training would stop"


def _samples(count: int, seed: int = 1) -> list[tuple[str, list[int], list[int]]]:
    """(location, input_ids, labels) of random lengths around the limit, some with no trained token at all and
    some trained only past the limit."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        length = rng.randint(1, 2 * LIMIT)
        ids = [rng.randint(1, 99) for _ in range(length)]
        trained_from = rng.choice([0, length // 2, LIMIT, length])
        labels = [IGNORE if p < trained_from else t for p, t in enumerate(ids)]
        out.append((f"data.jsonl:{i + 1}", ids, labels))
    return out


def _stored(samples, overlength: str) -> TokenizedSplit:
    """A stored split of the samples as the cache writes them: tokens cut to the limit, the full length and the
    trained tokens before and after the cut."""
    from datasets import Dataset

    table = Dataset.from_dict({
        "location": [where for where, _, _ in samples],
        "input_ids": [ids[:LIMIT] for _, ids, _ in samples],
        "labels": [labels[:LIMIT] for _, _, labels in samples],
        "length": np.array([len(ids) for _, ids, _ in samples], dtype=np.int32),
        "trained": np.array([sum(t != IGNORE for t in labels) for _, _, labels in samples], dtype=np.int32),
        "trained_kept": np.array([sum(t != IGNORE for t in labels[:LIMIT]) for _, _, labels in samples],
                                 dtype=np.int32),
    })
    return TokenizedSplit(table, None, LIMIT, overlength)


@pytest.mark.parametrize("overlength", POLICIES)
def test_the_list_path_and_the_stored_path_agree(overlength):
    samples = _samples(200)
    stored = _stored(samples, overlength)
    if overlength == "error":
        with pytest.raises(UserError) as raised:
            fit_to_length(samples, LIMIT, overlength)
        over = [where for where, ids, _ in samples if len(ids) > LIMIT]
        assert [p.where for p in raised.value.problems if p.where] == stored.over_length_locations(5) == over[:5]
        fitted = fit_to_length(samples, LIMIT, "truncate")  # what the stored figures describe: error as truncate
    else:
        fitted = fit_to_length(samples, LIMIT, overlength)
    assert stored.kept == len(fitted.input_ids)
    assert stored.tokens == fitted.tokens
    assert stored.trained_tokens == fitted.trained_tokens
    assert stored.truncated == fitted.truncated
    assert stored.truncated_trained_tokens == fitted.truncated_trained_tokens
    assert stored.over_length == len(fitted.over_length)
    assert stored.no_trained_token == len(fitted.dropped_no_label)
    assert stored.no_trained_token_locations(len(samples)) == fitted.dropped_no_label
    assert stored.locations(np.nonzero(stored.kept_mask)[0]) == fitted.locations
    assert stored.kept_tokens() == (fitted.input_ids, fitted.labels)
    assert stored.lengths(kept_only=True)[0].tolist() == [len(ids) for ids in fitted.input_ids]
