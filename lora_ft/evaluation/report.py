"""What `lora-ft eval` found, for a person: tables on screen, ``report.md``, ``report.json`` and a verdict line."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from lora_ft.answer_metrics import AnswerSummary
from lora_ft.evaluation.stats import LEVEL, MIN_PAIRS, RESAMPLES, SEED, Difference
from lora_ft.evaluation.tool_calls import ToolCallResult

# When the verdict calls general ability "held": general loss up by at most this fraction, ROUGE-L down by at
# most this many points (a rise or a fall counts only when its interval says it is beyond noise). Beyond the
# second limits it says general ability dropped.
GENERAL_HELD = (0.05, 2.0)
GENERAL_DROPPED = (0.15, 5.0)

# The figures given with a paired-bootstrap interval: key -> (label, format, higher is better)
INTERVAL_FIGURES = {"loss": ("loss", "{:+.4f}", False), "rouge_l": ("ROUGE-L", "{:+.1f}", True),
                    "token_f1": ("token F1", "{:+.1f}", True)}
VERDICT_FIGURES = ("loss", "rouge_l")  # what the domain verdict weighs
INTERVAL_HEADER = f"{LEVEL:.0%} interval, n: verdict"

ANSWER_ROWS = (  # (label, AnswerSummary field, format, higher is better)
    ("ROUGE-L", "rouge_l", "{:.1f}", True),
    ("chrF", "chrf", "{:.1f}", True),
    ("token F1", "token_f1", "{:.1f}", True),
    ("stop rate", "stop_rate", "{:.0%}", True),
    ("words / reference", "length_ratio", "{:.2f}", None),
    ("repeated 4-grams %", "repetition", "{:.1f}", False),
)


@dataclass
class SetResult:
    """Base (or starting model) and tuned model on one set of held-out samples."""
    name: str  # "domain" or "general"
    source: str  # the file or split, in words
    samples: int  # samples scored for the loss
    scored_tokens: int
    base_loss: float
    tuned_loss: float
    prompts: int = 0  # prompts with a reference answer
    base: AnswerSummary | None = None
    tuned: AnswerSummary | None = None
    # tuned minus before, with their intervals over the samples: "loss" (all samples), "rouge_l" and "token_f1"
    # (the answered prompts); see INTERVAL_FIGURES
    differences: dict[str, Difference] = field(default_factory=dict)

    @property
    def loss_change(self) -> float:
        return self.tuned_loss - self.base_loss

    @property
    def relative_loss_change(self) -> float:
        return self.loss_change / self.base_loss if self.base_loss else 0.0

    def rouge_change(self) -> float | None:
        return None if self.base is None or self.tuned is None else self.tuned.rouge_l - self.base.rouge_l

    def judgement(self, key: str) -> str | None:
        """The interval's reading of one figure ("better", "within noise", ...), None when it has no interval."""
        difference = self.differences.get(key)
        return None if difference is None else difference.judgement(INTERVAL_FIGURES[key][2])

    def interval_cell(self, key: str) -> str:
        difference = self.differences.get(key)
        if difference is None:
            return ""
        form = INTERVAL_FIGURES[key][1]
        return f"{form.format(difference.low)} to {form.format(difference.high)}, n={difference.n}: " \
            f"{self.judgement(key)}"

    def rows(self, before: str) -> list[tuple[str, ...]]:
        rows = [("metric", before, "tuned", "change", INTERVAL_HEADER),
                ("loss", f"{self.base_loss:.4f}", f"{self.tuned_loss:.4f}", f"{self.loss_change:+.4f}",
                 self.interval_cell("loss")),
                ("perplexity", f"{math.exp(self.base_loss):.2f}", f"{math.exp(self.tuned_loss):.2f}",
                 f"{100 * (math.exp(self.loss_change) - 1):+.1f}%", "")]
        if self.base is not None and self.tuned is not None:
            for label, key, form, _ in ANSWER_ROWS:
                old, new = getattr(self.base, key), getattr(self.tuned, key)
                change = f"{100 * (new - old):+.0f} pt" if key == "stop_rate" else f"{new - old:+.2f}" \
                    if key == "length_ratio" else f"{new - old:+.1f}"
                rows.append((label, form.format(old), form.format(new), change,
                             self.interval_cell(key) if key in INTERVAL_FIGURES else ""))
            rows.append(("answer tokens/s", f"{self.base.tokens_per_second:.0f}",
                         f"{self.tuned.tokens_per_second:.0f}", "", ""))
        return rows

    def figures(self, keys=VERDICT_FIGURES, prefix: str = "") -> str:
        """``loss -0.3850 (95% interval -0.41 to -0.36, n=70: better), ROUGE-L +4.3 (...)`` for the verdict."""
        out = []
        for key in keys:
            label, form, higher = INTERVAL_FIGURES[key]
            difference = self.differences.get(key)
            if difference is not None:
                out.append(f"{prefix}{label} {difference.describe(higher, form)}")
            elif key == "loss":
                out.append(f"{prefix}loss {self.loss_change:+.4f} (no interval)")
        return ", ".join(out)

    def as_dict(self) -> dict:
        return {"name": self.name, "source": self.source, "samples": self.samples,
                "scored_tokens": self.scored_tokens, "base_loss": self.base_loss, "tuned_loss": self.tuned_loss,
                "base_perplexity": math.exp(self.base_loss), "tuned_perplexity": math.exp(self.tuned_loss),
                "prompts": self.prompts, "base_answers": self.base.as_dict() if self.base else None,
                "tuned_answers": self.tuned.as_dict() if self.tuned else None,
                "differences": {key: difference.as_dict(INTERVAL_FIGURES[key][2])
                                for key, difference in self.differences.items()}}


