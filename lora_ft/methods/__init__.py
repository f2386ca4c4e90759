"""The training methods (``method:`` in a config), each one module in this folder that defines ``METHOD`` (a
:class:`TrainingMethod`), or one a package installed beside lora-ft names under the ``lora_ft.methods`` entry point.

A method owns everything that differs between methods: its settings section (the config key named like the
method), the kinds of data rows it reads, how its examples are tokenized (SFT samples or whole preference pairs),
its default learning rate, its config checks and resolution notes, how its TRL trainer and arguments are built,
its cost in ``lora-ft plan``, what its evaluation reports and the line the model card says of it. The rest of
lora-ft asks the method and never branches on its name, so a new method is one new file.

Importing this module imports no heavy library: a method module imports torch, TRL or lora-ft's training code
only inside its functions, so ``lora-ft validate`` stays instant.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from lora_ft.plugins import discover

ENTRY_POINT_GROUP = "lora_ft.methods"


def _none(*_args, **_kwargs) -> None:
    return None


def _nothing(*_args, **_kwargs) -> list:
    return []


@dataclass(frozen=True)
class TrainingMethod:
    name: str
    description: str  # what it trains on, in words: the model card's and the docs' line
    reads: tuple[str, ...]  # the data kinds it reads: "sft" (examples), "pairs" (chosen, rejected), "unpaired"
    build_trainer: Callable[..., Any]  # (model, tokenizer, cfg, train, eval, common_arguments, callbacks) -> trainer
    section: Any = None  # its settings (a config Section class), under the key of its name; None: it has none
    pairs: bool = False  # tokenized as preference pairs (whole prompts and answers, length limits applied on read)
    sequences_per_sample: int = 1  # sequences one sample puts in a micro-batch (a pair's two sides: 2)
    splits_pairs: bool = False  # a pair becomes its chosen answer and its rejected one, each with the prompt (KTO)
    learning_rate: float | None = None  # its default when train.learning_rate is not set; None: the schema's
    padding_free: bool = True  # whether padding-free batches apply; False: its batches are padded
    streaming: bool = False  # whether data.streaming (reading rows as training takes them) applies
    packing: bool = False  # whether train.packing applies
    loss_name: str = "loss"  # what its training and eval loss is called in summaries and the model card
    columns: Callable[[Any], dict] | None = None  # pair tokens as its trainer reads them (pairs methods)
    problems: Callable[..., list] = field(default=_nothing)  # (cfg, resolve_path) -> [(key path, what, fix)]
    resolve_paths: Callable[..., None] = field(default=_none)  # (cfg, absolute) -> None: its paths made absolute
    prompts: bool = False  # reads prompts and samples its own answers (RL): no tokenized examples or pairs
    evaluates_rewards: bool = False  # its evaluation scores held-out answers by rewards instead of a loss
    notes: Callable[[Any, Any], list] = field(default=_nothing)  # (cfg, learning rate given) -> resolution notes
    reference_forwards: Callable[[Any], int] = field(default=lambda cfg: 0)  # no-grad forwards per sequence
    generation_forwards: Callable[[Any], int] = field(default=lambda cfg: 0)  # forwards per token to sample it
    has_reference: bool = False  # compares the policy with a reference model (its starting point)
    after_training: Callable[[Any], None] = field(default=_none)  # (model) -> None: tidy the model before saving
    order: int = 50  # where it is listed (docs, errors): lower first

    @property
    def is_preference(self) -> bool:
        return self.pairs


@cache
def registry() -> dict[str, TrainingMethod]:
    """Every method: this folder's, then the ``lora_ft.methods`` entry points of installed packages."""
    from importlib.metadata import entry_points

    found = {method.name: method for method in discover(__name__, __path__, "METHOD")}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        method = point.load()
        found.setdefault(method.name, method)
    return {method.name: method for method in sorted(found.values(), key=lambda m: (m.order, m.name))}


def method_names() -> list[str]:
    return list(registry())


def method_of(name: str) -> TrainingMethod:
    return registry()[name]


def sections() -> dict[str, Any]:
    """Each method's settings section by the method's name (the methods that have one)."""
    return {name: method.section for name, method in registry().items() if method.section is not None}
