"""`lora-ft eval` of an RL run (``method: grpo``): its held-out prompts answered greedily by the starting model and
by the tuned one, every answer scored by the run's own rewards, and the totals compared with a paired-bootstrap
interval (what the training run reports as "held-out reward", here with the answers side by side)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lora_ft.evaluation.stats import Difference, paired_mean


@dataclass
class RewardResult:
    source: str
    prompts: int
    labels: list[str]
    weights: list[float]
    base: dict = field(default_factory=dict)  # "total", each label, "stopped", "tokens": means over the prompts
    tuned: dict = field(default_factory=dict)
    difference: Difference | None = None  # tuned minus before, the weighted total

    def heading(self) -> str:
        return f"rewards: {self.source} ({self.prompts} prompts, greedy answers)"

    def rows(self, before: str) -> list[tuple[str, ...]]:
        rows = [("reward", before, "tuned", "change", "interval, n: verdict")]
        cell = ""
        if self.difference is not None:
            d = self.difference
            cell = f"{d.low:+.3f} to {d.high:+.3f}, n={d.n}: {d.judgement(True)}"
        rows.append(("total (weighted)", f"{self.base['total']:.3f}", f"{self.tuned['total']:.3f}",
                     f"{self.tuned['total'] - self.base['total']:+.3f}", cell))
        for label, weight in zip(self.labels, self.weights):
            rows.append((f"{label} (x{weight:g})", f"{self.base[label]:.3f}", f"{self.tuned[label]:.3f}",
                         f"{self.tuned[label] - self.base[label]:+.3f}", ""))
        rows.append(("stop rate", f"{self.base['stopped']:.0%}", f"{self.tuned['stopped']:.0%}",
                     f"{100 * (self.tuned['stopped'] - self.base['stopped']):+.0f} pt", ""))
        rows.append(("answer tokens", f"{self.base['tokens']:.1f}", f"{self.tuned['tokens']:.1f}", "", ""))
        return rows

    def verdict(self, before: str) -> str:
        if self.difference is None:
            return "no held-out prompt was scored"
        reading = self.difference.judgement(True)
        figures = f"mean reward {self.base['total']:.3f} -> {self.tuned['total']:.3f} " \
                  f"({self.difference.describe(True, '{:+.3f}')})"
        head = {"better": f"tuned earns more reward than the {before} model on held-out prompts",
                "worse": f"tuned earns less reward than the {before} model on held-out prompts",
                "no difference": f"tuned and {before} earn the same reward on every held-out prompt",
                "too few to tell": f"too few held-out prompts to tell the tuned from the {before} model"}.get(
            reading, f"no clear difference in reward between the tuned and the {before} model (within noise)")
        return f"{head}: {figures}"

    def stop_verdict(self) -> str:
        share = self.tuned["stopped"]
        return "all tuned answers stop" if share == 1 else \
            f"{1 - share:.0%} of the tuned answers ran to the answer limit (grpo.max_completion_length)"

    def as_dict(self) -> dict:
        return {"source": self.source, "prompts": self.prompts, "rewards": dict(zip(self.labels, self.weights)),
                "base": self.base, "tuned": self.tuned,
                "difference": self.difference.as_dict(True) if self.difference is not None else None}

    def tracker_metrics(self) -> dict[str, float]:
        return {f"eval/rewards/{model}_{key}": float(value) for model, figures in (("base", self.base),
                                                                                  ("tuned", self.tuned))
                for key, value in figures.items()}


def score_rewards(model, run, prepared, source: str, before: str) -> tuple[RewardResult, list[dict]]:
    """Both models answer the held-out prompts greedily; each answer scored by the run's rewards."""
    from lora_ft import console
    from lora_ft.evaluation import preferences
    from lora_ft.inference import stop_token_ids
    from lora_ft.rewards.functions import reward_functions
    from lora_ft.rewards.held_out import held_out_scores

    settings = run.config.method_settings
    tokenizer = prepared.chat.tokenizer
    functions, weights = reward_functions(settings.rewards, str)
    dataset = prepared.eval_tokens.rows
    stops = stop_token_ids(tokenizer, run)
    batch = max(1, run.config.train.batch_size)
    console.status(f"answering {len(dataset)} held-out prompts with the {before} model ...")
    with preferences.starting_model(model, run):
        base = held_out_scores(model, tokenizer, dataset, settings.rewards, functions,
                               settings.max_completion_length, stops, batch)
    console.status(f"answering {len(dataset)} held-out prompts with the tuned model ...")
    tuned = held_out_scores(model, tokenizer, dataset, settings.rewards, functions, settings.max_completion_length,
                            stops, batch)
    result = RewardResult(source=source, prompts=len(dataset), labels=[s.label for s in settings.rewards],
                          weights=weights, base=base.means(), tuned=tuned.means())
    pairs = [(b["total"], t["total"]) for b, t in zip(base.rows, tuned.rows)
             if b["total"] is not None and t["total"] is not None]
    if pairs:
        result.difference = paired_mean([b for b, _ in pairs], [t for _, t in pairs])
    asked = {sample.location: sample.messages[-1]["content"] for sample in prepared.data.eval}
    records = [{"set": "domain", "location": location, "prompt": asked.get(location, b["prompt"]), "reference": None,
                "base": b["completion"], "tuned": t["completion"], "base_rewards": b["rewards"],
                "tuned_rewards": t["rewards"], "base_total": b["total"], "tuned_total": t["total"]}
               for location, b, t in zip(prepared.eval_tokens.locations, base.rows, tuned.rows)]
    console.say(result.verdict(before))
    return result, records
