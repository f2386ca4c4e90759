"""Prompt and completion: ``{"prompt": "...", "completion": "..."}``, as text or (TRL's conversational form) as
lists of messages."""

from lora_ft.formats import DataFormat
from lora_ft.conversations import checked_conversation, conversation_turns
from lora_ft.samples import RowFault, Sample, required_text

COLUMNS = ("prompt", "completion")


def detects(row: dict) -> bool:
    return all(column in row for column in COLUMNS)


def to_sample(row: dict) -> Sample:
    prompt, completion = row.get("prompt"), row.get("completion")
    if prompt is None:
        raise RowFault("missing field 'prompt'")
    if completion is None:
        raise RowFault("missing field 'completion'")
    if isinstance(prompt, list) or isinstance(completion, list):  # conversational prompt/completion
        turns = conversation_turns(prompt, "role", "content", "prompt") + conversation_turns(
            completion, "role", "content", "completion")
        return Sample("", messages=checked_conversation(turns))
    prompt = required_text(row, "prompt", "prompt")
    completion = required_text(row, "completion", "answer")
    return Sample("", messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}])


FORMAT = DataFormat("prompt_completion", COLUMNS, detects, to_sample, order=40)