@dataclass
class EvalReport:
    run_dir: str
    domain: SetResult | None  # None for an RL run: its held-out prompts are scored by its rewards instead
    general: SetResult | None = None
    before: str = "base"  # what the tuned model is compared with: "base", or "start" (the adapter it started from)
    max_new_tokens: int = 0
    preference: dict | None = None  # preference runs: how base and tuned rank the held-out pairs
    harness: dict | None = None  # lm-evaluation-harness: {task: {metric: {"base": x, "tuned": y}}}
    harness_seconds: float = 0.0
    examples: list[dict] = field(default_factory=list)  # a few samples with both answers, for the markdown
    tool_calls: ToolCallResult | None = None  # the calls made at the assistant turns of conversations with tools
    rewards: object = None  # an RL run's held-out rewards (lora_ft.evaluation.rewards.RewardResult)
    seconds: float = 0.0

    # --- the verdict -------------------------------------------------------------------------------------------

    def verdict(self) -> str:
        parts = [self._domain_verdict() if self.domain is not None else self.rewards.verdict(self.before)]
        if self.general is not None:
            parts.append(self._general_verdict())
        parts += self._harness_verdict()
        if self.tool_calls is not None:
            parts.append(self.tool_calls.verdict())
        parts.append(self._stop_verdict())
        return "; ".join(p for p in parts if p) + "."

    def _domain_verdict(self) -> str:
        """Better only where an interval lies beyond zero on the good side and none on the bad side (docs/
        evaluation.md, "The verdict")."""
        d, before = self.domain, self.before
        readings = [d.judgement(key) for key in VERDICT_FIGURES if key in d.differences]
        if not readings:
            head = "no verdict on the domain (no per-sample figures to tell noise from a difference)"
        elif all(r == "no difference" for r in readings):
            head = f"no difference between the tuned and the {before} model on the domain (every sample scored " \
                "the same)"
        elif "better" in readings and "worse" in readings:
            head = "mixed result on the domain: better on one figure, worse on the other"
        elif "better" in readings:
            head = f"tuned is better than the {before} model on the domain"
        elif "worse" in readings:
            head = f"tuned is worse than the {before} model on the domain"
        elif "too few to tell" in readings:
            head = f"too few samples to tell the tuned from the {before} model on the domain (a verdict needs " \
                f"{MIN_PAIRS})"
        else:
            head = f"no clear difference between the tuned and the {before} model on the domain (within noise)"
        return f"{head}: {d.figures()}"

    def _general_verdict(self) -> str:
        g = self.general
        rouge = g.differences.get("rouge_l")
        # a rise of the loss or a fall of ROUGE-L counts only when its interval puts it beyond noise
        rise = g.relative_loss_change if g.judgement("loss") in ("worse", None) else 0.0
        drop = -rouge.change if rouge is not None and g.judgement("rouge_l") == "worse" else 0.0
        figures = f"(loss {100 * g.relative_loss_change:+.1f}%): {g.figures(prefix='general ')}"
        readings = [g.judgement(key) for key in VERDICT_FIGURES if key in g.differences]
        if readings and all(r == "too few to tell" for r in readings):
            return f"too few general samples to tell whether general ability moved (a verdict needs {MIN_PAIRS}) " \
                f"{figures}"
        if rise <= GENERAL_HELD[0] and drop <= GENERAL_HELD[1]:
            return f"general ability held {figures}"
        if rise <= GENERAL_DROPPED[0] and drop <= GENERAL_DROPPED[1]:
            return f"general ability moved a little {figures}"
        return (f"general ability dropped {figures} (to forget less, lower the learning rate or the epochs, or "
                "mix general instructions into the training data)")

    def _harness_verdict(self) -> list[str]:
        out = []
        for task, metrics in (self.harness or {}).items():
            name, values = next(iter(metrics.items()))
            out.append(f"{task} {name} {values['base']:.3f} -> {values['tuned']:.3f}")
        return out

    def _stop_verdict(self) -> str:
        if self.domain is None:
            return self.rewards.stop_verdict()
        tuned = self.domain.tuned
        if tuned is None:
            return ""
        if tuned.stopped == tuned.answers:
            return f"all {tuned.answers} tuned answers stop"
        return (f"{tuned.answers - tuned.stopped} of {tuned.answers} tuned answers ran to the {self.max_new_tokens}-"
                "token limit (raise --max-new-tokens, or check that training taught the end-of-turn token)")

    # --- rendering ---------------------------------------------------------------------------------------------

    def _sets(self) -> list[SetResult]:
        return [s for s in (self.domain, self.general) if s is not None]

    def _pair_rows(self) -> list[tuple[str, ...]]:
        p = self.preference

        def cell(name: str, form: str) -> str:
            d = p.get(name)
            return "" if d is None else f"{form.format(d['low'])} to {form.format(d['high'])}, n={d['n']}: " \
                f"{d['judgement']}"

        change = p['prefers_chosen_tuned'] - p['prefers_chosen_start']
        return [("pairs", self.before, "tuned", "change", INTERVAL_HEADER),
                ("prefers chosen", f"{p['prefers_chosen_start']:.1%}", f"{p['prefers_chosen_tuned']:.1%}",
                 f"{100 * change:+.1f} pt", cell("prefers_chosen_interval", "{:+.1%}")),
                ("reward accuracy", "", f"{p['reward_accuracy']:.1%}", "", ""),
                ("reward margin", "", f"{p['reward_margin']:+.3f}", "", cell("reward_margin_interval", "{:+.3f}"))]

    def _harness_rows(self) -> list[tuple[str, str, str, str]]:
        rows = [("harness task", self.before, "tuned", "change")]
        for task, metrics in (self.harness or {}).items():
            for metric, values in metrics.items():
                rows.append((f"{task} {metric}", f"{values['base']:.4f}", f"{values['tuned']:.4f}",
                             f"{values['tuned'] - values['base']:+.4f}"))
        return rows

    def table(self) -> str:
        blocks = [f"{self.rewards.heading()}\n{_text_table(self.rewards.rows(self.before))}"] if self.rewards else []
        for result in self._sets():
            blocks.append(f"{result.name}: {result.source} ({result.samples} samples"
                          + (f", {result.tuned.answers} answered" if result.tuned else "") + ")")
            blocks.append(_text_table(result.rows(self.before)))
        if self.preference is not None:
            blocks.append(_text_table(self._pair_rows()))
        if self.tool_calls is not None:
            blocks.append(f"{self.tool_calls.heading()}\n{_text_table(self.tool_calls.rows(self.before))}")
        if self.harness:
            blocks.append(_text_table(self._harness_rows()))
        return "\n\n".join(blocks)

    def markdown(self) -> str:
        loss = "chosen-answer loss" if self.preference is not None else "loss"
        parts = [f"# Evaluation of {self.run_dir}", "", f"**Verdict:** {self.verdict()}", ""]
        if self.domain is None:  # an RL run: rewards, not a loss
            parts += [f"Tuned model against the {self.before} model on the run's held-out prompts, each answered "
                      "greedily and scored by the run's rewards. The interval is a "
                      f"{LEVEL:.0%} paired bootstrap over the prompts ({RESAMPLES} resamples, seed {SEED}): a change "
                      "is better or worse only when its interval lies on one side of zero.", ""]
        parts += [f"Tuned model against the {self.before} model. Answers are greedy, at most {self.max_new_tokens} "
                 f"new tokens; the {loss} is per answer token. ROUGE-L and token F1 are means over answers, chrF "
                 "is the corpus score (all 0-100); stop rate is the share of answers that ended at the end-of-turn "
                 "token; repeated 4-grams is the share of an answer's word 4-grams seen earlier in it. Each "
                 f"interval is a {LEVEL:.0%} paired bootstrap over the n samples both models scored ({RESAMPLES} "
                 f"resamples, seed {SEED}): a change is better or worse only when its interval lies on one side of "
                 "zero, within noise when it holds zero.", ""] if self._sets() else []
        if self.rewards is not None:
            parts += ["## Rewards on held-out prompts", "",
                      f"{self.rewards.heading()}: each answer scored by the run's rewards (their weighted sum is "
                      "the total), as training scored its sampled answers.", "",
                      _markdown_table(self.rewards.rows(self.before)), ""]
        for result in self._sets():
            title = "Domain" if result.name == "domain" else "General instructions (forgetting check)"
            parts += [f"## {title}", "", f"Data: {result.source}: {result.samples} samples, "
                      f"{result.scored_tokens:,} answer tokens scored"
                      + (f", {result.tuned.answers} prompts answered." if result.tuned else "."), "",
                      _markdown_table(result.rows(self.before)), ""]
        if self.preference is not None:
            p = self.preference
            parts += ["## Preference pairs", "",
                      f"Held-out pairs ({p['pairs']}): the share whose chosen answer the model finds more likely per "
                      "token, and DPO's implicit reward of the tuned model against the starting one "
                      f"(beta {p['beta']:g}).", "", _markdown_table(self._pair_rows()), ""]
        if self.tool_calls is not None:
            t = self.tool_calls
            parts += ["## Tool calls", "",
                      f"Each assistant turn of the held-out conversations with tools, answered from the conversation "
                      f"before it with the row's tools ({t.answered} of {t.turns} turns, {t.conversations} "
                      f"conversations; {t.source}). Turns whose reference calls: the share where the answer called, "
                      "every call was valid JSON, named a listed function, had arguments its schema accepts, and "
                      "made exactly the reference's calls (in any order); each row counts only turns that passed the "
                      "rows above it. Turns whose reference answers in text: the share where the answer called "
                      "anyway. n: the turns each rate is over; every call is in `samples.jsonl`.", "",
                      _markdown_table(t.rows(self.before)), ""]
        if self.harness:
            parts += ["## lm-evaluation-harness", "", f"Scored in {self.harness_seconds:.0f} s.", "",
                      _markdown_table(self._harness_rows()), ""]
        for index, item in enumerate(self.examples, start=1):
            parts += [f"## Sample {index} ({item['set']}, {item['location']})", "", f"**Prompt:** {item['prompt']}",
                      *(["", f"**Reference:** {item['reference']}"] if item["reference"] is not None else []),
                      "", f"**{self.before.capitalize()}:** "
                      f"{item['base']}", "", f"**Tuned:** {item['tuned']}", ""]
        parts.append("Every answer with its scores: `samples.jsonl` beside this file.")
        return "\n".join(parts) + "\n"

    def as_dict(self) -> dict:
        return {"run_dir": self.run_dir, "compared_with": self.before, "verdict": self.verdict(),
                "max_new_tokens": self.max_new_tokens, "seconds": self.seconds,
                # the domain's losses at the top, as earlier reports had them
                "base_loss": self.domain.base_loss if self.domain else None,
                "tuned_loss": self.domain.tuned_loss if self.domain else None,
                "domain": self.domain.as_dict() if self.domain else None,
                "general": self.general.as_dict() if self.general else None,
                "rewards": self.rewards.as_dict() if self.rewards is not None else None,
                "preference": self.preference, "harness": self.harness, "examples": self.examples,
                "tool_calls": self.tool_calls.as_dict() if self.tool_calls is not None else None}

    def tracker_metrics(self) -> dict[str, float]:
        """Flat numbers for an experiment tracker: ``eval/<set>/<model>_<metric>``."""
        out: dict[str, float] = self.rewards.tracker_metrics() if self.rewards is not None else {}
        for result in self._sets():
            prefix = f"eval/{result.name}"
            out[f"{prefix}/base_loss"], out[f"{prefix}/tuned_loss"] = result.base_loss, result.tuned_loss
            for model, summary in (("base", result.base), ("tuned", result.tuned)):
                if summary is not None:
                    for _, key, _, _ in ANSWER_ROWS:
                        out[f"{prefix}/{model}_{key}"] = float(getattr(summary, key))
        for task, metrics in (self.harness or {}).items():
            for metric, values in metrics.items():
                for model in ("base", "tuned"):
                    out[f"eval/harness/{task}/{model}_{metric}"] = float(values[model])
        if self.tool_calls is not None:
            for model, summary in (("base", self.tool_calls.base), ("tuned", self.tool_calls.tuned)):
                for metric, rate in summary.rates.items():
                    if rate is not None:
                        out[f"eval/tool_calls/{model}_{metric}"] = rate
        return out


def _text_table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def _markdown_table(rows: list[tuple[str, ...]]) -> str:
    head = rows[0]
    lines = ["| " + " | ".join(c or " " for c in head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)
