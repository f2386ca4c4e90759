"""Cross-key checks: what each key allows alone but not together, not with the files named, or not on this machine.

Cheap: no model is loaded (an explicit attention kernel imports the model's transformers class to ask it).
:func:`cpu_precision_problem` is the one statement of what a CPU cannot train in; the resolution of ``auto``
values applies the same rule to the device it picks.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
from pathlib import Path

from lora_ft.config.keys import KeyPath, where
from lora_ft.config.loaded import LoadedConfig
from lora_ft.config.schema import EMBEDDED_MODEL, TRACKER_PACKAGES, TRACKERS
from lora_ft.methods import method_of
from lora_ft.errors import Problem


# Cross-field checks: things each key allows alone but not together, or not on this machine.


# A name ending like a data file is a path, never a hub id: a mistyped local path must be reported as missing, not
# looked up on the hub (which, with a network, retries for half a minute before failing).
FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt", ".arrow", ".yaml", ".yml", ".gz", ".zst")


def cpu_precision_problems(model) -> list[tuple[str, str, str]]:
    """What a CPU cannot train in, as (model key, what is wrong, how to fix it); empty when all is well."""
    problems = []
    if model.quantization == "int8":
        problems.append(("quantization", "int8 quantization needs a CUDA GPU",
                         "use model.quantization: nf4 (which runs on a CPU) or none"))
    if model.dtype == "float16":
        problems.append(("dtype", "float16 training is not supported on a CPU", "use model.dtype: float32 or auto"))
    return problems


def looks_like_hub_id(value: str) -> bool:
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
    method = method_of(cfg.method)
    lines = lines or {}
    override_keys = override_keys or {}
    problems: list[Problem] = []

    def add(loc: KeyPath, what: str, fix: str) -> None:
        problems.append(Problem(what, where(loc, lines, source, override_keys), fix))

    # Model
    base = cfg.model.base
    if base != EMBEDDED_MODEL:
        candidate = loaded.resolve_path(base)
        if not candidate.exists() and not looks_like_hub_id(base):
            add(("model", "base"), f"model.base '{base}' is neither a local directory nor a hub id",
                f"give a directory with config.json (looked for {candidate}), a hub id like org/name, or "
                f"'{EMBEDDED_MODEL}'")
        elif candidate.exists() and not (candidate / "config.json").is_file():
            add(("model", "base"), f"model.base '{base}' has no config.json", "point it at a transformers model "
                "directory (one saved with save_pretrained)")
    # what needs bitsandbytes: 4- and 8-bit weights, 8-bit optimizers
    for key, setting, wanted, fix in (
            (("model", "quantization"), "quantization", cfg.model.quantization in ("nf4", "int8"),
             "pip install 'bitsandbytes>=0.45', or set model.quantization: none"),
            (("train", "optimizer"), "optimizer", cfg.train.optimizer in ("adamw_8bit", "paged_adamw_8bit"),
             "use adamw_torch")):
        why = bitsandbytes_problem() if wanted else None
        if why:
            add(key, f"{setting} '{getattr(getattr(cfg, key[0]), key[1])}' needs bitsandbytes: {why}", fix)
    if cfg.train.device == "cpu":
        for key, what, fix in cpu_precision_problems(cfg.model):
            add(("model", key), what, fix)
    if cfg.model.adapter is not None and not loaded.resolve_path(cfg.model.adapter).is_dir():
        add(("model", "adapter"), f"model.adapter '{cfg.model.adapter}' is not a folder",
            "give the run directory of a finished `lora-ft train` (" + _missing_path_fix(
                loaded.resolve_path(cfg.model.adapter), cfg.model.adapter) + ")")
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

    # Attention: a kernel set explicitly that the model's class does not support (asked of its transformers class,
    # imported, not instantiated: only for an explicit sdpa or flash_attention_2), or FlashAttention-2 without
    # flash-attn. Whether this device can run it is decided when the config is resolved.
    attention = cfg.model.attn_implementation
    if attention in ("sdpa", "flash_attention_2"):
        from lora_ft.config.attention import class_support, flash_problem, model_config, unsupported

        problem = flash_problem(None, None) if attention == "flash_attention_2" else None
        problem = problem or unsupported(class_support(model_config(loaded), cfg.model.trust_remote_code), attention)
        if problem:
            add(("model", "attn_implementation"), *problem)

    # Model shape limits, when the shape can be read without loading the model
    shape = _local_model_config(loaded)
    if shape:
        from lora_ft import families

        family = families.decoder_family(shape)
        layers = family.layers(shape)
        if cfg.lora.top_n_layers and layers and cfg.lora.top_n_layers > layers:
            add(("lora", "top_n_layers"), f"lora.top_n_layers = {cfg.lora.top_n_layers} but the model has "
                f"{layers} layers", f"use a value from 1 to {layers}")
        max_pos = family.context_length(shape)
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
            if not local.exists() and not looks_like_hub_id(ds.path):
                add(("data", section, index, "path"), f"data file not found: {ds.path}",
                    _missing_path_fix(local, ds.path))
    if cfg.data.streaming:
        if cfg.train.max_steps is None:
            add(("data", "streaming"), "a streamed run needs train.max_steps: the number of rows, and so of "
                "steps per epoch, is not known before they are read", "set train.max_steps")
        if not method.streaming:
            add(("data", "streaming"), f"data.streaming is for SFT; method {cfg.method} reads its data whole",
                "remove data.streaming")
        if "eval_fraction" in cfg.data.model_fields_set and cfg.data.eval_fraction > 0:
            add(("data", "eval_fraction"), "a streamed run cannot hold rows out of data it has not read",
                "give data.eval files instead, or remove data.eval_fraction")
    has_eval = bool(cfg.data.eval) or (cfg.data.eval_fraction > 0 and not cfg.data.streaming)
    if cfg.train.eval_steps is not None and not has_eval:
        add(("train", "eval_steps"), "train.eval_steps is set but there is no eval data to evaluate on",
            "add data.eval files or set data.eval_fraction above 0, or remove train.eval_steps")
    if cfg.data.eval and "eval_fraction" in cfg.data.model_fields_set and cfg.data.eval_fraction > 0:
        add(("data", "eval_fraction"), "both data.eval files and data.eval_fraction are set",
            "use one: remove eval_fraction to evaluate on the eval files")

    # Training: what follows the eval loss needs eval data, evaluated periodically
    for key, feature, wanted, without_eval, fix in (
            (("train", "early_stopping_patience"), "early stopping", cfg.train.early_stopping_patience is not None,
             "early stopping needs eval data", "add data.eval files or set data.eval_fraction above 0"),
            (("train", "lr_scheduler"), "reduce_on_plateau", cfg.train.lr_scheduler == "reduce_on_plateau",
             "reduce_on_plateau follows the eval loss and needs eval data", "add data.eval files, or use cosine")):
        if wanted and not has_eval:
            add(key, without_eval, fix)
        if wanted and cfg.train.eval_steps is None:
            add(key, f"{feature} needs periodic evaluation", "set train.eval_steps (for example 50)")
    if (cfg.train.early_stopping_patience is not None and cfg.train.eval_steps is not None
            and isinstance(cfg.train.save_steps, int) and cfg.train.save_steps % cfg.train.eval_steps):
        add(("train", "save_steps"), f"train.save_steps ({cfg.train.save_steps}) must be a multiple of "
            f"train.eval_steps ({cfg.train.eval_steps}) to keep the best adapter",
            f"set save_steps to {cfg.train.eval_steps} or remove it")

    # The method's own rules
    if not method.packing and cfg.train.packing:
        add(("train", "packing"), f"method {cfg.method} trains on whole prompt-answer sequences; packing is for "
            "SFT only", "remove train.packing")
    for key, what, fix in method.problems(cfg, loaded.resolve_path):
        add(key, what, fix)

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


