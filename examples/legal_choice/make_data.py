#!/usr/bin/env python3
"""Writes the multiple-choice example for GRPO: train.jsonl and eval.jsonl beside this file.

Run from the repository root:  python examples/legal_choice/make_data.py

Each row asks which of two questions a legal answer responds to: the answer is the first sentence of one
example of examples/legal/ (train.jsonl for train, eval.jsonl for eval, so no answer or question of eval is in
train), the two options are its own question and another of the same file; the right letter alternates, so
each is right equally often (a model that always gives one letter scores chance, 50%). The reward checks the
letter (and a format reward asks for the letter with its question on one line):
{"prompt": "...", "answer": "B"}. Deterministic (random.Random with fixed seeds, stdlib only).
"""

import json
import random
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
LEGAL = HERE.parent / "legal"
LETTERS = "AB"
SEEDS = {"train": 20251206, "eval": 60613}
MAX_ANSWER_WORDS = 45


def first_sentences(text: str) -> str:
    """The answer's first sentence, or its first two when the first is short; cut at MAX_ANSWER_WORDS words."""
    sentences = re.split(r"(?<=[.!?])\s+", text.strip())
    picked = sentences[0]
    if len(picked.split()) < 12 and len(sentences) > 1:
        picked += " " + sentences[1]
    words = picked.split()
    return " ".join(words[:MAX_ANSWER_WORDS]) + (" ..." if len(words) > MAX_ANSWER_WORDS else "")


def rows_of(source: Path, seed: int) -> list[dict]:
    examples = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    rng = random.Random(seed)
    rows = []
    for index, example in enumerate(examples):
        others = [e["instruction"] for i, e in enumerate(examples) if i != index
                  and e["instruction"] != example["instruction"]]
        options = rng.sample(others, len(LETTERS) - 1)
        letter = LETTERS[index % len(LETTERS)]  # each letter right equally often: a bias toward one earns chance
        options.insert(LETTERS.index(letter), example["instruction"])
        listed = "\n".join(f"{LETTERS[i]}. {option}" for i, option in enumerate(options))
        prompt = (f"Which question does this answer respond to?\n\nAnswer: {first_sentences(example['output'])}\n\n"
                  f"{listed}\n\nReply with the letter of the right question, then the question.")
        rows.append({"prompt": prompt, "answer": letter})
    return rows


def main() -> None:
    for split, source in (("train", LEGAL / "train.jsonl"), ("eval", LEGAL / "eval.jsonl")):
        rows = rows_of(source, SEEDS[split])
        (HERE / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                             encoding="utf-8")
        counts = {letter: sum(r["answer"] == letter for r in rows) for letter in LETTERS}
        print(f"{split}.jsonl: {len(rows)} rows, answers {counts}")


if __name__ == "__main__":
    main()
