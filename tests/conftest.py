"""Shared fixtures: tiny models and a tokenizer built in-process (no model hub), and data files."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# float32 on every CPU, so results do not depend on the machine; tests of the bfloat16 choice set it themselves
os.environ.setdefault("LORA_FT_CPU_BF16", "0")
# tokenized data cached for this session only, never in the user's cache folder
if "LORA_FT_DATA_CACHE" not in os.environ:
    os.environ["LORA_FT_DATA_CACHE"] = tempfile.mkdtemp(prefix="lora-ft-test-tokens-")
    atexit.register(shutil.rmtree, os.environ["LORA_FT_DATA_CACHE"], True)

REPO = Path(__file__).resolve().parent.parent

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
    "'\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

CORPUS = [
    "A contract is a legally binding agreement between two or more parties.",
    "Consideration is something of value exchanged by each party to a contract.",
    "The tenant shall pay rent on the first day of each month.",
    "What is the statute of frauds? Explain force majeure in plain English.",
    "Indemnification shifts the cost of certain losses from one party to another.",
    "You are a careful legal assistant. Answer clearly and concisely.",
    "hello world the quick brown fox jumps over the lazy dog 0123456789 ,.;:!?'\"()[]{}",
]


def build_tokenizer(directory: Path, chat_template: str | None = CHATML, eos: str = "<|im_end|>"):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, bos_token="<|im_start|>",
                                   unk_token="<|endoftext|>", pad_token=eos)
    if chat_template:
        fast.chat_template = chat_template
    fast.save_pretrained(directory)
    return fast


# Widths every bitsandbytes backend accepts in 4-bit: inputs a multiple of 64 (its block), outputs of 32 (the
# packed CPU layout on AVX-512 machines); k/v projections are 2 heads x 16 = 32 wide.
TINY_HIDDEN, TINY_INTERMEDIATE = 64, 128


def build_llama(directory: Path, vocab_size: int, layers: int = 2, init_range: float = 0.02,
                hidden: int = TINY_HIDDEN, intermediate: int = TINY_INTERMEDIATE) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=True,
                         initializer_range=init_range)
    LlamaForCausalLM(config).save_pretrained(directory, safe_serialization=True)


def build_gpt2(directory: Path, vocab_size: int) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=vocab_size, n_embd=TINY_HIDDEN, n_layer=2, n_head=4, n_positions=512,
                        bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(config).save_pretrained(directory, safe_serialization=True)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = build_tokenizer(directory)
    build_llama(directory, len(tokenizer), layers=3)
    return directory


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    """A GPT-2 family model (Conv1D layers) whose tokenizer has no chat template and EOS <|endoftext|>."""
    directory = tmp_path_factory.mktemp("tiny-gpt2")
    tokenizer = build_tokenizer(directory, chat_template=None, eos="<|endoftext|>")
    build_gpt2(directory, len(tokenizer))
    return directory


@pytest.fixture(scope="session")
def chat_tokenizer(tiny_llama):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


def run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    """Run a lora-ft command in this process: its exit code, standard output and standard error (never a
    traceback: every fault a command meets is a one-screen error)."""
    from lora_ft import cli

    capsys.readouterr()
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


CRASH_RUN = Path(__file__).with_name("crash_run.py")


def killed_and_resumed(config: Path, tmp_path: Path, kill: str, *options: str):
    """``config`` run whole into ``tmp_path/reference``, and into ``tmp_path/resumed`` SIGKILLed at ``kill``
    (tests/crash_run.py) then run again with the same options: (reference, resumed, the resuming process)."""
    import signal
    import subprocess
    import sys

    def run(point: str, output: Path):
        return subprocess.run([sys.executable, str(CRASH_RUN), point, str(config), *options, "--set",
                               f"output_dir={output}"], capture_output=True, text=True, timeout=900)

    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    whole = run("none", reference)
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed = run(kill, resumed)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    finished = run("none", resumed)
    assert finished.returncode == 0, finished.stderr[-2000:]
    return reference, resumed, finished


def same_adapter(one: Path, other: Path) -> bool:
    """Whether two run directories' adapters hold bitwise equal tensors."""
    import torch
    from safetensors.torch import load_file

    ours, theirs = (load_file(run / "adapter" / "adapter_model.safetensors") for run in (one, other))
    return ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def legal_rows(n: int, offset: int = 0) -> list[dict]:
    return [
        {"instruction": f"What is consideration in contract {i}?", "input": "",
         "output": f"Consideration is something of value exchanged by each party {i}."}
        for i in range(offset, offset + n)
    ]


def preference_rows(n: int, offset: int = 0) -> list[dict]:
    """Pairs whose chosen answer is the corpus's sentence and whose rejected answer is a wrong one."""
    return [
        {"prompt": f"What is consideration in contract {i}?",
         "chosen": f"Consideration is something of value exchanged by each party {i}.",
         "rejected": f"The tenant shall pay rent on the first day {i}."}
        for i in range(offset, offset + n)
    ]


def write_config(path: Path, model_dir: Path, data_dir: Path, *, extra: str = "", output_dir: Path | None = None,
                 train_file: str = "train.jsonl", eval_file: str | None = "eval.jsonl") -> Path:
    eval_block = f"  eval:\n    - path: {data_dir / eval_file}\n" if eval_file else ""
    path.write_text(
        f"""output_dir: {output_dir or path.parent / 'run'}
model:
  base: {model_dir}
lora:
  r: 4
  alpha: 8
  dropout: 0.0
data:
  train:
    - path: {data_dir / train_file}
{eval_block}  max_seq_length: 128
train:
  max_steps: 3
  batch_size: 2
  gradient_accumulation_steps: 1
  learning_rate: 1.0e-2
  warmup_ratio: 0.0
  logging_steps: 1
{extra}""",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def legal_data(tmp_path) -> Path:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    write_jsonl(data_dir / "train.jsonl", legal_rows(12))
    write_jsonl(data_dir / "eval.jsonl", legal_rows(4, offset=100))
    return data_dir


@pytest.fixture
def preference_data(tmp_path) -> Path:
    data_dir = tmp_path / "pairs"
    data_dir.mkdir()
    write_jsonl(data_dir / "train.jsonl", preference_rows(12))
    write_jsonl(data_dir / "eval.jsonl", preference_rows(4, offset=100))
    return data_dir


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need CUDA: skip them, saying why, on machines without it (CI has none). Tests marked
    `engines` run the serving engines in their own environments: only in the engine tier
    (`bash scripts/engine_check.sh`, which sets LORA_FT_ENGINES=1)."""
    import os

    import torch

    engines = os.environ.get("LORA_FT_ENGINES") == "1"
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_engines = pytest.mark.skip(reason="engine tier: run bash scripts/engine_check.sh")
    browser = os.environ.get("LORA_FT_BROWSER") == "1"
    skip_browser = pytest.mark.skip(reason="browser tier: run bash scripts/browser_check.sh")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if "engines" in item.keywords and not engines:
            item.add_marker(skip_engines)
        if "browser" in item.keywords and not browser:
            item.add_marker(skip_browser)
