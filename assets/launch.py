"""How a training asset launches its trainer: in this process, or as an external torchrun job through
Dagster Pipes (`PipesSubprocessClient` here; `PipesK8sClient` on a cluster, see docs/DISTRIBUTED.md).

The external side is a `unisid_pipeline.cli` entry point: it reads parquet inputs and a run-config
JSON from a work folder, trains (DDP when nproc > 1), writes model.safetensors / history.json / summary.json
to `<work>/out`, and reports logs and a materialization back through dagster-pipes.
"""
from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any, Literal

from dagster import AssetExecutionContext, PipesSubprocessClient

Launcher = Literal["in_process", "pipes_subprocess"]


def torchrun_command(module: str, nproc: int, args: list[str]) -> list[str]:
    """`python -m torch.distributed.run --standalone --nproc_per_node=N -m module args...` (one node; the
    standalone rendezvous picks a free local port)."""
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", module, *args]


def check_launcher(launcher: str, nproc: int) -> None:
    if launcher not in ("in_process", "pipes_subprocess"):
        raise ValueError(f"launcher must be 'in_process' or 'pipes_subprocess', got {launcher!r}")
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    if launcher == "in_process" and nproc != 1:
        raise ValueError(f"nproc={nproc} needs launcher='pipes_subprocess' (in_process trains in one process)")


def run_pipes(context: AssetExecutionContext, client: PipesSubprocessClient, command: list[str],
              extras: dict[str, Any]) -> dict[str, Any]:
    """Run `command` in a Pipes session; the metadata its materialization reported, keys prefixed 'pipes_'."""
    context.log.info("launching: " + " ".join(command))
    invocation = client.run(context=context, command=command, extras=extras)
    result = invocation.get_materialize_result()
    return {f"pipes_{k}": v for k, v in (result.metadata or {}).items()}


def fresh_dir(path: Path) -> Path:
    """An empty folder at path (an earlier attempt's leftovers are removed, so stale outputs are never read)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def read_history(path: Path) -> Any:
    """history.json with JSON null (NaN in the trainer, strict JSON on disk) turned back into NaN."""
    def fix(v: Any) -> Any:
        if v is None:
            return math.nan
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v

    return fix(json.loads(path.read_text()))
