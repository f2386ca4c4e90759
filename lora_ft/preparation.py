"""The one preparation step every command shares: config -> data -> tokenizer and chat template -> tokens.

``train``, ``plan``, ``data`` and ``eval`` all call :func:`prepare`, so each sees the data exactly as training
does: the same rows kept and dropped, the same template, the same ``max_seq_length``, ``train_on`` and
``overlength``. It reads files and the tokenizer only, never model weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from lora_ft import console
from lora_ft.methods import method_of
from lora_ft.config import LoadedConfig, RunConfig
from lora_ft.data import LoadedData, check_drops, load_data
from lora_ft.data import template_checks
from lora_ft.data.length_policy import LengthPolicy
from lora_ft.data.statistics import summary_lines, tokenized_stats_lines
from lora_ft.errors import UserError
from lora_ft.model import ChatTokenizer, load_chat_tokenizer
from lora_ft.tokenized import PreferenceData, TokenizedData, tokenized_data, tokenized_samples
from lora_ft.tokenized.streaming import StreamedData, first_rows, stream_note, streamed_data


@dataclass
class Prepared:
    """The data and tokenizer of a run, and its tokenized train and eval sets.

    Data is tokenized into memory-mapped Arrow files (:mod:`lora_ft.tokenized`, cached between commands). SFT:
    ``data`` is a :class:`TokenizedData` and the token sets are its :class:`TokenizedSplit` views. Preference
    pairs: ``data`` is a :class:`PreferenceData` (or, for pairs a command brings, a :class:`LoadedData`), and the
    token sets are its pairs with the run's length limits applied, on first use."""

    config: RunConfig
    data: LoadedData | TokenizedData | PreferenceData | StreamedData
    chat: ChatTokenizer

    @property
    def is_streamed(self) -> bool:
        """Training rows read as training takes them (``data.streaming``): no tokens to count before."""
        return isinstance(self.data, StreamedData)

    @cached_property
    def train_tokens(self):
        if self.method.prompts:
            return self._prompts("train")
        return self.data.train if not self.is_preference else self._fit("train")

    @cached_property
    def eval_tokens(self):
        """The eval set's tokens; None for SFT without eval data."""
        if self.method.prompts:
            return self._prompts("eval")
        return self.data.eval if not self.is_preference else self._fit("eval")

    def _prompts(self, split: str):
        """An RL run's prompts (:mod:`lora_ft.data.prompt_sets`), rendered and measured."""
        from lora_ft.data.prompt_sets import prompt_set

        return prompt_set(getattr(self.data, split), self.chat.renderer, self.config.data.max_seq_length,
                          self.config.method_settings.max_completion_length)

    @property
    def stop_ids(self) -> list[int]:
        """The ids that end an answer: the template's end-of-turn token, then the tokenizer's EOS."""
        from lora_ft.data.tokenization import answer_stop_ids

        return answer_stop_ids(self.chat.renderer.end_of_turn_token_id(), self.chat.tokenizer.eos_token_id)

    @property
    def is_preference(self) -> bool:
        return self.method.pairs

    @property
    def method(self):
        """The run's training method (lora_ft/methods/)."""
        return method_of(self.config.method)

    def encoded_pairs(self, split: str):
        """A preference split's pairs as ``(location, prompt, chosen, rejected)`` tokens, before the length limits:
        read from the tokenized data, or (pairs a command brought) tokenized now."""
        from lora_ft.data.preference_tokens import encode_preferences

        pairs = getattr(self.data, split)
        if isinstance(self.data, PreferenceData):
            return pairs.encoded() if pairs is not None else iter(())
        return iter(encode_preferences(pairs, self.chat.renderer))

    def _fit(self, split: str):
        from lora_ft.data.preference_tokens import fit_preferences

        data = self.config.data
        return fit_preferences(self.encoded_pairs(split), data.max_seq_length, data.overlength,
                               getattr(self.config.method_settings, "max_prompt_length", None),
                               prompt_key=f"{self.config.method}.max_prompt_length")

    def fingerprint(self) -> dict:
        """What a resumed run must find unchanged: the tokens and labels, and the files they came from."""
        from lora_ft.rundir.resume import data_fingerprint

        if self.is_streamed:
            return self.data.fingerprint()
        if self.method.prompts:
            return {"tokens_sha256": self.train_tokens.sha256(self.eval_tokens),  # the rendered prompts
                    "files": {r.path: r.sha256 for r in self.data.reports}}
        if not self.is_preference:
            return {"tokens_sha256": self.data.tokens_sha256(), "files": {r.path: r.sha256 for r in self.data.reports}}
        return data_fingerprint(self.train_tokens.input_ids, self.train_tokens.labels, self.eval_tokens.input_ids,
                                self.eval_tokens.labels, self.data.reports)

    def datasets(self):
        """The tokenized sets as the trainer takes them: (train, eval or None)."""
        if self.method.prompts:
            return self.train_tokens.dataset(), self.eval_tokens.dataset()
        if not self.is_preference:  # a tokenized split, or a stream (data.streaming)
            evaluation = self.eval_tokens
            return self.train_tokens.dataset(), evaluation.dataset() if evaluation is not None and evaluation.kept \
                else None
        from datasets import Dataset

        def dataset(tokens):
            return Dataset.from_dict(self.method.columns(tokens))

        return dataset(self.train_tokens), dataset(self.eval_tokens) if len(self.eval_tokens) else None

    def cache_record(self) -> dict | None:
        """Where the tokenized data is kept, for the run's manifest."""
        if self.is_streamed:
            evaluation = self.data.eval_data
            return {"streamed": self.data.train.key, "eval_cache_key": evaluation.key if evaluation else None}
        return self.data.record() if isinstance(self.data, (TokenizedData, PreferenceData)) else None


