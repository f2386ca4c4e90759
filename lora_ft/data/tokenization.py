"""Samples to tokens and labels, with the chat template, training on the answers only.

A conversation is rendered with the run's chat template. For each assistant turn, the characters from the start of
its content through its end-of-turn marker (``<|im_end|>``, ``<|eot_id|>``, EOS...) are the trained span; every
other character is context. The rendered text is tokenized once and a token carries a label when it starts inside
a trained span. So the model learns each answer and the token that ends it -- the token that makes generation
stop -- and never learns to write the user's turns or the template's markup.

A sample longer than ``data.max_seq_length`` is truncated, dropped or refused, as ``data.overlength`` says.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from lora_ft.data.length_policy import DEFAULT_OVERLENGTH, LengthPolicy, Overlength
from lora_ft.errors import UserError
from lora_ft.samples import Sample
from lora_ft.tool_turns import drop_reasoning, has_tools

IGNORE = -100


@dataclass
class TokenizedSet:
    input_ids: list[list[int]] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)
    locations: list[str] = field(default_factory=list)
    truncated: int = 0
    truncated_trained_tokens: int = 0
    dropped_no_label: list[str] = field(default_factory=list)
    over_length: list[str] = field(default_factory=list)  # longer than max_length: truncated or dropped, by policy

    @property
    def tokens(self) -> int:
        return sum(len(x) for x in self.input_ids)

    @property
    def trained_tokens(self) -> int:
        return sum(sum(1 for t in y if t != IGNORE) for y in self.labels)


_PROBES = (
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "One?"},
     {"role": "assistant", "content": "1"}, {"role": "user", "content": "Two?"}, {"role": "assistant", "content": "2"}],
)


class ChatRenderer:
    """Renders conversations with one chat template and marks the trained character spans."""

    def __init__(self, tokenizer, template: str, reasoning: str = "train") -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise UserError("lora-ft needs a fast (Rust) tokenizer to align labels with the chat template",
                            fix="use a model whose tokenizer has a tokenizer.json")
        from lora_ft import tool_template

        self.tokenizer = tokenizer
        self.template = template
        self.reasoning = reasoning  # data.reasoning: "train" renders the assistant's reasoning, "drop" leaves it out
        self._compiled = self._compiled_template()
        self._plain = self._compiled_plain()
        self.end_of_turn = self._find_end_of_turn()
        self.renders_tools = tool_template.renders_tools(self.library_render)
        self.renders_reasoning = tool_template.renders_reasoning(self.library_render)

    def __getstate__(self) -> dict:  # to a tokenizing process: what the probes found, and the template compiled
        # again there (a compiled template does not pickle)
        state = dict(self.__dict__)
        state["_compiled"], state["_plain"] = self._compiled is not None, self._plain is not None
        return state

    def __setstate__(self, state: dict) -> None:
        from transformers.utils.chat_template_utils import _compile_jinja_template

        from lora_ft.tool_template import own_template

        self.__dict__.update(state)
        self._compiled = _compile_jinja_template(self.template) if self._compiled else None
        self._plain = _compile_jinja_template(own_template(self.template)) if self._plain else None

    def render(self, messages: list[dict], add_generation_prompt: bool = False, tools: list | None = None) -> str:
        if self.reasoning == "drop":
            messages = drop_reasoning(messages)
        if self._compiled is not None:
            plain = self._plain is not None and not tools and all(m.keys() <= {"role", "content"} for m in messages)
            return (self._plain if plain else self._compiled).render(
                messages=messages, add_generation_prompt=add_generation_prompt, tools=tools, documents=None,
                **self.tokenizer.special_tokens_map)
        return self.library_render(messages, add_generation_prompt, tools)

    def library_render(self, messages: list[dict], add_generation_prompt: bool = False,
                       tools: list | None = None) -> str:
        """The conversation as ``apply_chat_template`` renders it: the reference the fast path is checked against."""
        if self.reasoning == "drop":
            messages = drop_reasoning(messages)
        return self.rendering_with(self.tokenizer, self.template)(messages, add_generation_prompt, tools)

    @staticmethod
    def rendering_with(tokenizer, template: str):
        """``render(messages, add_generation_prompt, tools)`` with ``template``, as the library renders it."""
        return lambda messages, prompt, tools: tokenizer.apply_chat_template(
            messages, chat_template=template, tools=tools, tokenize=False, add_generation_prompt=prompt)

    def check_fast_render(self, messages: list[dict], tools: list | None = None) -> None:
        """Check that the compiled template renders ``messages`` exactly as the library does; if not, every later
        render goes through the library. Called on one conversation per chunk of a large set."""
        if self._compiled is not None and self.render(messages, tools=tools) != self.library_render(messages,
                                                                                                    tools=tools):
            self._compiled = self._plain = None

    def check_renders(self, messages: list[dict]) -> None:
        """Refuse a conversation whose calls or reasoning this template would leave out of the text trained on."""
        if not self.renders_tools and has_tools(messages):
            raise UserError("the chat template drops tool calls and results: the assistant's calls would be trained "
                            "as empty answers",
                            fix="set model.chat_template: auto (lora-ft renders calls in the hermes format), or a "
                                "template that renders tool_calls and tool turns")
        if self.reasoning == "train" and not self.renders_reasoning and any(
                "reasoning_content" in m for m in messages):
            raise UserError("the chat template drops the assistant's reasoning",
                            fix="set model.chat_template: auto (lora-ft renders reasoning as <think>...</think>), "
                                "or data.reasoning: drop to train without it")

    def _compiled_plain(self):
        """For a hermes-wrapped template: the model's own template compiled, which renders a conversation without
        tools, calls or reasoning exactly as the wrapper does and without its pass over the turns (checked on the
        probes); None otherwise."""
        from lora_ft.tool_template import own_template

        own = own_template(self.template)
        return None if own is None or self._compiled is None else self._checked_compile(own)

    def _compiled_template(self):
        """The chat template compiled once by transformers' own Jinja environment, rendered without the per-call
        preparation of ``apply_chat_template`` (4x faster on a large set), or None where it renders differently."""
        return self._checked_compile(self.template)

    def _checked_compile(self, template: str):
        """``template`` compiled, or None where it renders a probe otherwise than the library renders this
        renderer's template."""
        try:
            from transformers.utils.chat_template_utils import _compile_jinja_template

            compiled = _compile_jinja_template(template)
            variables = self.tokenizer.special_tokens_map
            for probe, prompt in ((_PROBES[0], False), (_PROBES[0][:1], True), (_PROBES[1], False),
                                  (_PROBES[1][:3], True)):
                fast = compiled.render(messages=probe, add_generation_prompt=prompt, tools=None, documents=None,
                                       **variables)
                if fast != self.library_render(probe, prompt):
                    return None
            return compiled
        except Exception:  # noqa: BLE001 - an older or newer transformers, or a template only the library renders
            return None

    def trained_spans(self, messages: list[dict], tools: list | None = None) -> tuple[str, list[tuple[int, int]]]:
        """The full rendered text and, for each assistant turn (its text, calls and kept reasoning), the (start, end)
        characters to train on. The tool list, the system turn and the tools' results are never trained on."""
        self.check_renders(messages)
        full = self.render(messages, tools=tools)
        spans = []
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self.render(messages[:index], add_generation_prompt=True, tools=tools)
            upto = full if index == len(messages) - 1 else self.render(messages[: index + 1], tools=tools)
            if not (upto.startswith(before) and full.startswith(upto)):
                raise UserError(
                    "the chat template renders a conversation differently from its beginning, so the answers "
                    "cannot be located for the loss mask",
                    fix="set model.chat_template to one of the shipped templates (chatml, llama3, alpaca)",
                )
            spans.append((len(before), len(upto.rstrip())))
        return full, spans

    def _find_end_of_turn(self) -> str:
        """The text that closes an answer in this template (must be a single special token to learn to stop)."""
        probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}]
        text = self.render(probe)
        tail = text[text.rindex("Hello there") + len("Hello there"):].rstrip()
        return tail

    def end_of_turn_token_id(self) -> int | None:
        """The id of the end-of-turn token, or None when the template closes answers with no single token."""
        if not self.end_of_turn:
            return None
        ids = self.tokenizer(self.end_of_turn, add_special_tokens=False)["input_ids"]
        return ids[-1] if len(ids) == 1 else None


