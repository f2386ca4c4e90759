"""Instruction data: files and formats in, :class:`Sample` rows out, every dropped row counted with its reason; then
samples to tokens and labels with the chat template (:mod:`.tokenization`, :mod:`.preference_tokens`), and the
checks that keep the template able to stop (:mod:`.template_checks`)."""

from lora_ft.data.loading import (DatasetReport, LoadedData, RowFault, Sample, check_drops, data_files, detect_format,
                                  load_data, normalize_row, read_dataset)

__all__ = ["DatasetReport", "LoadedData", "RowFault", "Sample", "check_drops", "data_files", "detect_format",
           "load_data", "normalize_row", "read_dataset"]
