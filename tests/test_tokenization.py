"""Loss masking: only the answers and their end-of-turn token carry labels."""

from __future__ import annotations

import pytest

from lora_ft.data import Sample
from lora_ft.errors import UserError
from lora_ft.templates import available_chat_templates, read_chat_template
from lora_ft.data.template_checks import check_end_of_turn_trained
from lora_ft.data.tokenization import IGNORE, ChatRenderer, tokenize_samples

CONVERSATION = [
    {"role": "system", "content": "You are a careful legal assistant."},
    {"role": "user", "content": "What is a contract?"},
    {"role": "assistant", "content": "A legally binding agreement."},
    {"role": "user", "content": "And consideration?"},
    {"role": "assistant", "content": "Something of value exchanged."},
]


def _trained_text(tokenizer, ids, labels) -> list[str]:
    """The trained tokens, grouped into contiguous runs and decoded."""
    runs, current = [], []
    for token, label in zip(ids, labels):
        if label != IGNORE:
            assert label == token
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


def test_only_answers_and_their_end_of_turn_are_trained(chat_tokenizer):
    renderer = ChatRenderer(chat_tokenizer, chat_tokenizer.chat_template)
    out = tokenize_samples([Sample("x:1", messages=CONVERSATION)], renderer, 1000, "answers")
    runs = _trained_text(chat_tokenizer, out.input_ids[0], out.labels[0])
    assert runs == ["A legally binding agreement.<|im_end|>", "Something of value exchanged.<|im_end|>"]
    eos = chat_tokenizer.convert_tokens_to_ids("<|im_end|>")
    # every end-of-turn after an answer is trained; the ones closing system and user turns are not
    positions = [i for i, t in enumerate(out.input_ids[0]) if t == eos]
    assert [out.labels[0][i] != IGNORE for i in positions] == [False, False, True, False, True]


def test_train_on_all_labels_every_token(chat_tokenizer):
    renderer = ChatRenderer(chat_tokenizer, chat_tokenizer.chat_template)
    out = tokenize_samples([Sample("x:1", messages=CONVERSATION)], renderer, 1000, "all")
    assert out.labels[0] == out.input_ids[0]


def test_truncation_counts_lost_tokens_and_drops_samples_without_labels(chat_tokenizer):
    renderer = ChatRenderer(chat_tokenizer, chat_tokenizer.chat_template)
    long_prompt = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "Short."}]
    full = tokenize_samples([Sample("x:1", messages=CONVERSATION)], renderer, 1000, "answers")
    cut = tokenize_samples([Sample("x:1", messages=CONVERSATION), Sample("x:2", messages=long_prompt)], renderer,
                           len(full.input_ids[0]) - 3, "answers")
    assert cut.truncated == 2
    assert cut.dropped_no_label == ["x:2"]
    assert cut.truncated_trained_tokens >= 3
    assert len(cut.input_ids) == 1


def test_raw_text_ends_with_eos(chat_tokenizer):
    renderer = ChatRenderer(chat_tokenizer, chat_tokenizer.chat_template)
    out = tokenize_samples([Sample("x:1", text="A contract.")], renderer, 1000, "answers")
    assert out.input_ids[0][-1] == chat_tokenizer.eos_token_id
    assert out.labels[0] == out.input_ids[0]


@pytest.mark.parametrize("name", ["chatml", "alpaca"])  # the tiny tokenizer has no <|eot_id|> for llama3
def test_shipped_templates_train_their_end_of_turn(chat_tokenizer, name):
    renderer = ChatRenderer(chat_tokenizer, read_chat_template(name))
    check_end_of_turn_trained(renderer, "answers")
    out = tokenize_samples([Sample("x:1", messages=CONVERSATION)], renderer, 1000, "answers")
    runs = _trained_text(chat_tokenizer, out.input_ids[0], out.labels[0])
    assert runs[0].startswith("A legally binding agreement.")
    assert runs[-1].endswith(renderer.end_of_turn)