def _labels(ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]], train_on: str) -> list[int]:
    """Each token's label: itself where it starts inside a trained span of characters, else IGNORE."""
    if train_on == "all":
        return list(ids)
    labels, spans, at = [], sorted(spans), 0
    for token, (begin, _) in zip(ids, offsets):  # offsets only grow: walk the spans alongside
        while at < len(spans) and spans[at][1] <= begin:
            at += 1
        labels.append(token if at < len(spans) and spans[at][0] <= begin else IGNORE)
    return labels


def encode_conversation(
    messages: list[dict], renderer: ChatRenderer, train_on: str, tools: list | None = None
) -> tuple[str, list[int], list[int], list[tuple[int, int]]]:
    """Render and tokenize a conversation: ``(text, input_ids, labels, character offsets of each token)``."""
    text, spans = renderer.trained_spans(messages, tools)
    encoded = renderer.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoded["input_ids"]
    offsets = [tuple(o) for o in encoded["offset_mapping"]]
    return text, ids, _labels(ids, offsets, spans, train_on), offsets


def _ending_with_eos(ids: list[int], tokenizer) -> list[int]:
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        return ids + [tokenizer.eos_token_id]
    return ids


def encode_text(text: str, renderer: ChatRenderer) -> list[int]:
    """Tokenize raw text for training: the tokenizer's special tokens, and EOS at the end so it learns to stop."""
    return _ending_with_eos(renderer.tokenizer(text, add_special_tokens=True)["input_ids"], renderer.tokenizer)


