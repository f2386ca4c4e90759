"""GGUF export through llama.cpp's own converter (installed with the dev tools; llama.cpp's quantizer and runtime
are the engine tier's, tests/engines): every family converts, and where transformers' own GGUF reader rebuilds
the family, the f16 file gives the logits of the Hugging Face weights; the end-of-turn token is written where the converter left it out; and
every kind of bad input is refused before the merge, with the fix, leaving nothing behind."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lora_ft.errors import UserError
from lora_ft.exports import llama_cpp_tools
from tests.conftest import CHATML, run_cli
from tests.model_families import FAMILIES, SENTENCEPIECE_FAMILIES, build_family_model, converter_tokenizers

TOKEN_IDS = [1, 5, 40, 77, 120, 250, 399, 2, 3, 7]
# transformers dequantizes f16 to float32: the only difference from the float32 weights is f16 rounding, measured
# at most 2.9e-4 on these tiny models (logits' std about 0.16); the bound is about 3x that
F16_LOGITS_ATOL = 1e-3


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> dict[str, Path]:
    return converter_tokenizers(tmp_path_factory.mktemp("tokenizers"))


def _logits(model) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([TOKEN_IDS])).logits[0].float().numpy()


# transformers' own GGUF reader rebuilds these families exactly; for Qwen3 and Gemma 2/3 it ignores the file's
# head size (key_length) and for GPT-2 it computes differently (0.01 off on the second position), so for those the
# file's description is checked here and llama.cpp itself computes their logits in the engine tier
# (tests/engines/test_gguf_llama_cpp.py: within 1e-3 of transformers for every family)
READ_BACK_BY_TRANSFORMERS = ("llama", "mistral", "qwen2", "phi3")


@pytest.mark.embedded  # the embedded model's tokenizer
@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_converter_writes_each_family(family, tokenizers, tmp_path):
    import torch
    from gguf import GGUFReader
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = tokenizers[family]
    model_dir = build_family_model(family, tmp_path / "model", tokenizer)
    path = llama_cpp_tools.convert(model_dir, tmp_path / "model-f16.gguf", "f16")
    types = llama_cpp_tools.tensor_types(path)
    assert types.get("F16", 0) > 0 and set(types) <= {"F16", "F32"}, types
    reader = GGUFReader(str(path))
    arch = reader.get_field("general.architecture").contents()
    config = AutoConfig.from_pretrained(model_dir)
    assert reader.get_field(f"{arch}.block_count").contents() == config.num_hidden_layers
    assert reader.get_field(f"{arch}.embedding_length").contents() == config.hidden_size
    assert len(reader.get_field("tokenizer.ggml.tokens").contents()) == config.vocab_size
    assert reader.get_field("tokenizer.chat_template").contents() == CHATML or family not in SENTENCEPIECE_FAMILIES
    if getattr(config, "head_dim", None):
        assert reader.get_field(f"{arch}.attention.key_length").contents() == config.head_dim
    if family in READ_BACK_BY_TRANSFORMERS:
        kwargs = {"dtype": torch.float32, "attn_implementation": "eager"}
        expected = _logits(AutoModelForCausalLM.from_pretrained(model_dir, **kwargs).eval())
        read_back = _logits(AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, **kwargs).eval())
        np.testing.assert_allclose(read_back, expected, atol=F16_LOGITS_ATOL, rtol=0)


@pytest.mark.embedded
def test_the_end_of_turn_token_is_written_where_the_converter_left_it_out(tokenizers, tmp_path):
    from gguf import GGUFReader

    model_dir = build_family_model("llama", tmp_path / "model", tokenizers["embedded"])
    path = llama_cpp_tools.convert(model_dir, tmp_path / "model-f16.gguf", "f16")
    eos = GGUFReader(str(path)).get_field("tokenizer.ggml.eos_token_id").contents()
    tensors = len(GGUFReader(str(path)).tensors)
    assert llama_cpp_tools.write_end_of_turn(path, eos) is False  # EOS already ends a turn: the file is untouched
    other = 1 if eos != 1 else 0  # a template whose end of turn is not the tokenizer's EOS (Llama 3's <|eot_id|>)
    assert llama_cpp_tools.write_end_of_turn(path, other) is True
    reader = GGUFReader(str(path))
    assert reader.get_field("tokenizer.ggml.eot_token_id").contents() == other
    assert reader.get_field("tokenizer.ggml.eos_token_id").contents() == eos and len(reader.tensors) == tensors
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == ["model-f16.gguf"]


def test_a_tokenizer_the_converter_does_not_know_is_a_user_error(tiny_llama, tmp_path):
    """The suite's tiny tokenizer (trained on a few sentences) hashes to no pre-tokenizer llama.cpp implements."""
    with pytest.raises(UserError) as error:
        llama_cpp_tools.convert(tiny_llama, tmp_path / "model-f16.gguf", "f16")
    assert "does not recognise this model's tokenizer" in error.value.title
    assert not (tmp_path / "model-f16.gguf").exists()