def test_every_shipped_template_renders_a_generation_prompt(chat_tokenizer):
    assert {"chatml", "llama3", "alpaca", "plain"} <= set(available_chat_templates())
    for name in available_chat_templates():
        renderer = ChatRenderer(chat_tokenizer, read_chat_template(name))
        text, spans = renderer.trained_spans(CONVERSATION)
        assert len(spans) == 2 and all(text[s:e].strip() for s, e in spans)


def test_template_without_end_of_turn_token_is_refused(chat_tokenizer):
    no_stop = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
    with pytest.raises(UserError, match="never learn to stop"):
        check_end_of_turn_trained(ChatRenderer(chat_tokenizer, no_stop), "answers")


@pytest.mark.parametrize("padding_free", [True, False])
def test_collated_batches_keep_every_answers_end_of_turn_even_when_pad_is_eos(chat_tokenizer, padding_free):
    from lora_ft.data.template_checks import check_collated_end_of_turn

    renderer = ChatRenderer(chat_tokenizer, chat_tokenizer.chat_template)
    short = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    tokens = tokenize_samples([Sample("a:1", messages=CONVERSATION), Sample("a:2", messages=short)], renderer,
                              1000, "answers")
    eot = renderer.end_of_turn_token_id()
    assert chat_tokenizer.pad_token_id == eot  # the tiny tokenizer pads with its EOS, the dangerous case
    check_collated_end_of_turn(tokens.input_ids, tokens.labels, eot, pad_token_id=eot, padding_free=padding_free)


def test_a_saved_template_that_differs_is_caught(chat_tokenizer, tmp_path):
    from lora_ft.data.template_checks import check_saved_template

    chat_tokenizer.save_pretrained(tmp_path)
    check_saved_template(tmp_path, chat_tokenizer.chat_template)
    with pytest.raises(UserError, match="differs from the one used in training"):
        check_saved_template(tmp_path, read_chat_template("alpaca"))


@pytest.mark.parametrize("train_on", ["answers", "all"])
def test_batched_encoding_equals_one_sample_at_a_time(chat_tokenizer, monkeypatch, train_on):
    from lora_ft.data import tokenization

    renderer = ChatRenderer(chat_tokenizer, read_chat_template("chatml"))
    short = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}]
    samples = [Sample("x:1", messages=CONVERSATION), Sample("x:2", text="A contract is an agreement."),
               Sample("x:3", messages=short), Sample("x:4", text=""), Sample("x:5", messages=CONVERSATION[:2]),
               Sample("x:6", text="The tenant shall pay rent.")]
    monkeypatch.setattr(tokenization, "ENCODE_CHUNK", 4)  # chunks end mid-list, texts and chats mixed in each
    batched = list(tokenization.encode_samples(samples, renderer, train_on))
    assert batched == [tokenization.encode_sample(s, renderer, train_on) for s in samples]
    assert len(batched) == 6 and batched[1][0][-1] == chat_tokenizer.eos_token_id


def test_a_large_set_shows_its_tokenizing_progress(chat_tokenizer, monkeypatch, capsys):
    from lora_ft.data import tokenization

    renderer = ChatRenderer(chat_tokenizer, read_chat_template("chatml"))
    monkeypatch.setattr(tokenization, "ENCODE_CHUNK", 2)
    monkeypatch.setattr(tokenization, "PROGRESS_FROM", 5)
    samples = [Sample(f"x:{i}", messages=CONVERSATION) for i in range(5)]
    out = tokenize_samples(samples, renderer, 1000, "answers")
    assert len(out.input_ids) == 5
    err = capsys.readouterr().err
    assert "tokenizing: 5 of 5 samples" in err and "samples/s" in err and "s left" in err
    tokenize_samples(samples[:4], renderer, 1000, "answers")  # under PROGRESS_FROM: quiet
    assert "tokenizing" not in capsys.readouterr().err
