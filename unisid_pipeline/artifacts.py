"""A trained tokenizer as the pipeline hands it on: the model plus who made it and its version."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch


def state_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over the model's state dict (names, shapes, dtypes and bytes): equal weights -> equal id."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def behaviour_fingerprint(recipe: dict[str, Any], codes: Any) -> str:
    """sha256 of the training recipe (method, config, seed, data hash) and the codes the model gives.

    Weights alone are a poor identity: multi-threaded CPU reductions change them in the 7th digit
    run to run while every SID stays the same. Two models with the same recipe that emit the same
    codes are the same tokenizer; anything else is a new one.
    """
    import json

    import numpy as np

    h = hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode())
    arr = np.ascontiguousarray(np.asarray(codes, dtype=np.int64))
    h.update(str(arr.shape).encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def array_fingerprint(*arrays: Any) -> str:
    """sha256 of arrays' shapes and bytes (a training-data identity)."""
    import numpy as np

    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


@dataclass
class TrainedTokenizer:
    """What a tokenizer asset stores: the torch model, its method, fingerprint and registry version.

    `fingerprint` is `behaviour_fingerprint` (recipe + codes), `weights` the `state_fingerprint`.
    """

    method: str
    model: torch.nn.Module
    fingerprint: str
    weights: str = ""
    registered_name: str | None = None
    registered_version: str | None = None
    history: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def version(self) -> str:
        if self.registered_name and self.registered_version:
            return f"{self.registered_name}/{self.registered_version}"
        return f"{self.method}@{self.fingerprint[:12]}"
