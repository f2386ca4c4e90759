"""Tokenized data on disk: written in parallel once, memory-mapped and reused by every later command."""

from lora_ft.tokenized.cache import PreferenceData, TokenizedData, tokenized_data, tokenized_samples
from lora_ft.tokenized.split import TokenizedSplit

__all__ = ["PreferenceData", "TokenizedData", "TokenizedSplit", "tokenized_data", "tokenized_samples"]
