"""The base model and its adapter: where the model comes from, its tokenizer, loading (4-bit or not), LoRA.

Per-architecture facts (shapes, layer names, GGUF conversion) are model families, one module each in
:mod:`lora_ft.families`.
"""

from lora_ft.model.attention import per_sample_sdpa, use_per_sample_attention
from lora_ft.model.loading import (BaseModelSource, ChatTokenizer, TrainableModel, attach_lora, choose_pad_token,
                                   count_parameters, cpu_nf4_unfit_layers, linear_module_names, load_base_model,
                                   load_chat_tokenizer, load_for_training, load_tokenizer, locate_base_model,
                                   lora_config, model_files_digest, nf4_config_for, quantization_config, torch_dtype)

__all__ = ["BaseModelSource", "ChatTokenizer", "TrainableModel", "attach_lora", "choose_pad_token",
           "count_parameters", "cpu_nf4_unfit_layers", "linear_module_names", "load_base_model",
           "load_chat_tokenizer", "load_for_training", "load_tokenizer", "locate_base_model", "lora_config",
           "model_files_digest", "nf4_config_for", "per_sample_sdpa", "quantization_config", "torch_dtype",
           "use_per_sample_attention"]
