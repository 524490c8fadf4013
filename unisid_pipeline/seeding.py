"""Explicit seeds and devices: every random stage calls these, models never pick a device."""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
from collections.abc import Iterator

import numpy as np
import torch

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA) together; return a CPU generator seeded the same.

    Also turns on deterministic algorithms where torch offers them on the CPU, so that
    the same seed gives the same SIDs on the CPU.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


DEVICE_HINT = "use 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'"


def check_device_name(device: object, field: str = "device") -> None:
    """Fail unless `device` names a device kind this project runs on (availability is checked at use time by
    `resolve_device`, so a config written on a laptop can still name the GPU of the training machine)."""
    if not isinstance(device, str) or not device:
        raise ValueError(f"{field} must be a string such as 'cpu' or 'cuda:0', got {device!r}")
    if device == "auto":
        return
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        kind = None
    if kind not in {"cpu", "cuda", "mps"}:
        raise ValueError(f"{field}: unknown device {device!r}: {DEVICE_HINT}")


def resolve_device(device: str) -> torch.device:
    """Turn a config string into a torch.device, failing clearly if it cannot be used.

    Accepted: "cpu", "cuda", "cuda:N", "mps", and "auto" (cuda if available, else cpu).
    """
    if not isinstance(device, str) or not device:
        raise ValueError(f"device must be a string such as 'cpu' or 'cuda:0', got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(
            f"unknown device {device!r}: use 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'"
        ) from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available on this machine; use device='cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} requested but MPS is not available; use device='cpu'")
    elif dev.type not in {"cpu", "cuda", "mps"}:
        raise ValueError(f"unsupported device type {dev.type!r}; use 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'")
    return dev


@contextlib.contextmanager
def cpu_determinism(device: torch.device | str, enabled: bool = True) -> Iterator[None]:
    """Train with one intra-op thread on the CPU so that the same seed gives bit-identical weights.

    With 2+ threads, CPU reductions (MKL GEMM under load, embedding/index backward) change float
    sums in the 7th digit from run to run; over tens of epochs that flips codes (measured: an
    RQ-VAE on 1,500 ads gave different SIDs for all 1,500 ads in two same-seed runs with 2
    threads, identical SIDs with 1). GPUs are left alone. `enabled=False` keeps all threads.
    """
    dev = torch.device(device) if isinstance(device, str) else device
    if not enabled or dev.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """True when the CPU has bfloat16 instructions (Linux /proc/cpuinfo flags avx512_bf16 or amx_bf16).

    Without them bf16 autocast on the CPU is emulated: MiniLM UniSID training measured 134 s per step
    under bf16 vs 11.7 s in fp32 on an AVX2-only EPYC (bench/bench_unisid.py, batch 32, 1 thread), while
    on an AVX512-BF16 CPU bf16 was faster (12.5 vs 9.4 ads/s). ``cpuinfo`` overrides the file (tests).
    """
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
                cpuinfo = fh.read()
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags") and ":" in line:
            flags.update(line.split(":", 1)[1].split())
    return any(f in flags for f in _NATIVE_BF16_FLAGS)


@functools.lru_cache(maxsize=1)
def this_cpu_has_native_bf16() -> bool:
    """`cpu_has_native_bf16` of this machine, read from /proc/cpuinfo once per process."""
    return cpu_has_native_bf16()


_bf16_warned: set[str] = set()


def cpu_bf16_allowed(option: str, native_bf16: bool | None = None, *, warn_once: bool = False) -> bool:
    """Whether a request for bf16 autocast on the CPU (the setting named ``option``) is honoured.

    Only on a CPU with bf16 instructions (``native_bf16``, default: this machine's); elsewhere bf16 is
    emulated (~11x slower than fp32, see `cpu_has_native_bf16`), so the request is ignored with a warning
    naming ``option``: every call, or once per process and option with ``warn_once`` (per-step callers).
    """
    native = this_cpu_has_native_bf16() if native_bf16 is None else native_bf16
    if not native and not (warn_once and option in _bf16_warned):
        logger.warning("%s=True ignored: this CPU has no bf16 instructions (avx512_bf16 / amx_bf16), where bf16 "
                       "autocast is emulated (UniSID training measured ~11x slower than fp32); running in fp32", option)
        _bf16_warned.add(option)
    return native


def environment_tags() -> dict[str, str]:
    """What a same-seed result depends on besides the seed, as MLflow tags of every run.

    Same seed -> same SIDs is promised on one machine kind: torch picks its CPU kernels by instruction
    set (DEFAULT / AVX2 / AVX512), whose float sums round differently. On one AVX512 EPYC, forcing the
    AVX2 kernels (ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2) changed the Beauty title embeddings in their
    last bits and gave a different RQ-VAE table for the same seed (BENCHMARKS.md, Determinism). These
    tags record which case a run is.
    """
    return {
        "unisid.torch": torch.__version__,
        "unisid.numpy": np.__version__,
        "unisid.cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "unisid.torch_cuda": torch.version.cuda or "none",  # the build's CUDA; asking for the device would initialise it
    }
