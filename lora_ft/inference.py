"""Generating with a finished run: base model + adapter, the saved chat template, stop at end of turn."""

from __future__ import annotations

import threading
from collections.abc import Iterator

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
