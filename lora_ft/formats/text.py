"""Raw text for continued pre-training: ``{"text": "..."}``; every token is trained."""

from lora_ft.formats import DataFormat
from lora_ft.samples import Sample, required_text


def detects(row: dict) -> bool:
    return "text" in row


def to_sample(row: dict) -> Sample:
    return Sample("", text=required_text(row, "text", "text"))


FORMAT = DataFormat("text", ("text",), detects, to_sample, order=90)
