"""What an agents' data set holds: conversations with tools, the functions they list, the assistant's calls and the
tools' results, and the reasoning trained on (in tokens)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from lora_ft.samples import Sample


@dataclass
class AgentCounts:
    conversations: int = 0  # samples in the split
    with_tools: int = 0  # samples whose row lists tools
    calling: int = 0  # samples with at least one call
    calls: int = 0  # calls made by the assistant
    parallel_turns: int = 0  # assistant turns with more than one call
    results: int = 0  # tool results
    functions: dict[str, int] = field(default_factory=dict)  # calls per function, most called first
    reasoning_turns: int = 0  # assistant turns with reasoning
    reasoning_tokens: int = 0  # tokens of that reasoning
    reasoning: str = "train"  # data.reasoning

    @property
    def any(self) -> bool:
        return bool(self.with_tools or self.calls or self.reasoning_turns)


def _turns(sample: Sample) -> list[dict]:
    return [*(sample.messages or []), *(sample.chosen or []), *(sample.rejected or [])]


def count_agent_turns(samples: Iterable[Sample], tokenizer, reasoning: str) -> AgentCounts:
    counts, functions, thoughts = AgentCounts(reasoning=reasoning), Counter(), []
    for sample in samples:
        counts.conversations += 1
        counts.with_tools += bool(sample.tools)
        calls_here = 0
        for turn in _turns(sample):
            calls = turn.get("tool_calls") or []
            calls_here += len(calls)
            counts.parallel_turns += len(calls) > 1
            functions.update(call["function"]["name"] for call in calls)
            counts.results += turn["role"] == "tool"
            if turn.get("reasoning_content"):
                counts.reasoning_turns += 1
                thoughts.append(turn["reasoning_content"])
        counts.calls += calls_here
        counts.calling += calls_here > 0
    counts.functions = dict(functions.most_common())
    if thoughts:
        counts.reasoning_tokens = sum(len(ids) for ids in tokenizer(thoughts, add_special_tokens=False)["input_ids"])
    return counts


def agent_lines(counts: AgentCounts) -> list[str]:
    """The counts for the terminal report."""
    if not counts.any:
        return []
    called = ", ".join(f"{name} {n:,}" for name, n in list(counts.functions.items())[:8])
    more = len(counts.functions) - 8
    lines = [f"tools listed in {counts.with_tools:,} of {counts.conversations:,} conversations; "
             f"{counts.calling:,} call a tool"]
    if counts.calls:
        lines.append(f"calls: {counts.calls:,} ({counts.parallel_turns:,} turns call several at once), "
                     f"results: {counts.results:,}")
        lines.append(f"functions called: {called}" + (f" and {more} more" if more > 0 else ""))
    if counts.reasoning_turns:
        fate = "trained" if counts.reasoning == "train" else "left out (data.reasoning: drop)"
        lines.append(f"reasoning: {counts.reasoning_turns:,} assistant turns, {counts.reasoning_tokens:,} tokens, "
                     f"{fate}")
    lines.append("trained: the assistant's text and calls" + (" and reasoning" if counts.reasoning == "train" else "")
                 + "; never the tool list, the system turn or the tools' results")
    return lines


def first_agent_sample(samples: Iterable[Sample], shown: list[Sample], limit: int = 2000) -> Sample | None:
    """The first conversation with a call among the first ``limit`` samples, unless one is already shown."""
    if any(any(t.get("tool_calls") for t in _turns(s)) for s in shown):
        return None
    for index, sample in enumerate(samples):
        if index >= limit:
            return None
        if any(t.get("tool_calls") for t in _turns(sample)):
            return sample
    return None