def prepare(loaded: LoadedConfig, cfg: RunConfig | None = None, *, data: LoadedData | None = None,
            chat: ChatTokenizer | None = None, checks: bool = True, cache: bool = True,
            stream: bool = False) -> Prepared:
    """Load the tokenizer and chat template, read and tokenize the data; say what each step found.

    ``cfg``: the resolved config (default: the loaded one). ``data`` and ``chat``: given instead of read (an
    evaluation of a finished run brings its own samples and its saved tokenizer). ``checks``: stop on what would
    stop training (no trained token left, a template that never trains its end-of-turn token); off for the data
    report, which lists such faults instead. ``cache``: reuse and keep the tokenized data (``--no-cache``: not).
    ``stream``: stream the training rows when the config asks for it (``data.streaming``; training only: the data
    report and the plan read every row).
    """
    cfg = cfg or loaded.config
    console.section("model")
    chat = chat or load_chat_tokenizer(loaded, cfg.model)
    renderer = chat.renderer
    console.say(chat.pad_note)
    if checks:
        template_checks.template_check(cfg.data.template_checks, template_checks.check_end_of_turn_trained, renderer,
                                       cfg.data.train_on)
    console.say(f"chat template: {chat.template_origin}; answers end with {renderer.end_of_turn!r} (trained)")

    console.section("data")
    if data is None and stream and cfg.data.streaming:
        prepared = Prepared(cfg, streamed_data(loaded, cfg, renderer, cache), chat)
        _check_streamed(prepared, checks)
        return prepared
    if method_of(cfg.method).prompts:
        return _prepared_prompts(Prepared(cfg, data or load_data(loaded), chat), checks)
    if data is None:
        data = tokenized_data(loaded, cfg, renderer, cache=cache)
        check_drops(data.reports, loaded.config.data.max_dropped_fraction)
    elif not method_of(cfg.method).pairs:  # samples a command brought (pairs it brought: tokenized on first use)
        data = tokenized_samples(data.train, data.eval, data.reports, data.eval_source, cfg, renderer)
    for line in summary_lines(data):
        console.say(line)
    prepared = Prepared(cfg, data, chat)
    if not checks:
        return prepared

    train_tokens, eval_tokens = prepared.train_tokens, prepared.eval_tokens
    if prepared.is_preference:
        for name, tokens in (("train", train_tokens), ("eval", eval_tokens)):
            if len(tokens) or name == "train" or data.eval:
                console.say(preference_line(name, tokens, cfg))
    else:
        for name, split in (("train", train_tokens), ("eval", eval_tokens)):
            if split is not None:
                console.say(split_line(name, split, cfg))
        policy = LengthPolicy.of(cfg.data)
        if policy.stops:
            over = [(split.over_length_locations(), split.over_length, split.longest())
                    for split in (train_tokens, eval_tokens) if split is not None and split.over_length]
            if over:
                raise policy.error([loc for locations, _, _ in over for loc in locations],
                                   max(longest for _, _, longest in over), count=sum(count for _, count, _ in over))
        for line in tokenized_stats_lines(train_tokens):
            console.say(line)
    if not (len(train_tokens) if prepared.is_preference else train_tokens.kept):
        raise UserError("no training sample has a trained token left" if not prepared.is_preference else
                        "no training pair is left after the length limits",
                        fix="raise data.max_seq_length, or check that the samples have answers")
    if not prepared.is_preference:
        _check_collated(prepared, *train_tokens.kept_tokens(limit=COLLATED_CHECK_ROWS))
    return prepared


