"""Loading the base model and tokenizer, and attaching the LoRA adapter (PEFT)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lora_ft.config import EMBEDDED_MODEL, LoadedConfig, LoraSection, ModelSection
from lora_ft.distributed import current_world
from lora_ft.errors import UserError
from lora_ft import console

PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<|pad|>", "<pad>", "[PAD]", "<|endoftext|>", "<unk>")


@dataclass
class BaseModelSource:
    """Where the base model's files come from."""

    path: str  # a local directory or a hub id, as passed to from_pretrained
    display_name: str  # what the model card and summary call it
    is_embedded: bool = False


def locate_base_model(loaded: LoadedConfig) -> BaseModelSource:
    base = loaded.config.model.base
    if base == EMBEDDED_MODEL:
        from lora_ft import embedded

        directory = embedded.ensure_embedded_model()
        return BaseModelSource(str(directory), f"{embedded.MODEL_NAME} (embedded)", is_embedded=True)
    local = loaded.resolve_path(base)
    if local.exists():
        return BaseModelSource(str(local), base)
    return BaseModelSource(base, base)


@dataclass
class ChatTokenizer:
    """The base model's tokenizer, ready for training: pad token chosen and the run's chat template loaded."""

    source: BaseModelSource
    tokenizer: object
    pad_note: str  # what was done about the pad token, in words
    template_origin: str  # where the chat template came from, in words
    renderer: object  # tokenization.ChatRenderer


def load_chat_tokenizer(loaded: LoadedConfig, model_cfg: ModelSection) -> ChatTokenizer:
    """Locate the base model, load its tokenizer, choose the pad token and the chat template (no weights loaded)."""
    from lora_ft.templates import available_chat_templates, choose_chat_template
    from lora_ft.data.tokenization import ChatRenderer
    from lora_ft.tool_template import tool_ready

    source = locate_base_model(loaded)
    tokenizer = load_tokenizer(source, model_cfg)
    pad_note = choose_pad_token(tokenizer)
    template, origin = choose_chat_template(model_cfg.chat_template, tokenizer.chat_template, loaded.resolve_path)
    if model_cfg.chat_template == "auto" or model_cfg.chat_template in available_chat_templates():
        template, added = tool_ready(template, lambda text: ChatRenderer.rendering_with(tokenizer, text))
        origin += f", with {added}" if added else ""
    return ChatTokenizer(source, tokenizer, pad_note, origin,
                         ChatRenderer(tokenizer, template, loaded.config.data.reasoning))


def load_tokenizer(source: BaseModelSource, model_cfg: ModelSection):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source.path, revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load the tokenizer of {source.display_name}: {exc}",
                        fix="check model.base (a directory with tokenizer files, or a reachable hub id)") from exc
    return tokenizer


def choose_pad_token(tokenizer) -> str:
    """Give the tokenizer a pad token distinct from EOS when its vocabulary allows; say what was done.

    Labels are built before padding and padding is masked by position, never by token id, so an answer's EOS is
    trained even when no distinct pad token exists.
    """
    eos = tokenizer.eos_token
    if tokenizer.pad_token is not None and tokenizer.pad_token != eos:
        return f"pad token {tokenizer.pad_token!r} (distinct from EOS {eos!r})"
    before = "the EOS token" if tokenizer.pad_token is not None else "unset"
    vocab = tokenizer.get_vocab()
    for candidate in (tokenizer.unk_token, *PAD_CANDIDATES):
        if candidate and candidate != eos and candidate in vocab:
            tokenizer.pad_token = candidate
            return f"pad token set to {candidate!r} (was {before}); EOS {eos!r} stays a trained label"
    tokenizer.pad_token = eos
    return f"pad token = EOS {eos!r} (no spare token in the vocabulary); padding is masked by position, " \
           "so EOS is still trained"


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


# bitsandbytes' CPU 4-bit kernels (the packed layout it switches to on CPUs with AVX-512 bf16) need each 4-bit
# layer's input width to be a multiple of the quantization block and its output width a multiple of 32 rows.
CPU_NF4_BLOCK = 64
CPU_NF4_ROW_BLOCK = 32


