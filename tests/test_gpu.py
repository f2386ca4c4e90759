"""The CUDA path: QLoRA defaults (NF4, bfloat16 compute, checkpointing, paged 8-bit AdamW) on a real GPU.

Skipped where no CUDA GPU is present; the CPU suite covers the same decisions with `resolve(has_cuda=True)`
(tests/test_config.py).
"""

from __future__ import annotations

import pytest

from lora_ft.config import load_config

from .conftest import write_config

pytestmark = pytest.mark.gpu


def test_qlora_defaults_on_cuda(tiny_llama, legal_data, tmp_path):
    import bitsandbytes as bnb

    from lora_ft import pipeline

    loaded = load_config(write_config(tmp_path / "run.yaml", tiny_llama, legal_data), ["train.max_steps=2"])
    lines: list[str] = []
    result = pipeline.train(loaded, say=lines.append)
    assert any("(nf4, bfloat16) on cuda" in line for line in lines)
    saved = load_config(result.run_dir / "config.yaml").config
    assert saved.model.quantization == "nf4" and saved.model.gradient_checkpointing is True
    assert saved.train.optimizer == "paged_adamw_8bit"
    assert "GiB allocated" in result.manifest["metrics"]["peak_memory"]
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in result.model.modules())
