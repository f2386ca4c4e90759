"""How close generated answers are to the reference answers, whether they stop, and how much they repeat.

Reference similarity comes from maintained implementations:

- ROUGE-L F1 from Google's ``rouge-score`` (the package the ROUGE numbers in papers come from), with its stemmer: the
  longest common subsequence of words, balanced between precision and recall;
- chrF from ``sacrebleu``: character n-gram F-score (beta 2), robust to inflection and word order; per answer the
  sentence score, for a set the corpus score, as sacrebleu defines it;
- token F1 as SQuAD defines it (lower-cased, punctuation and articles removed, bag-of-words overlap): the few lines
  of its reference script, written here to avoid a dependency for them.

And three properties of the answer itself: whether generation stopped at the end-of-turn token (not at the length
limit), its length in words against the reference's, and repetition: the share of its word 4-grams that repeat an
earlier 4-gram of the same answer (``rep-4``; 0 for an answer that never repeats itself, near 1 for a loop).
All scores are reported on a 0-100 scale.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from dataclasses import asdict, dataclass

REPETITION_N = 4
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_WORD = re.compile(r"\w+")


def squad_tokens(text: str) -> list[str]:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces; then words."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return _ARTICLES.sub(" ", text).split()


def token_f1(answer: str, reference: str) -> float:
    """SQuAD token F1 (0-1): the harmonic mean of the shared words' precision and recall."""
    answer_tokens, reference_tokens = squad_tokens(answer), squad_tokens(reference)
    if not answer_tokens or not reference_tokens:
        return float(answer_tokens == reference_tokens)
    shared = sum((Counter(answer_tokens) & Counter(reference_tokens)).values())
    if shared == 0:
        return 0.0
    precision, recall = shared / len(answer_tokens), shared / len(reference_tokens)
    return 2 * precision * recall / (precision + recall)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def repetition(text: str, n: int = REPETITION_N) -> float:
    """Share (0-1) of the answer's word n-grams that repeat an n-gram seen earlier in it."""
    tokens = words(text)
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


_rouge = None


def rouge_l(answer: str, reference: str) -> float:
    """ROUGE-L F1 (0-1) with the Porter stemmer, from ``rouge-score``."""
    global _rouge
    if _rouge is None:
        from rouge_score import rouge_scorer

        _rouge = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return _rouge.score(reference, answer)["rougeL"].fmeasure


def chrf_sentence(answer: str, reference: str) -> float:
    """chrF (0-100) of one answer, from ``sacrebleu``."""
    from sacrebleu.metrics import CHRF

    return CHRF().sentence_score(answer, [reference]).score


def chrf_corpus(answers: list[str], references: list[str]) -> float:
    """chrF (0-100) of a set of answers: n-gram statistics summed over the set, then one F-score."""
    from sacrebleu.metrics import CHRF

    return CHRF().corpus_score(answers, [references]).score if answers else 0.0


def answer_scores(answer: str, reference: str, stopped: bool, tokens: int) -> dict:
    """The per-answer record saved with the report."""
    return {"rouge_l": 100 * rouge_l(answer, reference), "chrf": chrf_sentence(answer, reference),
            "token_f1": 100 * token_f1(answer, reference), "repetition": 100 * repetition(answer),
            "words": len(words(answer)), "reference_words": len(words(reference)), "stopped": stopped,
            "tokens": tokens}


@dataclass
class AnswerSummary:
    """One model's answers to one set of prompts, summed up."""
    answers: int
    rouge_l: float  # mean ROUGE-L F1, 0-100
    chrf: float  # corpus chrF, 0-100
    token_f1: float  # mean token F1, 0-100
    stop_rate: float  # share of answers that ended at the end-of-turn token, 0-1
    stopped: int
    mean_words: float
    length_ratio: float  # all answers' words / all references' words
    repetition: float  # mean rep-4, 0-100
    tokens: int  # generated tokens
    seconds: float  # generation time
    tokens_per_second: float

    def as_dict(self) -> dict:
        return asdict(self)


def summarize(texts: list[str], references: list[str], records: list[dict], seconds: float) -> AnswerSummary:
    """Sum up per-answer records (from :func:`answer_scores`) and the texts they score."""
    count = max(len(records), 1)
    mean = lambda key: sum(r[key] for r in records) / count  # noqa: E731
    reference_words = sum(r["reference_words"] for r in records)
    tokens = sum(r["tokens"] for r in records)
    stopped = sum(1 for r in records if r["stopped"])
    return AnswerSummary(
        answers=len(records), rouge_l=mean("rouge_l"), chrf=chrf_corpus(texts, references),
        token_f1=mean("token_f1"), stop_rate=stopped / count, stopped=stopped, mean_words=mean("words"),
        length_ratio=sum(r["words"] for r in records) / max(reference_words, 1), repetition=mean("repetition"),
        tokens=tokens, seconds=seconds, tokens_per_second=tokens / seconds if seconds > 0 else 0.0)
