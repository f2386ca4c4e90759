"""Generating with a finished run: base model + adapter, the saved chat template (with the tools a prompt may
call, when it has some), stop at end of turn."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from lora_ft.rundir.finished import FinishedRun, locate_base

Warn = Callable[[str], None]
Tools = list[dict] | None  # the functions a prompt may call, in OpenAI's shape (lora_ft.tool_turns)


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
    from lora_ft.data.tokenization import answer_stop_ids

    return answer_stop_ids(run.end_of_turn_id, tokenizer.eos_token_id)


def context_length(model) -> int | None:
    """The model's context in tokens, as its config gives it (None when it does not)."""
    from lora_ft.families import decoder_family

    config = model.config.to_dict()
    return decoder_family(config).context_length(config)


def warn_on_stderr(message: str) -> None:
    """Warnings of the commands whose standard output is the answers (generate, chat)."""
    from lora_ft import console

    console.status(f"warning: {message}")


def fit_to_context(ids: list[int], context: int | None, max_new_tokens: int, name: str,
                   messages: list[dict[str, str]], warn: Warn | None) -> tuple[list[int], int]:
    """A prompt's tokens cut to fit the model's context with room for its answer, and the answer's limit.

    A prompt gets at most the context less ``min(max_new_tokens, context // 2)`` tokens (the room kept for the
    answer); a longer one loses its first tokens (truncated from the left, as Ollama and llama.cpp do: the end of
    the conversation, its last question and the answer's start, are kept), said in one line. The answer may then
    use what is left of the context, up to ``max_new_tokens``: generating past the context is never asked for.
    """
    if not context:
        return ids, max_new_tokens
    room = min(max_new_tokens, max(context // 2, 1))
    limit = context - room
    if len(ids) > limit:
        if warn is not None:
            text = " ".join(messages[-1]["content"].split()) if messages else ""
            shown = f' ("{text[:40]}{"..." if len(text) > 40 else ""}")' if text else ""
            warn(f"{name}{shown} is {len(ids):,} tokens, more than the model's {context}-token context holds with "
                 f"{room} left for the answer: its first {len(ids) - limit:,} tokens are dropped (truncated from the "
                 "left; the end of the prompt is kept)")
        ids = ids[-limit:]
    return ids, min(max_new_tokens, context - len(ids))


def prompt_tokens(tokenizer, messages: list[dict], tools: Tools = None) -> list[int]:
    """The prompt as the model reads it: the conversation rendered with the saved chat template, the tools in it,
    and the assistant's turn opened."""
    return list(tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=True,
                                              return_dict=True)["input_ids"])


def prompt_ids(tokenizer, messages: list[dict[str, str]], device: str, model=None, max_new_tokens: int = 0,
               name: str = "the prompt", warn: Warn | None = None, tools: Tools = None) -> tuple[dict, int]:
    """The prompt's tensors, cut to the model's context (:func:`fit_to_context`), and the answer's token limit."""
    import torch

    ids = prompt_tokens(tokenizer, messages, tools)
    context = context_length(model) if model is not None else None
    ids, limit = fit_to_context(ids, context, max_new_tokens, name, messages, warn)
    tensor = torch.tensor([ids], dtype=torch.long, device=device)
    return {"input_ids": tensor, "attention_mask": torch.ones_like(tensor)}, limit


def generation_kwargs(tokenizer, run: FinishedRun, max_new_tokens: int, temperature: float) -> dict:
    kwargs = dict(max_new_tokens=max_new_tokens, eos_token_id=stop_token_ids(tokenizer, run),
                  pad_token_id=tokenizer.pad_token_id)
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_p=0.95)
    else:
        kwargs.update(do_sample=False)
    return kwargs


