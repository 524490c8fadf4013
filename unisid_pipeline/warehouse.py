"""The DuckDB warehouse: one embedded file under the project home; atomic table writes.

Also an object store for non-table values (trained tokenizers, recommender results), written atomically without
pickle (`checkpoint.dumps_object`: safetensors + JSON, a type tag checked on load; a pickle is refused unread).
Used by the Dagster IO manager and directly by notebooks, benchmarks and tests.
"""
from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import duckdb
import polars as pl

from unisid_pipeline.files import (  # noqa: F401  (re-exported: callers import them from here too)
    DiskFullError,
    atomic_write_bytes,
    disk_full_error,
    is_no_space,
    remove_dead_temps,
)

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HOLDER = re.compile(r"Conflicting lock is held in (.*?)(?:\. See|$)", re.S)


class WarehouseLockedError(RuntimeError):
    """The DuckDB file is held by another process."""


class TableShrinkError(RuntimeError):
    """A write that would replace a non-empty table with an empty one or one under half its rows (refused)."""

    def __init__(self, message: str, name: str, old_rows: int, new_rows: int):
        super().__init__(message)
        self.name, self.old_rows, self.new_rows = name, old_rows, new_rows


DEFAULT_LOCK_TIMEOUT_S = 20.0


def __getattr__(name: str):
    if name == "UnsafeObjectError":  # lives with the object codec; imported lazily (torch) like read_object does
        from unisid_pipeline.checkpoint import UnsafeObjectError

        return UnsafeObjectError
    raise AttributeError(name)


def table_name(parts: list[str] | tuple[str, ...]) -> str:
    name = "__".join(parts)
    if not _IDENT.match(name):
        raise ValueError(f"invalid table name {name!r}: use letters, digits and underscores")
    return name


def create_database(path: Path) -> None:
    """Create an empty DuckDB file at `path`, whole or not at all.

    DuckDB writes a new file's headers in several writes; a process killed between them leaves a file that no
    connection can open again (seen once in a fresh-clone test run, 2026-12-03: "Could not read enough bytes ...
    from location 8192"). So the file is made at `<name>.tmp<pid>` and hard-linked into place; the link fails,
    keeping the other one, when another process created `path` meanwhile. Temp files of killed processes are
    removed first.
    """
    path = Path(path)
    remove_dead_temps(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        duckdb.connect(str(tmp)).close()  # closing checkpoints: the file is complete, no .wal beside it
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def open_connection(path: Path, read_only: bool = False,
                    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> duckdb.DuckDBPyConnection:
    """Open a DuckDB file (created first, atomically, when it does not exist: `create_database`), retrying while
    another process holds its lock, then raising WarehouseLockedError naming the holder (program and PID, as
    DuckDB reports it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        create_database(path)
    deadline = time.monotonic() + lock_timeout_s
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only)
            break
        except duckdb.IOException as exc:
            msg = str(exc)
            if "lock" not in msg.lower():
                raise
            if time.monotonic() >= deadline:
                m = _HOLDER.search(msg)
                holder = m.group(1).strip() if m else "another process"
                raise WarehouseLockedError(
                    f"DuckDB file {path} is locked by {holder}. Stop that process (a notebook, a "
                    f"second dagster run, the duckdb CLI) or wait for it to finish, then re-run."
                ) from exc
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    return con


@contextlib.contextmanager
def connect(path: Path, read_only: bool = False,
            lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the warehouse (see `open_connection`) for the duration of a `with` block."""
    con = open_connection(path, read_only, lock_timeout_s)
    try:
        yield con
    finally:
        con.close()


def shrinks(old_rows: int, new_rows: int) -> bool:
    """Whether replacing a table of `old_rows` by one of `new_rows` is a suspicious shrink: a non-empty table
    emptied, or cut to fewer than half its rows."""
    return old_rows > 0 and new_rows * 2 < old_rows


def write_table(path: Path, name: str, frame: pl.DataFrame, lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
                guard_shrink: bool = False, shrink_fix: str = "", keep_previous: str = "",
                also: Mapping[str, pl.DataFrame] | None = None) -> None:
    """Replace table `name` with `frame` in one transaction: readers see the old or the new table, never half.

    guard_shrink: refuse (TableShrinkError naming the table, both row counts and `shrink_fix`) to replace a
    non-empty table with an empty one or one of fewer than half its rows; the old table stays.
    keep_previous: copy the stored `name` (when there is one) to this table first; `also`: more tables
    {name: frame} replaced too. All in the same transaction, so a process killed at any point leaves either all
    of them or none of them replaced (a previous version is never lost between two writes).
    Raises WarehouseLockedError when another process holds the file, DiskFullError when the disk is full
    (the old table is then intact).
    """
    also = dict(also or {})
    for table in (name, *([keep_previous] if keep_previous else []), *also):
        if not _IDENT.match(table):
            raise ValueError(f"invalid table name {table!r}")
    arrow = frame.to_arrow()
    extra = {f"__also_{i}": (table, other.to_arrow()) for i, (table, other) in enumerate(also.items())}
    try:
        with connect(path, lock_timeout_s=lock_timeout_s) as con:
            con.register("__incoming", arrow)
            for view, (_, data) in extra.items():
                con.register(view, data)
            con.execute("BEGIN TRANSACTION")
            try:
                if guard_shrink:  # counted inside the transaction that replaces it: no other writer in between
                    exists = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?",
                                         [name]).fetchone()[0]
                    old = con.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0] if exists else 0
                    if shrinks(old, frame.height):
                        raise TableShrinkError(
                            f"refusing to replace table {name!r} ({old:,} rows) with {frame.height:,} rows in {path}: "
                            f"{'an empty table' if not frame.height else 'fewer than half its rows'} usually means a "
                            f"broken or truncated source; the previous table is kept. {shrink_fix}".rstrip(),
                            name, old, frame.height)
                if keep_previous and con.execute("SELECT count(*) FROM information_schema.tables WHERE "
                                                 "table_name = ?", [name]).fetchone()[0]:
                    con.execute(f'CREATE OR REPLACE TABLE "{keep_previous}" AS SELECT * FROM "{name}"')
                for view, (table, _) in extra.items():
                    con.execute(f'CREATE OR REPLACE TABLE "{table}" AS SELECT * FROM {view}')
                con.execute(f'CREATE OR REPLACE TABLE "{name}" AS SELECT * FROM __incoming')
                con.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(duckdb.Error):  # a failed write may already have ended the transaction
                    con.execute("ROLLBACK")
                raise
            finally:
                for view in ("__incoming", *extra):
                    with contextlib.suppress(duckdb.Error):
                        con.unregister(view)
    except (duckdb.Error, OSError) as exc:
        if is_no_space(exc):
            raise disk_full_error(Path(path), f"table {name!r}", exc) from exc
        raise


