"""Single answers labelled desirable or not (KTO): ``{"prompt": "...", "completion": "...", "label": true}``;
prompt and completion text or chat messages, the label true/false (also 1/0 or "true"/"false" in CSV)."""

from lora_ft.formats import DataFormat
from lora_ft.formats._preference import answer_turns, checked_answers, label_value, prompt_turns
from lora_ft.samples import Sample
from lora_ft.tool_turns import read_tools

COLUMNS = ("prompt", "completion", "label")


def detects(row: dict) -> bool:
    return all(column in row for column in COLUMNS)


def to_sample(row: dict) -> Sample:
    prompt = prompt_turns(row.get("prompt"))
    completion = answer_turns(row.get("completion"), "completion")
    desirable = label_value(row.get("label"))
    side = {"chosen": completion} if desirable else {"rejected": completion}
    tools = read_tools(row.get("tools"))
    return Sample("", messages=checked_answers(prompt, tools, **side), tools=tools, **side)


FORMAT = DataFormat("unpaired_preference", (*COLUMNS, "tools"), detects, to_sample, order=35, kind="unpaired")
