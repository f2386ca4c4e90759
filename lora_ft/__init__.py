"""lora-ft: fine-tune large language models with LoRA and QLoRA from one YAML file."""

__version__ = "0.1.0"
