"""The DuckDB warehouse: one embedded file under the project home; atomic table writes.

Also an object store for non-table values (trained tokenizers), written atomically as pickles.
Used by the Dagster IO manager and directly by notebooks, benchmarks and tests.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import polars as pl

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HOLDER = re.compile(r"Conflicting lock is held in (.*?)(?:\. See|$)", re.S)


class WarehouseLockedError(RuntimeError):
    """The DuckDB file is held by another process."""


def table_name(parts: list[str] | tuple[str, ...]) -> str:
    name = "__".join(parts)
    if not _IDENT.match(name):
        raise ValueError(f"invalid table name {name!r}: use letters, digits and underscores")
    return name


@contextlib.contextmanager
def connect(path: Path, read_only: bool = False, lock_timeout_s: float = 20.0) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the warehouse, retrying while another process holds the lock, then failing clearly."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + lock_timeout_s
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only and path.exists())
            break
        except duckdb.IOException as exc:
            msg = str(exc)
            if "lock" not in msg.lower():
                raise
            if time.monotonic() >= deadline:
                m = _HOLDER.search(msg)
                holder = m.group(1).strip() if m else "another process"
                raise WarehouseLockedError(
                    f"DuckDB warehouse {path} is locked by {holder}. Stop that process (a notebook, a "
                    f"second dagster run, the duckdb CLI) or wait for it to finish, then re-run."
                ) from exc
            time.sleep(0.5)
    try:
        yield con
    finally:
        con.close()


def write_table(path: Path, name: str, frame: pl.DataFrame) -> None:
    """Replace table `name` with `frame` in one transaction: readers see the old or the new table, never half."""
    if not _IDENT.match(name):
        raise ValueError(f"invalid table name {name!r}")
    arrow = frame.to_arrow()
    with connect(path) as con:
        con.register("__incoming", arrow)
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(f'CREATE OR REPLACE TABLE "{name}" AS SELECT * FROM __incoming')
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        finally:
            con.unregister("__incoming")


def has_table(path: Path, name: str) -> bool:
    if not Path(path).exists():
        return False
    with connect(path, read_only=True) as con:
        return bool(con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]).fetchone()[0])


def read_table(path: Path, name: str) -> pl.DataFrame:
    if not has_table(path, name):
        raise KeyError(f"table {name!r} not found in {path}; materialize the asset {name!r} first")
    with connect(path, read_only=True) as con:
        return con.execute(f'SELECT * FROM "{name}"').pl()


def list_tables(path: Path) -> list[str]:
    if not Path(path).exists():
        return []
    with connect(path, read_only=True) as con:
        return [r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables ORDER BY table_name").fetchall()]


def atomic_write_bytes(target: Path, data: bytes) -> None:
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_object(path: Path, obj: object) -> None:
    atomic_write_bytes(path, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def read_object(path: Path) -> object:
    with open(path, "rb") as fh:
        return pickle.load(fh)
