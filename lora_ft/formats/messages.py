"""OpenAI-style conversations: ``{"messages": [{"role": "user", "content": "..."}, ...]}`` (``conversations``
with role/content keys is read the same way)."""

from lora_ft.formats import DataFormat
from lora_ft.samples import RowFault, Sample, checked_conversation, conversation_turns


def detects(row: dict) -> bool:
    if isinstance(row.get("messages"), list):
        return True
    if isinstance(row.get("conversations"), list):
        first = next((t for t in row["conversations"] if isinstance(t, dict)), {})
        return "role" in first
    return False


def to_sample(row: dict) -> Sample:
    column = "messages" if "messages" in row else "conversations"
    if column not in row:
        raise RowFault("missing field 'messages'")
    return Sample("", messages=checked_conversation(conversation_turns(row[column], "role", "content", column)))


FORMAT = DataFormat("messages", ("messages",), detects, to_sample, order=10)