def cpu_nf4_unfit_layers(model_path: str, model_cfg: ModelSection) -> tuple[list[str], list[str]]:
    """Layers bitsandbytes' CPU 4-bit kernels cannot hold, found on an empty (meta) copy of the model.

    Returns (the library's default unquantized modules, e.g. the LM head; the linear layers too narrow for the CPU
    kernels, as ``name (in x out)``). Real models (widths of hundreds or thousands) have none; tiny ones may.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D
    from transformers.quantizers.base import get_keys_to_not_convert

    config = AutoConfig.from_pretrained(model_path, revision=model_cfg.revision,
                                        trust_remote_code=model_cfg.trust_remote_code)
    with torch.device("meta"):
        empty = AutoModelForCausalLM.from_config(config, trust_remote_code=model_cfg.trust_remote_code)
    defaults = get_keys_to_not_convert(empty)
    unfit = []
    for name, module in empty.named_modules():
        if isinstance(module, torch.nn.Linear):
            width_in, width_out = module.in_features, module.out_features
        elif isinstance(module, Conv1D):
            width_in, width_out = module.weight.shape
        else:
            continue
        if any(name == d or name.startswith(f"{d}.") for d in defaults):
            continue
        if width_in % CPU_NF4_BLOCK or width_out % CPU_NF4_ROW_BLOCK:
            unfit.append(f"{name} ({width_in} x {width_out})")
    return defaults, unfit


def quantization_config(model_cfg: ModelSection, keep_unquantized: list[str] | None = None):
    """bitsandbytes settings for the model section; ``keep_unquantized``: module names left in full precision
    (replacing the library's default list, so it must include it)."""
    from transformers import BitsAndBytesConfig

    compute = torch_dtype(model_cfg.dtype)
    if model_cfg.quantization == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
            bnb_4bit_quant_storage=compute,
            llm_int8_skip_modules=keep_unquantized,
        )
    if model_cfg.quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def nf4_config_for(model_path: str, model_cfg: ModelSection, device: str):
    """The 4-bit settings for this model on this device. On a CPU, layers too narrow for bitsandbytes' CPU
    kernels stay in full precision (said in one line) instead of failing inside the library mid-run."""
    if model_cfg.quantization != "nf4" or device != "cpu":
        return quantization_config(model_cfg)
    defaults, unfit = cpu_nf4_unfit_layers(model_path, model_cfg)
    if not unfit:
        return quantization_config(model_cfg)
    shown = ", ".join(unfit[:4]) + (f" and {len(unfit) - 4} more" if len(unfit) > 4 else "")
    console.say(f"note: {len(unfit)} layer(s) stay in {model_cfg.dtype}, not 4-bit: bitsandbytes' CPU kernels need a "
        f"4-bit layer's input width to be a multiple of {CPU_NF4_BLOCK} and its output width a multiple of "
        f"{CPU_NF4_ROW_BLOCK} ({shown})")
    return quantization_config(model_cfg, keep_unquantized=[*defaults, *(u.split(" ")[0] for u in unfit)])