def encode_sample(sample: Sample, renderer: ChatRenderer, train_on: str) -> tuple[list[int], list[int]]:
    """A sample's full (untruncated) ``input_ids`` and ``labels``; untrained positions are labelled IGNORE."""
    if sample.messages is not None:
        _, ids, labels, _ = encode_conversation(sample.messages, renderer, train_on, sample.tools)
        return ids, labels
    ids = encode_text(sample.text or "", renderer)
    return ids, list(ids)


ENCODE_CHUNK = 1024  # samples rendered, then tokenized in one call of the fast tokenizer
PROGRESS_FROM = 20_000  # samples; smaller sets take seconds and show no progress
PROGRESS_EVERY = 10.0  # seconds between progress lines


class Progress:
    """A line on the terminal every few seconds: rows done, rows/s and the time left."""

    def __init__(self, total: int | None, doing: str, unit: str):
        import time

        self.total, self.doing, self.unit, self.clock = total, doing, unit, time.monotonic
        self.started = self.last = self.clock()
        self.on = total is not None and total >= PROGRESS_FROM

    def update(self, done: int) -> None:
        now = self.clock()
        if not self.on or (now - self.last < PROGRESS_EVERY and done < self.total):
            return
        from lora_ft import console

        self.last = now
        rate = done / max(now - self.started, 1e-9)
        console.status(f"{self.doing}: {done:,} of {self.total:,} {self.unit}, {rate:,.0f} {self.unit}/s, "
                       f"about {(self.total - done) / max(rate, 1e-9):.0f} s left")


def encodings(tokenizer, texts: list[str]) -> list:
    """The fast tokenizer's encodings (ids and character offsets) of rendered texts, no special tokens added, in
    one batch call."""
    if not texts:
        return []
    backend = tokenizer.backend_tokenizer
    if backend.truncation is None and backend.padding is None:  # else the library's call unsets them
        return backend.encode_batch(texts, add_special_tokens=False)
    return tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True).encodings


def first_token_from(encoding, char: int, tokens: int) -> int:
    """The first token that starts at or after character ``char`` (token starts only grow): a binary search."""
    low, high = 0, tokens
    while low < high:
        middle = (low + high) // 2
        if encoding.token_to_chars(middle)[0] < char:
            low = middle + 1
        else:
            high = middle
    return low


def _labels_of(encoding, spans: list[tuple[int, int]], train_on: str) -> list[int]:
    """:func:`_labels` from the tokenizer's encoding, looking up only the tokens at the spans' edges."""
    ids = encoding.ids
    if train_on == "all":
        return list(ids)
    labels = [IGNORE] * len(ids)
    for begin, end in spans:
        first, last = first_token_from(encoding, begin, len(ids)), first_token_from(encoding, end, len(ids))
        labels[first:last] = ids[first:last]
    return labels


