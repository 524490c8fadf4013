"""Exponential moving average (EMA) of a module's parameters, for evaluating averaged weights.

After each optimiser step ``update()`` moves a float32 shadow copy of every parameter towards the
current value: ``shadow <- shadow + (1 - d) * (param - shadow)`` with ``d = min(decay, (1 + n) / (10 + n))``
at the n-th update (the usual warm-up, so early shadows are not dominated by the random init).
``applied()`` puts the shadow values into the module's own parameter tensors in place (their storage
stays the same, so optimiser state, DDP buckets and CUDA graphs that hold them stay valid) and puts
the raw training values back when the block ends.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class ParameterEMA:
    """EMA of ``module``'s parameters with the given ``decay`` in (0, 1)."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay!r}")
        self.decay = float(decay)
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.shadow = [p.detach().to(torch.float32, copy=True) for p in self.params]
        self.updates = 0

    def current_decay(self) -> float:
        """The decay the next update uses."""
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        weight = 1.0 - self.current_decay()
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], weight)
        self.updates += 1

    def state_dict(self) -> dict:
        """The shadow values (on the CPU) and the update count, for a training checkpoint."""
        return {"shadow": [s.detach().cpu().clone() for s in self.shadow], "updates": self.updates}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError(f"EMA state of {len(state['shadow'])} tensors, this module has {len(self.shadow)}")
        for s, v in zip(self.shadow, state["shadow"]):
            s.copy_(v)
        self.updates = int(state["updates"])

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Within the block, the module's parameters hold the EMA values; afterwards, the training values."""
        with torch.no_grad():
            raw = [p.detach().clone() for p in self.params]
            for p, s in zip(self.params, self.shadow):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, r in zip(self.params, raw):
                    p.copy_(r)
