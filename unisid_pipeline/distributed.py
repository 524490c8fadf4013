"""Data-parallel training under `torchrun` (torch DDP), shared by the UniSID and recommender trainers.

`torchrun --nproc_per_node=N` starts N processes and sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT in each. `DistContext.from_env(device)` reads them, joins the process
group (nccl on CUDA, gloo on the CPU) and pins each rank to its device (cuda:LOCAL_RANK). Without
WORLD_SIZE, or with WORLD_SIZE=1, it is the single-process context and every method is a no-op
(the model is not wrapped, nothing is reduced, one shard holds everything), so single-process
training is bit-for-bit what it was without this module.

Conventions the trainers follow:
- Every rank builds the same seeded epoch permutation and takes its own share of it (as
  torch's DistributedSampler does), so no data is exchanged and the split is reproducible.
- The model is wrapped in DistributedDataParallel: gradients are averaged over ranks in backward;
  parameters and buffers start from rank 0's copy.
- Logged numbers (losses, counts, validation metrics) are all-reduced, so every rank holds the
  global value and takes the same decisions (early stopping, best epoch).
- Only rank 0 (`is_main`) writes checkpoints and outputs and calls progress callbacks.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

logger = logging.getLogger(__name__)

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def _env_int(name: str, default: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        if default is None:
            raise ValueError(f"{name} is not set: start the distributed run with torchrun (it sets RANK, WORLD_SIZE "
                             "and LOCAL_RANK), or unset WORLD_SIZE for a single process")
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name}={raw!r} is not an integer (torchrun sets it; check your launcher)") from exc


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a data-parallel run: rank, world_size, local_rank, device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        """True when more than one process trains (DDP is on)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes checkpoints/outputs and reports progress."""
        return self.rank == 0

    # ------------------------------------------------------------------ set-up
    @classmethod
    def from_env(cls, device: torch.device) -> "DistContext":
        """The context of this process, from torchrun's environment; joins the process group once.

        device: the trainer's resolved device. Under DDP a CUDA device becomes cuda:LOCAL_RANK (one
        GPU per process); an explicit other index is an error, since every rank would share it.
        """
        world = _env_int("WORLD_SIZE", 1)
        if world < 1:
            raise ValueError(f"WORLD_SIZE={world} must be >= 1")
        if world == 1:
            return cls(device=device)
        rank, local_rank = _env_int("RANK"), _env_int("LOCAL_RANK")
        if not 0 <= rank < world:
            raise ValueError(f"RANK={rank} is outside [0, WORLD_SIZE={world})")
        if device.type == "cuda":
            if device.index is not None and device.index != local_rank:
                raise ValueError(f"device {device} under torchrun: each rank uses cuda:LOCAL_RANK (here cuda:{local_rank}); "
                                 "pass device='cuda'")
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        elif device.type != "cpu":
            raise ValueError(f"distributed training supports 'cpu' (gloo) and 'cuda' (nccl), not {device.type!r}")
        backend = "nccl" if device.type == "cuda" else "gloo"
        if dist.is_initialized():
            if dist.get_world_size() != world or dist.get_rank() != rank:
                raise ValueError("a process group of another size/rank is already initialised in this process")
        else:
            dist.init_process_group(backend=backend, rank=rank, world_size=world, timeout=timedelta(minutes=30))
            logger.info("joined the %s process group: rank %d of %d (local rank %d), device %s",
                        backend, rank, world, local_rank, device)
        return cls(rank=rank, world_size=world, local_rank=local_rank, device=device)

    # ------------------------------------------------------------------ model
    def wrap(self, module: nn.Module, find_unused_parameters: bool = False) -> nn.Module:
        """DistributedDataParallel(module) under DDP, else module itself.

        find_unused_parameters: set when some parameters may get no gradient in a step (switched-off
        losses, a pooler the loss never reads); DDP then marks them ready instead of waiting.
        """
        if not self.enabled:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused_parameters)

    @staticmethod
    def no_sync(module: nn.Module, skip: bool) -> contextlib.AbstractContextManager:
        """Inside: backward accumulates local gradients without the all-reduce (gradient accumulation
        under DDP reduces once, on the last micro-batch). A no-op for an unwrapped module or skip=False."""
        if skip and isinstance(module, nn.parallel.DistributedDataParallel):
            return module.no_sync()
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ data
    def shard(self, n: int) -> tuple[int, int]:
        """[lo, hi) of this rank's contiguous share of n items; shares differ by at most one item and
        the first n % world_size ranks take the larger ones. (0, n) in a single process."""
        base, extra = divmod(n, self.world_size)
        lo = self.rank * base + min(self.rank, extra)
        return lo, lo + base + (1 if self.rank < extra else 0)

    # ------------------------------------------------------------------ reductions
    def all_reduce(self, values: Mapping[str, float], op: str = "sum") -> dict[str, float]:
        """Sum ("sum") or mean ("mean") of each value over ranks, in float64; every rank gets the
        result. Returns the values unchanged (as floats) in a single process."""
        if op not in ("sum", "mean"):
            raise ValueError(f"op must be 'sum' or 'mean', got {op!r}")
        keys = list(values)
        if not self.enabled:
            return {k: float(values[k]) for k in keys}
        # gloo and nccl both reduce float64 on their devices; NaN (a switched-off loss) stays NaN
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        if op == "mean":
            t /= self.world_size
        return dict(zip(keys, t.cpu().tolist()))

    def gather_rows(self, rows: np.ndarray) -> np.ndarray:
        """Every rank's array concatenated along axis 0 in rank order (each rank gets the whole);
        `rows` itself in a single process. With `shard`, rank r's rows are items [lo_r, hi_r)."""
        if not self.enabled:
            return rows
        parts: list[np.ndarray | None] = [None] * self.world_size
        dist.all_gather_object(parts, np.asarray(rows))
        return np.concatenate([np.asarray(p) for p in parts], axis=0)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def replica_fingerprints(self, module: nn.Module) -> list[str]:
        """sha256 of the module's state on every rank (rank order). Replicas that trained in sync give
        one value repeated world_size times; a single process gives one value."""
        h = hashlib.sha256()
        for k, v in module.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
        mine = h.hexdigest()
        if not self.enabled:
            return [mine]
        out: list[str | None] = [None] * self.world_size
        dist.all_gather_object(out, mine)
        return [str(x) for x in out]


def shutdown() -> None:
    """Leave the process group if this process joined one (the end of a torchrun entry point)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def session() -> Iterator[None]:
    """`with distributed.session(): ...` around a torchrun entry point: the group is destroyed at exit."""
    try:
        yield
    finally:
        shutdown()
