"""OpenAI-style conversations: ``{"messages": [{"role": "user", "content": "..."}, ...]}`` (``conversations``
with role/content keys is read the same way).

An agent's conversation adds a ``tools`` column (the functions' JSON schemas, or a JSON string of them), assistant
turns with ``tool_calls`` (arguments as an object or a JSON string) and ``reasoning_content`` (or ``reasoning``, or
``<think>...</think>`` before the answer), and ``tool`` turns with the result and its ``tool_call_id`` or ``name``.
"""

from lora_ft.formats import DataFormat
from lora_ft.conversations import checked_conversation, conversation_turns
from lora_ft.samples import RowFault, Sample
from lora_ft.tool_turns import read_tools


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
    tools = read_tools(row.get("tools"))
    messages = checked_conversation(conversation_turns(row[column], "role", "content", column), tools)
    return Sample("", messages=messages, tools=tools)


FORMAT = DataFormat("messages", ("messages", "tools"), detects, to_sample, order=10)