def encode_chunk(chunk: list[Sample], renderer: ChatRenderer, train_on: str) -> list[tuple[list[int], list[int]]]:
    """:func:`encode_sample` for each sample of ``chunk``, with the same result: the chat template rendered by the
    compiled template (checked on the chunk's first conversation), the texts tokenized in one batch call."""
    tokenizer = renderer.tokenizer
    first_chat = next((s for s in chunk if s.messages is not None), None)
    if first_chat is not None:
        renderer.check_fast_render(first_chat.messages, first_chat.tools)
    first_tools = next((s for s in chunk if s.tools), None)
    if first_tools is not None and first_tools is not first_chat:
        renderer.check_fast_render(first_tools.messages, first_tools.tools)
    rendered = [renderer.trained_spans(s.messages, s.tools) if s.messages is not None else None for s in chunk]
    chats = [r[0] for r in rendered if r is not None]
    texts = [s.text or "" for s in chunk if s.messages is None]
    chat_encoded = encodings(tokenizer, chats)
    text_encoded = tokenizer(texts, add_special_tokens=True)["input_ids"] if texts else []
    out, chat_at, text_at = [], 0, 0
    for done in rendered:
        if done is None:
            ids = _ending_with_eos(text_encoded[text_at], tokenizer)
            text_at += 1
            out.append((ids, list(ids)))
        else:
            encoding = chat_encoded[chat_at]
            chat_at += 1
            out.append((encoding.ids, _labels_of(encoding, done[1], train_on)))
    return out


def encode_samples(samples: Iterable[Sample], renderer: ChatRenderer, train_on: str,
                   total: int | None = None) -> Iterator[tuple[list[int], list[int]]]:
    """:func:`encode_sample` for many samples, in order, with the same result, a chunk of :data:`ENCODE_CHUNK` at a
    time (:func:`encode_chunk`). With ``total`` (the number of samples), a large set shows its progress."""
    chunk: list[Sample] = []
    progress, done_count = Progress(total, "tokenizing", "samples"), 0
    for sample in samples:
        chunk.append(sample)
        if len(chunk) == ENCODE_CHUNK:
            encoded = encode_chunk(chunk, renderer, train_on)
            done_count += len(chunk)
            progress.update(done_count)  # before yielding: a consumer may stop at the last sample
            yield from encoded
            chunk = []
    if chunk:
        encoded = encode_chunk(chunk, renderer, train_on)
        progress.update(done_count + len(chunk))
        yield from encoded


def fit_to_length(
    encoded: Iterable[tuple[str, list[int], list[int]]], max_length: int, overlength: Overlength = DEFAULT_OVERLENGTH
) -> TokenizedSet:
    """Apply the over-length policy to ``(location, input_ids, labels)`` triples; drop samples with no label.

    ``truncate`` cuts a long sample to ``max_length`` tokens, ``drop`` leaves it out, ``error`` raises a
    :class:`UserError` naming the first few once every sample has been seen. Every over-length sample's
    location is kept in ``over_length`` whatever the policy.
    """
    out = TokenizedSet()
    policy, longest = LengthPolicy(max_length, overlength), 0
    for location, ids, labels in encoded:
        if policy.is_over(len(ids)):
            out.over_length.append(location)
            longest = max(longest, len(ids))
            if not policy.keeps(len(ids)):
                continue
            out.truncated += 1
            out.truncated_trained_tokens += sum(1 for t in labels[max_length:] if t != IGNORE)
            ids, labels = ids[:max_length], labels[:max_length]
        if all(t == IGNORE for t in labels):
            out.dropped_no_label.append(location)
            continue
        out.input_ids.append(ids)
        out.labels.append(labels)
        out.locations.append(location)
    if policy.stops and out.over_length:
        raise policy.error(out.over_length, longest)
    return out


def tokenize_samples(
    samples: list[Sample], renderer: ChatRenderer, max_length: int, train_on: str,
    overlength: Overlength = DEFAULT_OVERLENGTH,
) -> TokenizedSet:
    """Tokenize samples; apply the over-length policy at ``max_length``; drop samples that keep no trained token."""
    encoded = ((s.location, *pair) for s, pair in zip(samples, encode_samples(samples, renderer, train_on,
                                                                              total=len(samples))))
    return fit_to_length(encoded, max_length, overlength)


def answer_stop_ids(end_of_turn_id: int | None, eos_token_id: int | None) -> list[int]:
    """The token ids that end an answer: the template's end-of-turn token first, then the tokenizer's EOS."""
    return [i for i in dict.fromkeys([end_of_turn_id, eos_token_id]) if i is not None]
