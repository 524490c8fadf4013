"""What every resumable training loop shares: atomic torch checkpoints and the global RNG state.

A checkpoint is written to `<name>.tmp<pid>` and renamed, so a run killed mid-write leaves the previous
checkpoint whole (`files.remove_dead_temps` cleans up the temp of a dead writer). The RNG state covers
torch (CPU and every CUDA device), numpy's and Python's global generators: restored, a resumed run draws
the same dropout masks and samples as an uninterrupted one.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unisid_pipeline.files import disk_full_error, is_no_space


def atomic_save(obj: Any, path: Path, what: str = "a training checkpoint") -> None:
    """torch.save `obj` to `path` through a temp file and a rename; a full disk raises DiskFullError."""
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if is_no_space(exc):
            raise disk_full_error(path, what, exc) from exc
        raise


def rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
