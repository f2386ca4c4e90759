"""ShareGPT conversations: ``{"conversations": [{"from": "human", "value": "..."}, {"from": "gpt", ...}]}``.

Agents' conversations as LLaMA-Factory reads them: ``function_call`` turns (the value is the call's JSON,
``{"name": ..., "arguments": {...}}``), ``observation`` turns (the tool's result), a ``tools`` field (a JSON string
or a list of function schemas) and an optional ``system`` field.
"""

from lora_ft.formats import DataFormat
from lora_ft.conversations import checked_conversation, conversation_turns
from lora_ft.samples import RowFault, Sample
from lora_ft.tool_turns import read_tools


def detects(row: dict) -> bool:
    if not isinstance(row.get("conversations"), list):
        return False
    first = next((t for t in row["conversations"] if isinstance(t, dict)), {})
    return "role" not in first


def to_sample(row: dict) -> Sample:
    if "conversations" not in row:
        raise RowFault("missing field 'conversations'")
    turns = conversation_turns(row["conversations"], "from", "value", "conversations")
    system = row.get("system")
    if isinstance(system, str) and system.strip() and turns[0]["role"] != "system":
        turns.insert(0, {"role": "system", "content": system})
    tools = read_tools(row.get("tools"))
    return Sample("", messages=checked_conversation(turns, tools), tools=tools)


FORMAT = DataFormat("sharegpt", ("conversations", "tools", "system"), detects, to_sample, order=20)
