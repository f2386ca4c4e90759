"""scripts/bench.py's counting and report, on made-up runs (the benchmark itself is run by hand, not in tests)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "scripts" / "bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(seconds_per_step: float, tokens_per_step: int, rss: float) -> dict:
    steps = [{"step": i, "time": 100 + i * seconds_per_step, "tokens": i * tokens_per_step, "loss": 3 - i / 10}
             for i in range(1, 8)]
    return {"steps": steps, "rss_bytes": rss * 2**30, "checkpointing": False}


def test_summary_excludes_warm_up_and_counts_non_pad_tokens(bench):
    run = _run(2.0, 400, 4.0)
    run["steps"][1]["time"] += 50  # a slow warm-up step is not timed
    out = bench.summarize(run, warmup=2)
    assert out["tokens_per_s"] == pytest.approx(200.0) and out["step_s"] == pytest.approx(2.0)
    assert out["rss_gib"] == pytest.approx(4.0) and out["final_loss"] == pytest.approx(2.3)


def test_model_flops_count_frozen_lora_head_and_attention_as_the_docstring_says(bench, tmp_path):
    config = {"hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 14336, "vocab_size": 128256,
              "num_attention_heads": 32, "num_key_value_heads": 8}
    (tmp_path / "config.json").write_text(json.dumps(config))
    n = 32 * (4096 * 4096 * 2 + 4096 * 1024 * 2 + 3 * 4096 * 14336)  # frozen decoder matmuls, about 7.0e9
    lora = 32 * 16 * ((4096 + 4096) * 2 + (4096 + 1024) * 2 + (4096 + 14336) * 3)
    assert bench.lora_parameters(config, 16) == lora  # about 42M: r=16 on all linear layers
    # samples of 100 and 300 tokens: E[L] 200, E[L^2] 50,000; a token attends to 125 tokens on average, not 100
    model, hardware = bench.model_flops_per_token(tmp_path, 200, 50_000, trained_fraction=0.5, lora_r=16,
                                                  checkpointing=True)
    attention_forward = 32 * 4 * 4096 * 125
    assert model == 4 * n + 4 * 4096 * 128256 * 0.5 + 6 * lora + 3 * attention_forward
    assert hardware == model + 2 * n + 2 * lora + attention_forward  # checkpointing recomputes the forward
    untrained_head = bench.model_flops_per_token(tmp_path, 200, 50_000, 0.0, 16, False)[0]
    assert model - untrained_head == 4 * 4096 * 128256 * 0.5, "the head counts for trained positions only"


def test_report_table_and_ratios(bench):
    rows = {"baseline": {"tokens_per_s": 100.0, "trained_tokens_per_s": 60.0, "step_s": 10.0, "rss_gib": 5.0,
                         "final_loss": 3.0},
            "ours": {"tokens_per_s": 180.0, "trained_tokens_per_s": 108.0, "step_s": 6.0, "rss_gib": 3.5,
                     "final_loss": 2.9}}
    report = {"workload": "legal", "steps": 7, "warmup": 1, "rounds": 2, "max_seq_length": 512,
              "effective_batch": 8, "environment": {"cpu": "x86_64", "cpu_count": 2, "machine": "Linux",
                                                    "packages": {"torch": "2"}},
              "command": "python scripts/bench.py", "rows": rows, "ratios": {"tokens_per_s": 1.8, "rss": 0.7}}
    text = bench.render(report)
    assert "| ours | 180 | 108 | 6.00 | 3.50 | 2.9000 |" in text
    assert "non-pad tokens/s 1.80x, peak RSS 0.70x" in text and "command: python scripts/bench.py" in text
