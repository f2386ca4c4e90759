"""Whether this CPU multiplies bfloat16 matrices fast enough to train with bfloat16 base weights.

CPUs differ: with AMX a bfloat16 matrix product runs about 9x faster than float32, with AVX-512 BF16 alone 2-3x;
without either PyTorch emulates bfloat16 and it runs several times slower. Only the first pays off in training
(see ``FAST_RATIO``). The flags alone do not say how fast the kernels
PyTorch picks really are, so a short probe times the same matrix product in both precisions (about a third of a
second). Its answer is kept in lora-ft's cache, keyed by the CPU's model, flags, core count and the torch version,
so later commands do not probe again. ``LORA_FT_CPU_BF16=1`` (or ``0``) decides without probing.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# bfloat16 must multiply matrices at least this much faster than float32. Measured on this project's machines: at
# 2.4-2.8x (AVX-512 BF16 without AMX) the legal run trained no faster in bfloat16 (164 against 161-176 non-pad
# tokens/s), the rest of a step (attention, norms, the LM head and loss, the adapter's casts) eating the gain; AMX
# machines reach about 9x, where a LoRA step of the embedded model ran 1.2-1.36x faster.
FAST_RATIO = 4.0
PROBE_SIZE = 1024
PROBE_SECONDS = 0.15  # per precision
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@dataclass
class Bf16Verdict:
    fast: bool
    ratio: float | None  # bfloat16 / float32 matrix-product throughput; None when decided without a probe
    flags: str  # the CPU's bfloat16 flags, for the note
    how: str  # "probe", "cached probe" or "LORA_FT_CPU_BF16"

    def describe(self) -> str:
        flags = self.flags or "no bfloat16 instructions"
        if self.ratio is None:
            return f"set by LORA_FT_CPU_BF16 ({flags})"
        return f"bfloat16 matrix products {self.ratio:.1f}x float32 on this CPU ({flags}; {self.how})"


def cpu_flags() -> tuple[str, str]:
    """(model name, the bfloat16-related flags) from /proc/cpuinfo; empty strings where it cannot be read."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor(), ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    return model, " ".join(f for f in BF16_FLAGS if f in flags)


@dataclass
class MatmulTiming:
    dtype: str
    products: int  # matrix products timed
    seconds: float

    @property
    def rate(self) -> float:
        return self.products / self.seconds


def time_matmuls(size: int = PROBE_SIZE, seconds: float = PROBE_SECONDS) -> dict[str, MatmulTiming]:
    """Time a ``size`` x ``size`` matrix product on this CPU in float32 and in bfloat16, for ``seconds`` each."""
    import torch

    timings = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
        if (a @ b).dtype != dtype:  # the first call also picks and prepares the kernel
            raise RuntimeError(f"a {dtype} matrix product returned another dtype")
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            a @ b
            count += 1
        name = str(dtype).removeprefix("torch.")
        timings[name] = MatmulTiming(name, count, time.perf_counter() - started)
    return timings


def matmul_ratio(size: int = PROBE_SIZE, seconds: float = PROBE_SECONDS) -> float:
    """bfloat16 over float32 throughput of a ``size`` x ``size`` matrix product on this CPU."""
    timings = time_matmuls(size, seconds)
    return timings["bfloat16"].rate / timings["float32"].rate


def _cache_file(model: str, flags: str) -> Path:
    import torch

    from lora_ft.embedded import cache_root

    key = hashlib.sha256(f"{model}|{flags}|{os.cpu_count()}|{torch.__version__}".encode()).hexdigest()[:16]
    return cache_root() / "cpu-probe" / f"{key}.json"


def cpu_bf16_verdict() -> Bf16Verdict:
    """Is bfloat16 fast here? From ``LORA_FT_CPU_BF16``, the cached probe, or a new probe (then cached)."""
    model, flags = cpu_flags()
    forced = os.environ.get("LORA_FT_CPU_BF16", "").strip()
    if forced in ("0", "1"):
        return Bf16Verdict(forced == "1", None, flags, "LORA_FT_CPU_BF16")
    cache = _cache_file(model, flags)
    try:
        saved = json.loads(cache.read_text())
        return Bf16Verdict(bool(saved["fast"]), float(saved["ratio"]), flags, "cached probe")
    except (OSError, ValueError, KeyError, TypeError):
        pass
    ratio = matmul_ratio()
    verdict = Bf16Verdict(ratio >= FAST_RATIO, ratio, flags, "probe")
    try:  # a cache that cannot be written only means probing again next time
        cache.parent.mkdir(parents=True, exist_ok=True)
        temporary = cache.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps({**asdict(verdict), "cpu": model}) + "\n")
        temporary.replace(cache)
    except OSError:
        pass
    return verdict
