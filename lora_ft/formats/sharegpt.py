"""ShareGPT conversations: ``{"conversations": [{"from": "human", "value": "..."}, {"from": "gpt", ...}]}``."""

from lora_ft.formats import DataFormat
from lora_ft.samples import RowFault, Sample, checked_conversation, conversation_turns


def detects(row: dict) -> bool:
    if not isinstance(row.get("conversations"), list):
        return False
    first = next((t for t in row["conversations"] if isinstance(t, dict)), {})
    return "role" not in first


def to_sample(row: dict) -> Sample:
    if "conversations" not in row:
        raise RowFault("missing field 'conversations'")
    turns = conversation_turns(row["conversations"], "from", "value", "conversations")
    return Sample("", messages=checked_conversation(turns))


FORMAT = DataFormat("sharegpt", ("conversations",), detects, to_sample, order=20)
