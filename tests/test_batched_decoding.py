"""Greedy decoding with a batch kept full (lora_ft.batched_decoding): each answer is the one model.generate gives
its prompt alone, whatever rows it shared the batch with, when they joined or when they left."""

import pytest
import torch

from lora_ft import batched_decoding


@pytest.fixture(scope="module")
def model(tiny_llama):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()


def _alone(model, prompt, cap, stops, pad):
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=cap, do_sample=False,
                             eos_token_id=sorted(stops), pad_token_id=pad)
    return out[0, len(prompt):].tolist()


def test_refilled_batches_give_each_prompt_its_own_greedy_answer(model):
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(5, model.config.vocab_size, (length,), generator=generator).tolist()
               for length in (3, 17, 8, 1, 25, 12, 6, 30, 9, 14, 2)]
    caps = [12, 7, 20, 16, 9, 20, 4, 18, 20, 11, 15]
    alone = [_alone(model, p, c, set(), 0) for p, c in zip(prompts, caps)]
    # stop tokens chosen among what the model writes, so that rows stop at different steps
    stops = {alone[0][5], alone[2][3], alone[5][8]}
    alone = [_alone(model, p, c, stops, 0) for p, c in zip(prompts, caps)]
    assert batched_decoding._plain_cache(model)
    done = []
    batched = batched_decoding.decode_refilling(model, prompts, caps, stops, 0, batch_size=4,
                                                progress=done.append)

    def trimmed(tokens):  # generate pads a finished row; an answer ends at its first stop token
        end = next((at for at, token in enumerate(tokens) if token in stops), None)
        return tokens if end is None else tokens[:end + 1]

    assert batched == [trimmed(tokens) for tokens in alone]
    lengths = {len(tokens) for tokens in batched}
    assert len(lengths) >= 5 and any(tokens[-1] in stops for tokens in batched)  # rows left at many steps
    assert done[-1] == len(prompts) and done == sorted(done) and len(done) <= 11


def test_fixed_batches_give_the_same_answers(model):
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [14], [15, 16, 17, 18]]
    caps = [10, 6, 9, 10]
    kwargs = {"do_sample": False, "eos_token_id": [3], "pad_token_id": 0}
    fixed = batched_decoding.decode_in_batches(model, prompts, caps, {3}, 0, 3, kwargs)
    refilled = batched_decoding.decode_refilling(model, prompts, caps, {3}, 0, 3)
    assert fixed == refilled
