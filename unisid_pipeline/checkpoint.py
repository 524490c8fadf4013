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


TENSORS_FILE, STRUCTURE_FILE = "weights.safetensors", "checkpoint.json"


def save_checkpoint_dir(checkpoint: dict[str, Any], directory: Path) -> None:
    """Write a model's `to_checkpoint()` dict without pickle: its tensors (and numpy arrays) into one
    safetensors file, everything else (configs, ids, bytes as base64) into JSON that points at them.
    `load_checkpoint_dir` gives the same dict back; nothing in either file can run code when loaded."""
    import base64
    import json

    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}

    def walk(obj: Any, key: str) -> Any:
        if isinstance(obj, torch.Tensor):
            tensors[key] = obj.detach().cpu().contiguous().clone()
            return {"__tensor__": key}
        if isinstance(obj, np.ndarray):
            tensors[key] = torch.from_numpy(np.ascontiguousarray(obj)).clone()
            return {"__ndarray__": key}
        if isinstance(obj, bytes):
            return {"__bytes__": base64.b64encode(obj).decode("ascii")}
        if isinstance(obj, dict):
            return {"__dict__": [[k, walk(v, f"{key}/{k}")] for k, v in obj.items()]}
        if isinstance(obj, (list, tuple)):
            return [walk(v, f"{key}/{i}") for i, v in enumerate(obj)]
        if isinstance(obj, (str, int, float, bool)) or obj is None:
            return obj
        raise TypeError(f"cannot store {type(obj).__name__} at {key!r} without pickle")

    structure = walk(checkpoint, "")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / TENSORS_FILE))
    (directory / STRUCTURE_FILE).write_text(json.dumps(structure))


def load_checkpoint_dir(directory: Path) -> dict[str, Any]:
    """The dict `save_checkpoint_dir` wrote (tensors on the CPU)."""
    import base64
    import json

    from safetensors.torch import load_file

    directory = Path(directory)
    tensors = load_file(str(directory / TENSORS_FILE))

    def build(obj: Any) -> Any:
        if isinstance(obj, dict):
            if "__tensor__" in obj:
                return tensors[obj["__tensor__"]]
            if "__ndarray__" in obj:
                return tensors[obj["__ndarray__"]].numpy()
            if "__bytes__" in obj:
                return base64.b64decode(obj["__bytes__"])
            return {k: build(v) for k, v in obj["__dict__"]}
        if isinstance(obj, list):
            return [build(v) for v in obj]
        return obj

    return build(json.loads((directory / STRUCTURE_FILE).read_text()))
