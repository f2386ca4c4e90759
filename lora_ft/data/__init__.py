"""Instruction data: files and formats in, :class:`Sample` rows out, every dropped row counted with its reason."""

from lora_ft.data.loading import (DatasetReport, LoadedData, RowFault, Sample, check_drops, data_files, detect_format,
                                  load_data, normalize_row, read_dataset)

__all__ = ["DatasetReport", "LoadedData", "RowFault", "Sample", "check_drops", "data_files", "detect_format",
           "load_data", "normalize_row", "read_dataset"]
