"""Chat templates and example data files shipped with lora-ft (installed as ``lora_ft.data_templates``)."""
