"""The legal_mc task's data: legal_mc.jsonl beside this file (id, question, four choices, index of the answer)."""

from pathlib import Path


def load(**_kwargs):
    import datasets

    return datasets.load_dataset("json", data_files={"test": str(Path(__file__).with_name("legal_mc.jsonl"))})
