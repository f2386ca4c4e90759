"""The run configuration, as a small package: each file one job, each rule written once.

- :mod:`.schema`: the typed, strict sections and their documented defaults;
- :mod:`.loading`: YAML with every key's line, validation, faults named by file and line;
- :mod:`.overrides`: ``--set KEY=VALUE``;
- :mod:`.checks`: rules across keys, files and this machine;
- :mod:`.resolution`: every ``auto`` decided for the hardware present;
- :mod:`.reference`: the schema as the generated reference (docs/config.md).

Importing it never imports torch, so ``lora-ft validate`` and ``--help`` stay instant.
"""

from lora_ft.config.checks import bitsandbytes_problem, check_consistency, looks_like_hub_id
from lora_ft.config.loading import LoadedConfig, dump_config, load_config
from lora_ft.config.reference import schema_sections, type_name
from lora_ft.config.resolution import Resolved, resolve
from lora_ft.config.schema import (EMBEDDED_MODEL, DataSection, DatasetSource, DistributedSection, LoraSection,
                                   ModelSection, RunConfig, TrackingSection, TrainSection)

__all__ = ["EMBEDDED_MODEL", "DataSection", "DatasetSource", "DistributedSection", "LoadedConfig", "LoraSection",
           "ModelSection", "Resolved", "RunConfig", "TrackingSection", "TrainSection", "bitsandbytes_problem",
           "check_consistency", "dump_config", "load_config", "looks_like_hub_id", "resolve", "schema_sections",
           "type_name"]