@pytest.mark.parametrize("given, message", [
    ("q8_o", "unknown GGUF type 'q8_o' (did you mean 'q8_0'?)"),
    ("f16,bogus", "unknown GGUF type 'bogus'"),
    (",", "no GGUF type given"),
])
def test_gguf_types_are_checked_with_the_list_of_known_ones(given, message):
    with pytest.raises(UserError) as error:
        llama_cpp_tools.plan_types(tuple(given.split(",")))
    assert error.value.title == message and "q4_k_m" in error.value.fix and "q6_k" in error.value.fix


def test_the_plan_makes_f16_for_the_comparison_and_keeps_only_what_was_asked():
    plan = llama_cpp_tools.plan_types(("Q4_K_M", "q8_0", "q4_k_m"))
    assert plan.types == ("q4_k_m", "q8_0")
    assert plan.converted == ("f16", "q8_0") and plan.quantized == ("q4_k_m",) and not plan.reference_kept


@pytest.fixture(scope="module")
def finished_run(tiny_llama, tmp_path_factory) -> Path:
    from lora_ft import cli
    from tests.conftest import legal_rows, write_config, write_jsonl

    root = tmp_path_factory.mktemp("gguf-run")
    data_dir = root / "data"
    data_dir.mkdir()
    write_jsonl(data_dir / "train.jsonl", legal_rows(8))
    write_jsonl(data_dir / "eval.jsonl", legal_rows(2, offset=100))
    config = write_config(root / "run.yaml", tiny_llama, data_dir, output_dir=root / "run")
    assert cli.main(["train", str(config), "--set", "train.max_steps=1"]) == 0
    return root / "run"


def _export(capsys, run, out: Path, *extra: str) -> tuple[int, str, str]:
    return run_cli(capsys, ["export", str(run), "--format", "gguf", "--out", str(out), *extra])


def test_no_llama_cpp_is_refused_before_the_merge(finished_run, tmp_path, capsys, monkeypatch):
    if importlib.util.find_spec("llama_cpp") is not None:
        pytest.skip("llama-cpp-python is installed here: this test is of the set-up without it")
    monkeypatch.delenv(llama_cpp_tools.LLAMA_PYTHON_ENV, raising=False)
    code, out, err = _export(capsys, finished_run, tmp_path / "gguf")
    assert code == 2 and "llama.cpp's Python binding (llama-cpp-python) is not installed" in err
    assert "quantizing to q4_k_m" in err and "pip install 'lora-ft[gguf]'" in err
    assert "merging" not in out and not (tmp_path / "gguf").exists()


def test_a_llama_python_that_does_not_exist_is_refused(finished_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(llama_cpp_tools.LLAMA_PYTHON_ENV, str(tmp_path / "no-such-python"))
    code, out, err = _export(capsys, finished_run, tmp_path / "gguf", "--gguf-types", "f16")
    assert code == 2 and f"{llama_cpp_tools.LLAMA_PYTHON_ENV}=" in err and "does not exist" in err
    assert not (tmp_path / "gguf").exists()


def test_an_architecture_the_converter_does_not_know_is_refused_before_the_merge(finished_run, tiny_llama, tmp_path,
                                                                                capsys):
    renamed = tmp_path / "toy-base"
    shutil.copytree(tiny_llama, renamed)
    config = json.loads((renamed / "config.json").read_text())
    (renamed / "config.json").write_text(json.dumps({**config, "architectures": ["ToyForCausalLM"]}))
    code, out, err = _export(capsys, finished_run, tmp_path / "gguf", "--gguf-types", "f16", "--base", str(renamed))
    assert code == 2 and "does not know this model's architecture: ToyForCausalLM" in err
    assert "--format merged" in err and "merging" not in out and not (tmp_path / "gguf").exists()