def has_table(path: Path, name: str, lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> bool:
    if not Path(path).exists():
        return False
    with connect(path, read_only=True, lock_timeout_s=lock_timeout_s) as con:
        return bool(con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]).fetchone()[0])


def read_table(path: Path, name: str, lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> pl.DataFrame:
    if not has_table(path, name, lock_timeout_s):
        raise KeyError(f"table {name!r} not found in {path}; materialize the asset {name!r} first")
    with connect(path, read_only=True, lock_timeout_s=lock_timeout_s) as con:
        return con.execute(f'SELECT * FROM "{name}"').pl()


def list_tables(path: Path) -> list[str]:
    if not Path(path).exists():
        return []
    with connect(path, read_only=True) as con:
        return [r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables ORDER BY table_name").fetchall()]


def write_object(path: Path, obj: object) -> None:
    """Store `obj` at `path` atomically, without pickle (TypeError naming what cannot be stored that way)."""
    from unisid_pipeline.checkpoint import dumps_object

    atomic_write_bytes(path, dumps_object(obj))


def read_object(path: Path) -> object:
    """The object `write_object` stored; any other file (a pickle above all) raises UnsafeObjectError, unloaded."""
    from unisid_pipeline.artifacts import TrainedTokenizer, state_fingerprint
    from unisid_pipeline.checkpoint import UnsafeObjectError, loads_object

    obj = loads_object(Path(path).read_bytes(), where=f"object file {path}")
    if isinstance(obj, TrainedTokenizer) and obj.weights:  # the weights are the ones it was stored with
        found = state_fingerprint(obj.model)
        if found != obj.weights:
            raise UnsafeObjectError(
                f"object file {path}: the {obj.method} tokenizer's weights (sha256 {found[:12]}) are not the ones it was "
                f"stored with ({obj.weights[:12]}): the file was changed after it was written. Re-materialize that asset")
    return obj
