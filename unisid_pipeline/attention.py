"""Which scaled-dot-product attention kernels the models may use on a GPU."""
from __future__ import annotations

import contextlib


def attention_kernels() -> contextlib.AbstractContextManager:
    """Every SDPA kernel but cuDNN's, for the block inside this context.

    On Hopper, PyTorch sends padded (masked) attention to the cuDNN backend, which spent ~40 ms of host time per
    call on an H100: UniSID's training step at batch 512 took 0.45 s instead of 0.10 s (`bench/profile_unisid.py
    --sdp`), and the recommender's constrained beam search ranked 883-4,528 users/s with it against 6,419
    without, at batch 512 (`bench/profile_recommender.py`, BENCHMARKS.md). Flash and memory-efficient kernels
    (and the CPU's) compute the same attention. The recommender's compiled training step keeps PyTorch's own
    choice: there cuDNN's kernel was the fastest (14.7 against 16.1 ms per step at batch 1024).
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
