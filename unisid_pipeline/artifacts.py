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


@dataclass
class TrainedTokenizer:
    """What a tokenizer asset stores: the torch model, its method, fingerprint and registry version."""

    method: str
    model: torch.nn.Module
    fingerprint: str
    registered_name: str | None = None
    registered_version: str | None = None
    history: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def version(self) -> str:
        if self.registered_name and self.registered_version:
            return f"{self.registered_name}/{self.registered_version}"
        return f"{self.method}@{self.fingerprint[:12]}"
