"""Held-out prompts answered greedily and scored by the run's rewards: the figure a GRPO run reports before and
after training (greedy, so that the two are the model's own best answers, not a draw), and the answers kept."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class HeldOutScores:
    rows: list[dict] = field(default_factory=list)  # per prompt: prompt, completion, stopped, rewards, total
    labels: list[str] = field(default_factory=list)

    def means(self) -> dict[str, float]:
        """Means over the prompts: the weighted ``total``, each reward by its label, the share of answers that
        ended at the end-of-turn token (``stopped``) and their length (``tokens``)."""
        def mean(values):
            values = [v for v in values if v is not None]
            return sum(values) / len(values) if values else float("nan")

        out = {"total": mean(r["total"] for r in self.rows)}
        out.update({label: mean(r["rewards"][label] for r in self.rows) for label in self.labels})
        out["stopped"] = mean(float(r["stopped"]) for r in self.rows)
        out["tokens"] = mean(r["tokens"] for r in self.rows)
        return out

    def metrics(self, prefix: str = "eval") -> dict[str, float]:
        """:meth:`means` under the names GRPO's training figures have, with ``prefix``."""
        means = self.means()
        return {f"{prefix}_reward": means["total"],
                **{f"{prefix}_rewards/{label}/mean": means[label] for label in self.labels},
                f"{prefix}_completions/stopped_ratio": means["stopped"],
                f"{prefix}_completions/mean_length": means["tokens"]}


def greedy_completions(model, tokenizer, prompts: list[str], max_new_tokens: int, stop_ids: list[int],
                       batch_size: int) -> list[tuple[list[int], bool]]:
    """Each prompt's greedy completion (token ids, up to and without the stop token) and whether it stopped
    there: a batch kept full, shortest prompts first, with a KV cache (:mod:`lora_ft.batched_decoding`)."""
    from lora_ft.batched_decoding import decode

    encoded = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in prompts]
    stops, pad = set(stop_ids), tokenizer.pad_token_id
    kwargs = {"do_sample": False, "eos_token_id": stop_ids, "pad_token_id": pad, "use_cache": True}
    was_training = model.training
    model.eval()
    try:
        answers = decode(model, encoded, [max_new_tokens] * len(encoded), stops, pad, batch_size, kwargs)
    finally:
        model.train(was_training)
    return [(tokens[:-1], True) if tokens and tokens[-1] in stops else (tokens, False) for tokens in answers]


def held_out_scores(model, tokenizer, dataset, specs, functions, max_new_tokens: int, stop_ids: list[int],
                    batch_size: int) -> HeldOutScores:
    """Every held-out prompt answered greedily and scored by each reward (:func:`greedy_completions`)."""
    from lora_ft.rewards.functions import score

    rows = list(dataset)
    prompts = [row["prompt"] for row in rows]
    answers = greedy_completions(model, tokenizer, prompts, max_new_tokens, stop_ids, batch_size)
    completions = [tokenizer.decode(ids, skip_special_tokens=True) for ids, _ in answers]
    columns = {key: [row[key] for row in rows] for key in (rows[0] if rows else {}) if key != "prompt"}
    scored = score(specs, functions, prompts, completions, [ids for ids, _ in answers], columns)
    result = HeldOutScores(labels=[spec.label for spec in specs])
    for prompt, completion, (ids, stopped), rewards in zip(prompts, completions, answers, scored):
        total = rewards.pop("total")
        result.rows.append({"prompt": prompt, "completion": completion, "tokens": len(ids), "stopped": stopped,
                            "rewards": rewards, "total": total})
    return result
