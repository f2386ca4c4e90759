"""The one preparation step every command shares: config -> data -> tokenizer and chat template -> tokens.

``train``, ``plan``, ``data`` and ``eval`` all call :func:`prepare`, so each sees the data exactly as training
does: the same rows kept and dropped, the same template, the same ``max_seq_length``, ``train_on`` and
``overlength``. It reads files and the tokenizer only, never model weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from lora_ft import console, tokenization
from lora_ft.config import LoadedConfig, RunConfig
from lora_ft.data import LoadedData, load_data
from lora_ft.data.statistics import summary_lines, tokenized_stats_lines
from lora_ft.errors import UserError
from lora_ft.model import ChatTokenizer, load_chat_tokenizer


@dataclass
class Prepared:
    """The data and tokenizer of a run, and (computed on first use) its tokenized train and eval sets."""

    config: RunConfig
    data: LoadedData
    chat: ChatTokenizer

    @cached_property
    def train_tokens(self) -> tokenization.TokenizedSet:
        return self._tokenize(self.data.train)

    @cached_property
    def eval_tokens(self) -> tokenization.TokenizedSet:
        return self._tokenize(self.data.eval)

    @property
    def is_preference(self) -> bool:
        return self.config.method != "sft"

    def _tokenize(self, samples):
        data = self.config.data
        if self.is_preference:
            from lora_ft.preference_tokens import tokenize_preferences

            return tokenize_preferences(samples, self.chat.renderer, data.max_seq_length, data.overlength,
                                        self.config.method_settings.max_prompt_length)
        return tokenization.tokenize_samples(samples, self.chat.renderer, data.max_seq_length, data.train_on,
                                             data.overlength)

    def fingerprint(self) -> dict:
        """What a resumed run must find unchanged: the tokens and labels, and the files they came from."""
        from lora_ft.rundir.resume import data_fingerprint

        return data_fingerprint(self.train_tokens.input_ids, self.train_tokens.labels, self.eval_tokens.input_ids,
                                self.eval_tokens.labels, self.data.reports)

    def datasets(self):
        """The tokenized sets as the trainer takes them: (train, eval or None)."""
        from datasets import Dataset

        def dataset(tokens):
            if self.is_preference:
                return Dataset.from_dict(tokens.columns(self.config.method))
            return Dataset.from_dict({"input_ids": tokens.input_ids, "labels": tokens.labels})

        return dataset(self.train_tokens), dataset(self.eval_tokens) if self.eval_tokens.input_ids else None


def prepare(loaded: LoadedConfig, cfg: RunConfig | None = None, *, data: LoadedData | None = None,
            chat: ChatTokenizer | None = None, checks: bool = True) -> Prepared:
    """Read the data, load the tokenizer and chat template, tokenize; say what each step found.

    ``cfg``: the resolved config (default: the loaded one). ``data`` and ``chat``: given instead of read (an
    evaluation of a finished run brings its own samples and its saved tokenizer). ``checks``: stop on what would
    stop training (no trained token left, a template that never trains its end-of-turn token); off for the data
    report, which lists such faults instead.
    """
    cfg = cfg or loaded.config
    console.section("data")
    data = data or load_data(loaded)
    for line in summary_lines(data):
        console.say(line)

    console.section("model")
    chat = chat or load_chat_tokenizer(loaded, cfg.model)
    renderer = chat.renderer
    console.say(chat.pad_note)
    if checks:
        template_check(cfg.data.template_checks, tokenization.check_end_of_turn_trained, renderer, cfg.data.train_on)
    console.say(f"chat template: {chat.template_origin}; answers end with {renderer.end_of_turn!r} (trained)")
    prepared = Prepared(cfg, data, chat)
    if not checks:
        return prepared

    train_tokens, eval_tokens = prepared.train_tokens, prepared.eval_tokens
    max_length = cfg.data.max_seq_length
    for name, tokens in (("train", train_tokens), ("eval", eval_tokens)):
        if not tokens.input_ids and name == "eval" and not data.eval:
            continue
        if prepared.is_preference:
            console.say(preference_line(name, tokens, cfg))
            continue
        dropped_long = f"{len(tokens.over_length)} dropped as longer than {max_length} tokens; " \
            if cfg.data.overlength == "drop" else ""
        console.say(f"{name}: {len(tokens.input_ids)} samples, {tokens.tokens:,} tokens, {tokens.trained_tokens:,} "
                    f"trained; {tokens.truncated} truncated at {max_length} tokens (losing "
                    f"{tokens.truncated_trained_tokens} trained tokens); {dropped_long}{len(tokens.dropped_no_label)} "
                    "left with no trained token")
    for line in tokenized_stats_lines(train_tokens):
        console.say(line)
    if not train_tokens.input_ids:
        raise UserError("no training sample has a trained token left" if not prepared.is_preference else
                        "no training pair is left after the length limits",
                        fix="raise data.max_seq_length, or check that the samples have answers")
    if renderer.end_of_turn_token_id() is not None and not prepared.is_preference:
        template_check(cfg.data.template_checks, tokenization.check_collated_end_of_turn, train_tokens,
                       renderer.end_of_turn_token_id(), chat.tokenizer.pad_token_id,
                       cfg.train.padding_free or cfg.train.packing)
    return prepared


def template_check(blocking: bool, check, *args) -> None:
    """Run one template check: a failure stops the run, or with data.template_checks: false, is a warning."""
    try:
        check(*args)
    except UserError as exc:
        if blocking:
            exc.fix = f"{exc.fix}; to train anyway, set data.template_checks: false" if exc.fix else exc.fix
            raise
        console.say(f"warning (data.template_checks is off): {exc.title}")


def preference_line(name: str, tokens, cfg: RunConfig) -> str:
    """What tokenization did to a preference set, in one line."""
    max_length = cfg.data.max_seq_length
    kind = "answers" if cfg.method == "kto" else "pairs"
    dropped = [f"{len(tokens.over_length)} dropped as longer than {max_length} tokens"] \
        if cfg.data.overlength == "drop" else []
    dropped += [f"{len(tokens.cut_before_difference)} dropped as cut before their answers differ"] \
        if tokens.cut_before_difference else []
    dropped += [f"{len(tokens.prompt_fills_length)} dropped as their prompt fills {max_length} tokens"] \
        if tokens.prompt_fills_length else []
    cut = f"; {tokens.prompts_cut} prompts cut to their last tokens" if tokens.prompts_cut else ""
    return (f"{name}: {len(tokens)} {kind}, {tokens.tokens:,} tokens, {tokens.trained_tokens:,} in answers; "
            f"{tokens.truncated} truncated at {max_length} tokens (losing {tokens.truncated_trained_tokens} answer "
            f"tokens){cut}" + ("; " + "; ".join(dropped) if dropped else ""))
