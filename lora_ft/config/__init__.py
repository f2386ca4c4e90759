"""The run configuration, as a small package: each file one job, each rule written once.

- :mod:`.schema`: the typed, strict sections and their documented defaults;
- :mod:`.loading`: YAML with every key's line, validation, faults named by file and line;
- :mod:`.loaded`: the validated config with where it came from, as every later step is handed it;
- :mod:`.overrides`: ``--set KEY=VALUE``;
- :mod:`.checks`: rules across keys, files and this machine;
- :mod:`.resolution`: every ``auto`` decided for the hardware present;
- :mod:`.attention`: the attention kernels the model's transformers class supports, and ``auto``'s choice;
- :mod:`.reference`: the schema as the generated reference (docs/config.md).

The config names data formats, chat templates, model families and training methods: those live below it
(:mod:`lora_ft.formats`, :mod:`lora_ft.templates`, :mod:`lora_ft.families`, :mod:`lora_ft.methods`), so the
config checks names against them and every later step imports the config, never the other way round.

Importing it never imports torch, so ``lora-ft validate`` and ``--help`` stay instant.
"""

from lora_ft.config.checks import bitsandbytes_problem, check_consistency, looks_like_hub_id
from lora_ft.config.loaded import LoadedConfig
from lora_ft.config.loading import dump_config, load_config
from lora_ft.config.reference import schema_sections, type_name
from lora_ft.config.resolution import Resolved, resolve
from lora_ft.config.schema import (EMBEDDED_MODEL, DataSection, DatasetSource, DistributedSection, LoraSection,
                                   ModelSection, RunConfig, TrackingSection, TrainSection)

__all__ = ["EMBEDDED_MODEL", "DataSection", "DatasetSource", "DistributedSection", "LoadedConfig", "LoraSection",
           "ModelSection", "Resolved", "RunConfig", "TrackingSection", "TrainSection", "bitsandbytes_problem",
           "check_consistency", "dump_config", "load_config", "looks_like_hub_id", "resolve", "schema_sections",
           "type_name"]
