"""Generating with a finished run: base model + adapter, the saved chat template, stop at end of turn."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from lora_ft.rundir.finished import FinishedRun, locate_base


def inference_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(run: FinishedRun):
    """The tokenizer saved with the adapter: it carries the chat template used in training."""
    from transformers import AutoTokenizer

    from lora_ft.errors import UserError

    try:
        return AutoTokenizer.from_pretrained(run.adapter_dir)
    except (OSError, ValueError, TypeError, KeyError) as exc:  # a file cut short, missing or edited
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserError(f"the tokenizer saved with the adapter in {run.adapter_dir} cannot be loaded: {first}",
                        where=str(run.adapter_dir),
                        fix="the adapter folder was changed after training: restore its tokenizer files "
                        "(tokenizer.json, tokenizer_config.json) from a copy or from the run's last checkpoint "
                        "folder, which holds the same files") from None


def load_base(run: FinishedRun, base: str | None = None, dtype: str | None = None):
    """The base model in full precision (float32 on a CPU, bfloat16 on a GPU unless told)."""
    import torch
    from transformers import AutoModelForCausalLM

    device = inference_device()
    dtype = dtype or ("bfloat16" if device == "cuda" else "float32")
    model = AutoModelForCausalLM.from_pretrained(
        locate_base(run, base), dtype=getattr(torch, dtype),
        trust_remote_code=run.config.model.trust_remote_code,
    )
    return model.to(device).eval()


def load_tuned(run: FinishedRun, base: str | None = None):
    """Base + adapter (PEFT), unmerged, ready to generate; ``disable_adapter()`` gives the base back."""
    from peft import PeftModel

    return PeftModel.from_pretrained(load_base(run, base), str(run.adapter_dir)).eval()


def stop_token_ids(tokenizer, run: FinishedRun) -> list[int]:
    """Token ids that end an answer: the template's end-of-turn token and the tokenizer's EOS."""
    from lora_ft.tokenization import answer_stop_ids

    return answer_stop_ids(run.end_of_turn_id, tokenizer.eos_token_id)


def prompt_ids(tokenizer, messages: list[dict[str, str]], device: str):
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)
    return {k: v.to(device) for k, v in encoded.items()}


def generation_kwargs(tokenizer, run: FinishedRun, max_new_tokens: int, temperature: float) -> dict:
    kwargs = dict(max_new_tokens=max_new_tokens, eos_token_id=stop_token_ids(tokenizer, run),
                  pad_token_id=tokenizer.pad_token_id)
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_p=0.95)
    else:
        kwargs.update(do_sample=False)
    return kwargs


def generate(model, tokenizer, run: FinishedRun, messages: list[dict[str, str]], max_new_tokens: int = 256,
             temperature: float = 0.0) -> tuple[str, bool]:
    """One answer and whether it stopped at an end-of-turn token (rather than at max_new_tokens)."""
    import torch

    inputs = prompt_ids(tokenizer, messages, model.device)
    with torch.no_grad():
        output = model.generate(**inputs, **generation_kwargs(tokenizer, run, max_new_tokens, temperature))
    new = output[0][inputs["input_ids"].shape[1]:].tolist()
    stops = set(stop_token_ids(tokenizer, run))
    stopped = bool(new) and new[-1] in stops
    return tokenizer.decode(new, skip_special_tokens=True).strip(), stopped


@dataclass
class Answer:
    text: str
    stopped: bool  # ended at an end-of-turn token, not at max_new_tokens
    tokens: int  # generated tokens, the end-of-turn token included


def generate_batch(model, tokenizer, run: FinishedRun, conversations: list[list[dict[str, str]]],
                   max_new_tokens: int = 256, batch_size: int = 16,
                   progress: Callable[[int], None] | None = None) -> list[Answer]:
    """Greedy answers to many conversations, ``batch_size`` at a time: prompts of similar length are batched
    together, padded on the left, and generated with the KV cache. Each answer equals the one :func:`generate`
    gives for its conversation alone (a test checks it). ``progress`` is told how many answers are done."""
    import torch

    prompts = [tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
               ["input_ids"] for messages in conversations]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    stops = set(stop_token_ids(tokenizer, run))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stops)
    kwargs = generation_kwargs(tokenizer, run, max_new_tokens, temperature=0.0) | {"pad_token_id": pad}
    answers: list[Answer | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        width = max(len(prompts[i]) for i in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, index in enumerate(rows):
            ids[row, width - len(prompts[index]):] = torch.tensor(prompts[index])
            mask[row, width - len(prompts[index]):] = 1
        with torch.no_grad():
            output = model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device), **kwargs)
        for row, index in enumerate(rows):
            new = output[row, width:].tolist()
            end = next((at for at, token in enumerate(new) if token in stops), None)
            kept = new if end is None else new[:end + 1]
            answers[index] = Answer(tokenizer.decode(kept, skip_special_tokens=True).strip(), end is not None,
                                    len(kept))
        if progress is not None:
            progress(min(start + batch_size, len(order)))
    return answers


@contextmanager
def merged_for_generation(model, merge: bool = True):
    """The active adapter merged into the base weights inside the block, where that is exact enough to be worth
    it: on a CPU, in float32, generation then skips the adapter's extra matmuls. Unmerged again on the way out."""
    import torch

    weights = next(model.parameters())
    if not merge or weights.device.type != "cpu" or weights.dtype != torch.float32:
        yield
        return
    model.merge_adapter()
    try:
        yield
    finally:
        model.unmerge_adapter()


def stream(model, tokenizer, run: FinishedRun, messages: list[dict[str, str]], max_new_tokens: int = 512,
           temperature: float = 0.7) -> Iterator[str]:
    """Yield the answer's text as it is generated."""
    import torch
    from transformers import TextIteratorStreamer

    inputs = prompt_ids(tokenizer, messages, model.device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    kwargs = dict(**inputs, **generation_kwargs(tokenizer, run, max_new_tokens, temperature), streamer=streamer)

    def work():
        with torch.no_grad():
            model.generate(**kwargs)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    yield from streamer
    thread.join()
