"""What both training entry points share: arguments, logging, atomic outputs, and the optional Dagster Pipes
channel (dagster-pipes only; rank 0 only)."""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any


from unisid_pipeline import distributed

logger = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"  # warehouse.write_object: safetensors + JSON, never a pickle
HISTORY_FILE = "history.json"
SUMMARY_FILE = "summary.json"


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", required=True, type=Path, help="run config JSON (see the module docstring)")
    p.add_argument("--out", required=True, type=Path, help="output folder (rank 0 writes model.pt, history.json, summary.json)")
    return p


def read_config(path: Path, required: tuple[str, ...]) -> dict[str, Any]:
    """The run config JSON: fail clearly on a missing file, bad JSON or a missing key."""
    if not path.is_file():
        raise ValueError(f"--config {path} does not exist: write the run config JSON first")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"--config {path} is not valid JSON (line {exc.lineno}): {exc.msg}") from exc
    if not isinstance(cfg, dict):
        raise ValueError(f"--config {path} must hold a JSON object")
    missing = [k for k in required if k not in cfg]
    if missing:
        raise ValueError(f"--config {path} lacks the keys {missing}")
    return cfg


def read_parquet(path: Path | None, what: str):
    import polars as pl

    if path is None:
        return None
    if not Path(path).is_file():
        raise ValueError(f"{what} file {path} does not exist")
    return pl.read_parquet(path)


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None  # NaN (a switched-off loss) -> null: strict JSON
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if hasattr(v, "item") and callable(v.item):
        return _jsonable(v.item())
    return v


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(_jsonable(obj), indent=1))
    os.replace(tmp, path)


def write_model(path: Path, model: Any) -> None:
    """The trained model for the parent process, without pickle (`warehouse.write_object`; read it back with
    `warehouse.read_object`, which refuses anything else unread)."""
    from unisid_pipeline.warehouse import write_object

    write_object(path, model)


class Reporter:
    """Progress of rank 0: Python logging, plus Dagster Pipes (logs, custom messages, the final
    materialization metadata) when this process was started by a Pipes client. Other ranks only log."""

    def __init__(self, pipes: Any = None) -> None:
        self.pipes = pipes

    def info(self, msg: str) -> None:
        logger.info(msg)
        if self.pipes is not None:
            self.pipes.log.info(msg)

    def message(self, payload: Mapping[str, Any]) -> None:
        if self.pipes is not None:
            self.pipes.report_custom_message(_jsonable(dict(payload)))

    def materialization(self, metadata: Mapping[str, Any]) -> None:
        if self.pipes is not None:
            self.pipes.report_asset_materialization(metadata=_jsonable(dict(metadata)))


@contextmanager
def reporter(is_main: bool) -> Iterator[Reporter]:
    """A Reporter; on rank 0 of a Pipes-launched run it holds the open dagster-pipes context."""
    if is_main and os.environ.get("DAGSTER_PIPES_CONTEXT"):
        from dagster_pipes import open_dagster_pipes  # the external-process side only: never dagster

        with open_dagster_pipes() as pipes:
            yield Reporter(pipes)
    else:
        yield Reporter(None)


def every(seconds: float) -> Callable[[], bool]:
    """A clock that says True at most once per `seconds` (throttles progress lines)."""
    import time

    last = [-math.inf]

    def due() -> bool:
        now = time.monotonic()
        if now - last[0] >= seconds:
            last[0] = now
            return True
        return False

    return due


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> None:
    """Log to stderr with the rank in each line, run `main` inside a distributed session, exit with its code."""
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s")
    with distributed.session():
        code = main(argv)
    sys.exit(code)
