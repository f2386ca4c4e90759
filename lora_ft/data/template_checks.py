"""The checks of a chat template that keep a model able to stop: each answer ends with a trained end-of-turn
token, collated batches keep that token's label, and the tokenizer saved with the adapter carries the template used
in training. :func:`template_check` runs one: a failure stops the run, or, with ``data.template_checks: false``, is
a warning."""

from __future__ import annotations

from lora_ft import console
from lora_ft.data.tokenization import IGNORE, ChatRenderer, tokenize_samples
from lora_ft.errors import UserError
from lora_ft.samples import Sample


def template_check(blocking: bool, check, *args) -> None:
    """Run one template check: a failure stops the run, or with data.template_checks: false, is a warning."""
    try:
        check(*args)
    except UserError as exc:
        if blocking:
            exc.fix = f"{exc.fix}; to train anyway, set data.template_checks: false" if exc.fix else exc.fix
            raise
        console.say(f"warning (data.template_checks is off): {exc.title}")


def check_end_of_turn_trained(renderer: ChatRenderer, train_on: str) -> None:
    """Refuse a template whose answers do not end with a trained end-of-turn token: the model would never stop."""
    if renderer.end_of_turn_token_id() is None:
        raise UserError(
            "the chat template does not end answers with a single end-of-turn token "
            f"(found {renderer.end_of_turn!r} after an answer), so the model would never learn to stop",
            fix="use model.chat_template: chatml, llama3 or alpaca (which end answers with EOS)",
        )
    probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}]
    tokenized = tokenize_samples([Sample("template check", messages=probe)], renderer, 10_000, train_on)
    ids, labels = tokenized.input_ids[0], tokenized.labels[0]
    eot = renderer.end_of_turn_token_id()
    closing = max(i for i, token in enumerate(ids) if token == eot)  # the answer is the last turn of the probe
    if labels[closing] == IGNORE:
        raise UserError("the end-of-turn token of an answer is not trained by this template",
                        fix="use model.chat_template: chatml, llama3 or alpaca")


def check_collated_end_of_turn(input_ids: list[list[int]], labels: list[list[int]], end_of_turn_id: int,
                               pad_token_id: int, padding_free: bool, sample_count: int = 8) -> None:
    """Collate a few samples as training will and check each answer's closing end-of-turn token keeps its label.

    This is where a pad token equal to EOS would bite: a collator that masks padding by token id would also mask
    every answer's end, and the model would never learn to stop.
    """
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    chosen = [(ids, row) for ids, row in zip(input_ids, labels)
              if end_of_turn_id in [t for t in row if t != IGNORE]][:sample_count]
    if not chosen:
        return
    collator = DataCollatorForLanguageModeling(pad_token_id=pad_token_id, padding_free=padding_free)
    batch = collator([{"input_ids": ids, "labels": labels} for ids, labels in chosen])
    collated = batch["labels"].tolist()
    offset = 0
    for row, (ids, labels) in enumerate(chosen):
        last = max(i for i, t in enumerate(labels) if t == end_of_turn_id)
        got = collated[0][offset + last] if padding_free else collated[row][last]
        offset += len(ids)
        if got != end_of_turn_id:
            raise UserError(
                "collated training batches mask the answers' end-of-turn token (as padding?), so the model would "
                "never learn to stop",
                fix="give the tokenizer a pad token distinct from its EOS token",
            )


def check_saved_template(directory, template: str) -> None:
    """The tokenizer saved with the adapter must carry exactly the chat template used in training."""
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(directory).chat_template
    if saved != template:
        raise UserError(f"the chat template saved in {directory} differs from the one used in training",
                        fix="report this as a bug; meanwhile copy the training template into chat_template.jinja")