def load_base_model(source: BaseModelSource, model_cfg: ModelSection, device: str):
    """Load the causal LM at its configured precision and quantization, ready for k-bit training."""
    from transformers import AutoModelForCausalLM

    quant = nf4_config_for(source.path, model_cfg, device)
    kwargs = dict(
        dtype=torch_dtype(model_cfg.dtype),
        revision=model_cfg.revision,
        trust_remote_code=model_cfg.trust_remote_code,
        attn_implementation=model_cfg.attn_implementation,
        use_safetensors=None,
    )
    if quant is not None:
        kwargs["quantization_config"] = quant
        # each process of a multi-GPU run holds its own copy on its own GPU
        kwargs["device_map"] = {"": current_world().local_rank} if device == "cuda" else {"": "cpu"}
    try:
        model = AutoModelForCausalLM.from_pretrained(source.path, **kwargs)
    except (OSError, ValueError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "attention" in text.lower():  # a kernel the class refuses, where the class was not known beforehand
            raise UserError(f"cannot load the model {source.display_name} with model.attn_implementation: "
                            f"{model_cfg.attn_implementation}: {text.split('. ')[0]}",
                            fix="set model.attn_implementation: eager") from None
        raise UserError(f"cannot load the model {source.display_name}: {exc}",
                        fix="check model.base, model.trust_remote_code and model.attn_implementation") from exc
    if quant is None and device == "cuda":
        model.to(f"cuda:{current_world().local_rank}")
    model.config.use_cache = False
    if model_cfg.quantization == "int8":
        # LLM.int8 layers want float32 norms and embeddings. Not for nf4: upcasting every non-4-bit weight to
        # float32 would make hidden states, attention and the LM head run in float32 (no fused kernels, about
        # twice the time and far more activation memory); the trainer's autocast computes in the compute dtype,
        # and it enables gradient checkpointing (with input gradients) itself.
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=bool(model_cfg.gradient_checkpointing),
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    return model


def keep_cpu_4bit_trainable(model) -> None:
    """Keep bitsandbytes' 4-bit layers on the CPU in the layout that backpropagates.

    On CPUs with AVX-512 BF16, a 4-bit layer that runs without gradients in eval mode (the evaluation before
    training) repacks its weight for a CPU inference kernel (bitsandbytes/nn/modules.py, Linear4bit.forward) and
    keeps it so: only saving its state dict unpacks it. Every later training step then multiplies through
    ``gemv_4bit`` (bitsandbytes/autograd/_functions.py, matmul_4bit), which has no backward: the gradient through
    the frozen 4-bit weights to the LoRA weights below them is dropped (torch warns "an autograd kernel was not
    registered"). Switched off per layer, every pass takes the dequantizing path, which backpropagates."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def _uses_conv1d(model) -> bool:
    from transformers.pytorch_utils import Conv1D

    return any(isinstance(m, Conv1D) for m in model.modules())


def linear_module_names(model) -> list[str]:
    """Names of the linear layers LoRA can target (what ``all-linear`` means), without the output head."""
    import torch
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings()
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, (torch.nn.Linear, Conv1D)) and module is not head
    }
    return sorted(names)


def lora_config(lora: LoraSection, model):
    """The PEFT LoraConfig for the ``lora`` section and this model."""
    from peft import LoraConfig

    layers = None
    if lora.top_n_layers is not None:
        from lora_ft import families

        config = model.config.to_dict()
        total = families.decoder_family(config).layers(config)
        if total is None:
            raise UserError("lora.top_n_layers needs the model's layer count, which its config does not give",
                            fix="remove lora.top_n_layers")
        if lora.top_n_layers > total:
            raise UserError(f"lora.top_n_layers = {lora.top_n_layers} but the model has {total} layers",
                            fix=f"use a value from 1 to {total}")
        layers = list(range(total - lora.top_n_layers, total))
    targets = lora.target_modules
    if layers is not None and targets == "all-linear":  # PEFT needs module names to select layers
        targets = linear_module_names(model)
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        bias=lora.bias,
        modules_to_save=lora.modules_to_save or None,
        use_dora=lora.use_dora,
        use_rslora=lora.use_rslora,
        layers_to_transform=layers,
        fan_in_fan_out=_uses_conv1d(model),  # GPT-2 style Conv1D layers store weights transposed
        # a fully trained lm_head / embedding of a model with tied embeddings must stay tied to its twin
        ensure_weight_tying=bool(lora.modules_to_save) and bool(getattr(model.config, "tie_word_embeddings", False)),
    )


def attach_lora(model, lora: LoraSection):
    """The model with a new LoRA adapter; every module name the ``lora`` section lists must be one the model has
    (PEFT itself ignores a listed name that matches nothing as long as another one matches)."""
    from peft import get_peft_model

    from lora_ft.model.targets import check_listed_modules, check_targeted

    check_listed_modules(model, lora.target_modules, lora.modules_to_save, linear_module_names(model))
    config = lora_config(lora, model)
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as exc:
        raise UserError(f"cannot attach LoRA: {exc}", fix="check lora.target_modules; this model's linear "
                        f"layers are: {', '.join(linear_module_names(model))}") from exc
    check_targeted(peft_model, lora.target_modules, lora.top_n_layers, config.layers_to_transform)
    return peft_model


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameters; 4-bit weights are counted as the parameters they stand for."""
    trainable, total = model.get_nb_trainable_parameters()
    return int(trainable), int(total)


def model_files_digest(path: str) -> str | None:
    """A hash of a local model's tokenizer, to record in the manifest."""
    from lora_ft.files import file_sha256

    tok = Path(path) / "tokenizer.json"
    return file_sha256(tok) if tok.is_file() else None


@dataclass
class TrainableModel:
    model: object  # the PeftModel
    trainable: int  # parameters the adapter trains
    total: int
    per_sample_attention: bool  # padding-free rows attend within their own sample (switched off after training)


def load_for_training(source: BaseModelSource, cfg, device: str, stop_ids: list[int] | None = None) -> TrainableModel:
    """The base model loaded for this device (4-bit where asked), LoRA attached; say what was loaded.

    ``stop_ids``: the ids that end the run's answers (end-of-turn, then EOS), made the model's generation EOS, so
    that whatever samples from it in training stops where the saved generation_config.json will."""
    from lora_ft import distributed
    from lora_ft.model.attention import use_per_sample_attention

    console.say(f"loading {source.display_name} ({cfg.model.quantization}, {cfg.model.dtype}) on {device} ...")
    distributed.prepare_sharded_loading(cfg.distributed.strategy, current_world(), device)
    base = load_base_model(source, cfg.model, device)
    if stop_ids:
        base.generation_config.eos_token_id = list(stop_ids)
    if cfg.model.quantization == "nf4" and device == "cpu":
        keep_cpu_4bit_trainable(base)
    if cfg.model.adapter is not None:  # a finished run's adapter, trained further (checked when resolved)
        from peft import PeftModel

        model = PeftModel.from_pretrained(base, str(Path(cfg.model.adapter) / "adapter"), is_trainable=True)
    else:
        model = attach_lora(base, cfg.lora)
    # exact per-sample attention for padding-free rows through SDPA (FlashAttention-2 keeps the samples apart
    # itself; eager attention gets transformers' block-diagonal mask from the position ids: the same loss, tested)
    per_sample = cfg.model.attn_implementation == "sdpa" and (cfg.train.padding_free or cfg.train.packing)
    if per_sample:
        use_per_sample_attention(model, True)
    trainable, total = count_parameters(model)
    console.say(f"LoRA: {trainable:,} trainable parameters of {total:,} ({100 * trainable / total:.3f}%)")
    return TrainableModel(model, trainable, total, per_sample)
