"""Every model family our users tune, end to end through the real CLI: a tiny random-weight model of each
(tests/model_families.py) trains two LoRA steps, merges, exports as a PEFT adapter and as a merged model, and each
export loads the way its users load it and answers; `plan` reads each family's config.json right, and padding-free
rows stay exact under the attention each family gets."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from lora_ft import planning
from lora_ft.config import load_config, resolve

from .conftest import run_cli, write_config
from .model_families import FAMILIES, family_builder

# The linear layers `lora.target_modules: all-linear` (the default) must find in every decoder layer
LLAMA_LAYOUT = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
TARGETS = {family: LLAMA_LAYOUT for family in FAMILIES}
TARGETS["phi3"] = {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}  # fused projections
TARGETS["gpt2"] = {"c_attn", "c_proj", "c_fc"}  # Conv1D; c_proj is both the attention's and the MLP's output
PER_LAYER = {family: len(names) for family, names in TARGETS.items()}
PER_LAYER["gpt2"] = 4  # attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj

# The attention `auto` picks on a CPU, asked of each family's transformers class
ATTENTION = {family: "sdpa" for family in FAMILIES}
ATTENTION["gemma2"] = "eager"  # Gemma 2 has no SDPA path (no logit soft-capping there)

# Merged (float32) against base + adapter (float32, unmerged): the same sums in another order, so the logits agree to
# float32 rounding, about 1e-7 relative on logits of order 1: measured at most 6.5e-7 over the eight families. 1e-5
# leaves 15x headroom, and two steps of LoRA move the logits by over 100x that (asserted below), so the comparison
# can tell a merge that lost the adapter from one that kept it. (The product's own bound, export_check.json's
# parity_within_tolerance, is 1e-3.)
MERGE_TOLERANCE = 1e-5
PROMPT = [{"role": "user", "content": "What is consideration in a contract?"}]


@pytest.fixture(scope="module")
def family_dir(tmp_path_factory):
    return family_builder(tmp_path_factory.mktemp("families"))


def _logits_and_greedy(model, tokenizer) -> tuple[torch.Tensor, list[int]]:
    inputs = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        logits = model(**inputs).logits
        # a few tokens whatever they are (random weights may end the answer at once): the same ids from both
        out = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    return logits, out[0, inputs["input_ids"].shape[1]:].tolist()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_trains_merges_exports_and_each_export_answers(family, family_dir, legal_data, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = family_dir(family)
    run = tmp_path / "run"
    config = write_config(tmp_path / "run.yaml", model_dir, legal_data, output_dir=run)
    code, out, _ = run_cli(capsys, ["train", str(config), "--set", "train.max_steps=2"])
    assert code == 0
    assert f"attention: {ATTENTION[family]} (" in out
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["metrics"]["steps"] == 2 and manifest["metrics"]["eval_loss_after"] is not None

    # the default target modules (all-linear) found every linear layer of every decoder layer
    adapter_config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    # (PEFT writes the full module names where a model has few layers)
    assert {name.rsplit(".", 1)[-1] for name in adapter_config["target_modules"]} == TARGETS[family]
    with safe_open(str(run / "adapter" / "adapter_model.safetensors"), "pt") as weights:
        lora_a = [k for k in weights.keys() if "lora_A" in k]
    assert len(lora_a) == 2 * PER_LAYER[family], lora_a  # two decoder layers

    code, _, _ = run_cli(capsys, ["merge", str(run), "--out", str(tmp_path / "merge")])
    assert code == 0
    parity = json.loads((tmp_path / "merge" / "parity.json").read_text())
    assert parity["within_tolerance"] is True and parity["max_abs_logit_diff"] <= MERGE_TOLERANCE

    for export in ("peft", "merged"):
        code, _, _ = run_cli(capsys, ["export", str(run), "--format", export, "--out", str(tmp_path / export)])
        assert code == 0, export
        check = json.loads((tmp_path / export / "export_check.json").read_text())
        assert check["passed"] is True, check
    check = json.loads((tmp_path / "merged" / "export_check.json").read_text())
    assert check["loader"] == "transformers without peft"
    assert check["same_greedy_answer_as_base_plus_adapter"] is True and check["parity_within_tolerance"] is True

    # each export loaded as its users load it: the adapter with PEFT on the base, the merged model alone
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "peft")  # the adapter's tokenizer: the trained template
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tuned = PeftModel.from_pretrained(base, str(tmp_path / "peft")).eval()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    tuned_logits, tuned_answer = _logits_and_greedy(tuned, tokenizer)
    merged_logits, merged_answer = _logits_and_greedy(merged, tokenizer)
    with tuned.disable_adapter():
        base_logits, _ = _logits_and_greedy(tuned, tokenizer)
    assert (merged_logits - tuned_logits).abs().max().item() <= MERGE_TOLERANCE
    assert (tuned_logits - base_logits).abs().max().item() > 100 * MERGE_TOLERANCE, "the adapter changes the model"
    assert len(merged_answer) == 6 and merged_answer == tuned_answer


@pytest.mark.parametrize("family", list(FAMILIES))
def test_plan_reads_each_familys_config(family, family_dir, legal_data, tmp_path, capsys):
    """`plan` counts each family's linear weights and LoRA parameters as the model and PEFT have them (Phi-3's fused
    qkv_proj and gate_up_proj: read as Llama's separate projections, the LoRA count was 8,192 for PEFT's 6,656;
    GPT-2's Conv1D), and the command runs."""
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    from lora_ft.model import attach_lora, count_parameters

    model_dir = family_dir(family)
    config = write_config(tmp_path / "run.yaml", model_dir, legal_data)
    shape = planning.read_shape(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    head = model.get_output_embeddings()
    linear = sum(m.weight.numel() for m in model.modules()
                 if isinstance(m, (torch.nn.Linear, Conv1D)) and m is not head)
    assert shape.linear_params == linear
    assert shape.layers == 2 and shape.tied is True
    cfg = resolve(load_config(config), has_cuda=False).config
    assert planning.lora_param_count(shape, cfg) == count_parameters(attach_lora(model, cfg.lora))[0]
    code, out, _ = run_cli(capsys, ["plan", str(config)])
    assert code == 0 and "fits: yes" in out


@pytest.mark.parametrize("family", list(FAMILIES))
def test_padding_free_rows_are_exact_under_each_familys_attention(family, family_dir, legal_data, tmp_path):
    """A padding-free row of four samples gives the logits each sample gets alone, with the attention the family
    resolves to: SDPA through lora-ft's per-sample path, eager (Gemma 2) through transformers' block-diagonal mask."""
    from transformers import AutoModelForCausalLM

    from lora_ft.model import use_per_sample_attention

    model_dir = family_dir(family)
    cfg = resolve(load_config(write_config(tmp_path / "run.yaml", model_dir, legal_data)), has_cuda=False).config
    attention = cfg.model.attn_implementation
    assert attention == ATTENTION[family]
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=attention).eval()
    model.config.use_cache = False  # as in training
    lengths = [5, 9, 3, 7]
    ids = torch.randint(3, 300, (1, sum(lengths)), generator=torch.Generator().manual_seed(0))
    position_ids = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    with torch.no_grad():
        separate = torch.cat([model(input_ids=part).logits for part in ids.split(lengths, dim=1)], dim=1)
        if attention == "sdpa":  # as load_for_training decides
            use_per_sample_attention(model, True)
        packed = model(input_ids=ids, position_ids=position_ids).logits
    torch.testing.assert_close(packed, separate, rtol=1e-5, atol=1e-5)


def test_gemma_ties_its_output_head_where_config_json_leaves_it_unsaid():
    """transformers leaves a key out of config.json where it equals the class default: Gemma's configs tie the head
    without saying so, Llama's default is untied. Read as Llama, Gemma 2 2B counted 3.2B parameters, not 2.6B."""
    gemma_2_2b = {"architectures": ["Gemma2ForCausalLM"], "hidden_size": 2304, "intermediate_size": 9216,
                  "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
                  "vocab_size": 256000, "max_position_embeddings": 8192}
    shape = planning.shape_from_config(gemma_2_2b)
    assert shape.tied is True and shape.total_params == pytest.approx(2.614e9, rel=0.01)
    llama = dict(gemma_2_2b, architectures=["LlamaForCausalLM"])
    assert planning.shape_from_config(llama).tied is False