def _prepared_prompts(prepared: Prepared, checks: bool) -> Prepared:
    """An RL run's prompts: read, rendered and measured, with a line for each split."""
    cfg = prepared.config
    for line in summary_lines(prepared.data):
        console.say(line)
    completion = cfg.method_settings.max_completion_length
    for name, prompts in (("train", prepared.train_tokens), ("eval", prepared.eval_tokens)):
        if len(prompts) or prompts.too_long or name == "train":
            console.say(prompts.line(name, cfg.data.max_seq_length, completion))
    if checks and not len(prepared.train_tokens):
        raise UserError("no training prompt is left after the length limit",
                        fix="raise data.max_seq_length or lower grpo.max_completion_length",
                        settings=("data.max_seq_length",))
    return prepared


COLLATED_CHECK_ROWS = 64  # rows the collated end-of-turn check looks among


def _check_collated(prepared: Prepared, input_ids: list[list[int]], labels: list[list[int]]) -> None:
    """Collate the first training rows as the trainer will and check that each answer keeps its end-of-turn."""
    cfg, chat = prepared.config, prepared.chat
    if chat.renderer.end_of_turn_token_id() is not None:
        template_checks.template_check(cfg.data.template_checks, template_checks.check_collated_end_of_turn,
                                       input_ids, labels, chat.renderer.end_of_turn_token_id(),
                                       chat.tokenizer.pad_token_id, cfg.train.padding_free or cfg.train.packing)


def _check_streamed(prepared: Prepared, checks: bool) -> None:
    """What can be said and checked of a stream before training: its eval set, and its first rows."""
    cfg, data = prepared.config, prepared.data
    console.say(stream_note(cfg))
    console.say(f"eval data: {data.eval_source}")
    if data.eval is not None:
        console.say(split_line("eval", data.eval, cfg))
    if not checks:
        return
    input_ids, labels = first_rows(data.train, COLLATED_CHECK_ROWS)
    if not input_ids:
        raise UserError("no training sample has a trained token left",
                        fix="raise data.max_seq_length, or check that the samples have answers")
    _check_collated(prepared, input_ids, labels)


def split_line(name: str, split, cfg: RunConfig) -> str:
    """What tokenization did to an SFT split, in one line."""
    max_length = cfg.data.max_seq_length
    dropped_long = f"{split.over_length} dropped as longer than {max_length} tokens; " \
        if LengthPolicy.of(cfg.data).drops else ""
    return (f"{name}: {split.kept} samples, {split.tokens:,} tokens, {split.trained_tokens:,} trained; "
            f"{split.truncated} truncated at {max_length} tokens (losing {split.truncated_trained_tokens} trained "
            f"tokens); {dropped_long}{split.no_trained_token} left with no trained token")


def preference_line(name: str, tokens, cfg: RunConfig) -> str:
    """What tokenization did to a preference set, in one line."""
    max_length = cfg.data.max_seq_length
    kind = "answers" if method_of(cfg.method).splits_pairs else "pairs"
    dropped = [f"{len(tokens.over_length)} dropped as longer than {max_length} tokens"] \
        if LengthPolicy.of(cfg.data).drops else []
    dropped += [f"{len(tokens.cut_before_difference)} dropped as cut before their answers differ"] \
        if tokens.cut_before_difference else []
    dropped += [f"{len(tokens.prompt_fills_length)} dropped as their prompt fills {max_length} tokens"] \
        if tokens.prompt_fills_length else []
    cut = f"; {tokens.prompts_cut} prompts cut to their last tokens" if tokens.prompts_cut else ""
    return (f"{name}: {len(tokens)} {kind}, {tokens.tokens:,} tokens, {tokens.trained_tokens:,} in answers; "
            f"{tokens.truncated} truncated at {max_length} tokens (losing {tokens.truncated_trained_tokens} answer "
            f"tokens){cut}" + ("; " + "; ".join(dropped) if dropped else ""))