def generate(model, tokenizer, run: FinishedRun, messages: list[dict[str, str]], max_new_tokens: int = 256,
             temperature: float = 0.0, name: str = "the prompt", warn: Warn | None = None,
             tools: Tools = None) -> tuple[str, bool]:
    """One answer and whether it stopped at an end-of-turn token (rather than at max_new_tokens); ``warn`` is told
    when the prompt (called ``name``) is cut to fit the context."""
    import torch

    inputs, limit = prompt_ids(tokenizer, messages, model.device, model, max_new_tokens, name, warn, tools)
    with torch.no_grad():
        output = model.generate(**inputs, **generation_kwargs(tokenizer, run, limit, temperature))
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
                   max_new_tokens: int = 256, batch_size: int = 32,
                   progress: Callable[[int], None] | None = None, names: list[str] | None = None,
                   warn: Warn | None = None, tools: list[Tools] | None = None, refill: bool = True) -> list[Answer]:
    """Greedy answers to many conversations, at most ``batch_size`` at a time, shortest prompts first, with the KV
    cache; rows that stop leave the batch and waiting prompts take their place
    (:mod:`lora_ft.batched_decoding`). Each answer equals the one :func:`generate` gives for its conversation
    alone (a test checks it). ``progress`` is told how many answers are done; ``warn`` is told of each prompt cut
    to fit the context (``names``: what to call them, by default "prompt N"); ``tools``: each conversation's tools
    (None: none); ``refill: False`` decodes in fixed batches instead (what eval did before; a benchmark's
    baseline)."""
    from lora_ft.batched_decoding import decode

    context = context_length(model)
    names = names or [f"prompt {number}" for number in range(1, len(conversations) + 1)]
    tools = tools or [None] * len(conversations)
    prompts, caps = [], []
    for messages, name, functions in zip(conversations, names, tools):
        ids = prompt_tokens(tokenizer, messages, functions)
        ids, cap = fit_to_context(ids, context, max_new_tokens, name, messages, warn)
        prompts.append(ids)
        caps.append(cap)
    stops = set(stop_token_ids(tokenizer, run))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stops)
    kwargs = generation_kwargs(tokenizer, run, 0, temperature=0.0) | {"pad_token_id": pad}
    kwargs.pop("max_new_tokens")
    generated = decode(model, prompts, caps, stops, pad, batch_size, kwargs, progress, refill) if prompts else []
    return [Answer(tokenizer.decode(tokens, skip_special_tokens=True).strip(), bool(tokens) and tokens[-1] in stops,
                   len(tokens)) for tokens in generated]


@contextmanager
def merged_adapter(model, merge: bool = True):
    """The active adapter merged into the base weights inside the block, where that is exact enough to be worth
    it: on a CPU, in float32, the forward passes (generation, the eval loss) then skip the adapter's extra
    matmuls. Unmerged again on the way out."""
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
           temperature: float = 0.7, name: str = "the conversation", warn: Warn | None = None,
           tools: Tools = None) -> Iterator[str]:
    """Yield the answer's text as it is generated."""
    import torch
    from transformers import TextIteratorStreamer

    inputs, limit = prompt_ids(tokenizer, messages, model.device, model, max_new_tokens, name, warn, tools)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    kwargs = dict(**inputs, **generation_kwargs(tokenizer, run, limit, temperature), streamer=streamer)

    def work():
        with torch.no_grad():
            model.generate(**kwargs)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    yield from streamer
    thread.join()


def tools_file(path: str, flag: str = "--tools") -> list[dict]:
    """The tools a JSON file lists: a list of tools in OpenAI's shape or of bare function schemas (read as a data
    row's ``tools`` is, :func:`lora_ft.tool_turns.read_tools`)."""
    import json
    from pathlib import Path

    from lora_ft.errors import UserError
    from lora_ft.samples import RowFault
    from lora_ft.tool_turns import read_tools

    shape = ('a JSON list of tools, [{"type": "function", "function": {"name": ..., "description": ..., '
             '"parameters": {JSON schema}}}], or of bare {"name", "description", "parameters"} schemas')
    file = Path(path)
    if not file.is_file():
        raise UserError(f"{flag} {path} does not exist", fix=f"give a file holding {shape}")
    try:
        value = json.loads(file.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError:
        raise UserError(f"the {flag} file is not UTF-8 text", where=path, fix="save it as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"the {flag} file is not valid JSON ({exc.msg})", where=f"{path}:{exc.lineno}",
                        fix=f"write {shape}") from None
    try:
        tools = read_tools(value)
    except RowFault as fault:
        raise UserError(f"the {flag} file is not a tool list: {fault}", where=path, fix=f"write {shape}") from None
    if not tools:
        raise UserError(f"the {flag} file lists no tools", where=path, fix=f"write {shape}, or leave {flag} out")
    return tools
