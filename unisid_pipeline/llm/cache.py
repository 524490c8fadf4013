"""A persistent, transactional summary cache in DuckDB, keyed by (content_hash, model_id, prompt_version).

`summarize_ads` writes each finished chunk here at once, so a run killed half-way resumes from the
cache; `export_parquet` / `import_parquet` move a cache between machines (e.g. summaries computed on
a GPU box, then reused on a laptop). Also holds `local_model_id`, the stable cache-key name of a local
model folder or GGUF file (shared with the embedding cache).
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from unisid_pipeline.warehouse import disk_full_error, is_no_space, open_connection

logger = logging.getLogger(__name__)

CacheKey = tuple[str, str, str]  # (content_hash, model_id, prompt_version)

SUMMARY_CACHE_COLUMNS: dict[str, pl.DataType] = {
    "content_hash": pl.Utf8,
    "model_id": pl.Utf8,
    "prompt_version": pl.Utf8,
    "summary": pl.Utf8,
    "backend": pl.Utf8,
    "created_at": pl.Datetime("us", "UTC"),
}
_KEY_COLUMNS = ("content_hash", "model_id", "prompt_version")

_CREATE_SQL = """
CREATE TABLE IF NOT EXISTS summary_cache (
    content_hash   VARCHAR NOT NULL,
    model_id       VARCHAR NOT NULL,
    prompt_version VARCHAR NOT NULL,
    summary        VARCHAR NOT NULL,
    backend        VARCHAR NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (content_hash, model_id, prompt_version)
)
"""


def connect(con: duckdb.DuckDBPyConnection | str | Path) -> duckdb.DuckDBPyConnection:
    """A connection as given, or a new one to the database file `con` (":memory:" works too)."""
    if isinstance(con, duckdb.DuckDBPyConnection):
        return con
    if isinstance(con, (str, Path)):
        path = str(con)
        if path == ":memory:":
            return duckdb.connect(path)
        return open_connection(Path(path))  # lock retries, then an error naming the holder
    raise TypeError(f"expected a duckdb connection or a database path, got {type(con).__name__}")


def run_in_transaction(con: duckdb.DuckDBPyConnection, fn) -> Any:
    """Run `fn()` inside BEGIN/COMMIT; roll back and re-raise on any error (all or nothing).

    A full disk raises `warehouse.DiskFullError` naming the database file (earlier commits stay intact).
    """
    try:
        con.execute("BEGIN TRANSACTION")
        try:
            result = fn()
        except BaseException:
            with contextlib.suppress(duckdb.Error):  # a failed write may already have ended the transaction
                con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
    except (duckdb.Error, OSError) as exc:
        if is_no_space(exc):
            raise disk_full_error(_database_path(con), "cache rows", exc) from exc
        raise
    return result


def _database_path(con: duckdb.DuckDBPyConnection) -> Path:
    try:
        row = con.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()").fetchone()
    except duckdb.Error:
        row = None
    return Path(row[0] if row and row[0] else ":memory:")


class SummaryCache:
    """Summaries keyed by (content_hash, model_id, prompt_version) in table `summary_cache`."""

    table = "summary_cache"

    def __init__(self, con: duckdb.DuckDBPyConnection | str | Path) -> None:
        self.con = connect(con)
        self.con.execute(_CREATE_SQL)

    def __len__(self) -> int:
        return int(self.con.execute("SELECT count(*) FROM summary_cache").fetchone()[0])

    def get_many(self, keys: Iterable[CacheKey]) -> dict[CacheKey, dict[str, str]]:
        """{key: {"summary": ..., "backend": ...}} for the keys present; absent keys are left out."""
        keys = list(dict.fromkeys(tuple(k) for k in keys))
        if not keys:
            return {}
        frame = pl.DataFrame(
            {name: [k[i] for k in keys] for i, name in enumerate(_KEY_COLUMNS)},
            schema={name: pl.Utf8 for name in _KEY_COLUMNS},
        )
        self.con.register("_summary_keys", frame.to_arrow())
        try:
            rows = self.con.execute(
                "SELECT c.content_hash, c.model_id, c.prompt_version, c.summary, c.backend "
                "FROM summary_cache c JOIN _summary_keys k USING (content_hash, model_id, prompt_version)"
            ).fetchall()
        finally:
            self.con.unregister("_summary_keys")
        return {(h, m, p): {"summary": s, "backend": b} for h, m, p, s, b in rows}

    def lookup(self, hashes: pl.Series, model_id: str, prompt_version: str) -> pl.DataFrame:
        """content_hash, summary of the given hashes cached under (model_id, prompt_version): one DuckDB
        join, no per-key Python objects (the path for large catalogs; `get_many` is the dict form)."""
        keys = pl.DataFrame({"content_hash": hashes.cast(pl.Utf8)}).unique()
        self.con.register("_summary_lookup", keys.to_arrow())
        try:
            found = self.con.execute(
                "SELECT c.content_hash, c.summary FROM summary_cache c JOIN _summary_lookup k USING (content_hash) "
                "WHERE c.model_id = ? AND c.prompt_version = ?", [model_id, prompt_version],
            ).pl()
        finally:
            self.con.unregister("_summary_lookup")
        return found.cast({"content_hash": pl.Utf8, "summary": pl.Utf8}) if found.height else pl.DataFrame(
            schema={"content_hash": pl.Utf8, "summary": pl.Utf8})

    def put_many(self, rows: Iterable[Mapping[str, Any]] | pl.DataFrame) -> int:
        """Upsert rows (content_hash, model_id, prompt_version, summary, backend[, created_at]) in one transaction.

        Idempotent: putting the same rows again leaves the table unchanged (created_at of an existing
        key is kept unless its summary or backend changed). Returns the number of rows given.
        """
        frame = self._to_frame(rows)
        if frame.height == 0:
            return 0
        self.con.register("_summary_new", frame.to_arrow())
        try:
            run_in_transaction(
                self.con,
                lambda: self.con.execute(
                    "INSERT INTO summary_cache "
                    "SELECT content_hash, model_id, prompt_version, summary, backend, created_at FROM _summary_new "
                    "ON CONFLICT (content_hash, model_id, prompt_version) DO UPDATE SET "
                    "summary = excluded.summary, backend = excluded.backend, "
                    "created_at = CASE WHEN summary_cache.summary = excluded.summary "
                    "AND summary_cache.backend = excluded.backend "
                    "THEN summary_cache.created_at ELSE excluded.created_at END"
                ),
            )
        finally:
            self.con.unregister("_summary_new")
        return frame.height

    def to_frame(self) -> pl.DataFrame:
        """The whole cache as a polars frame, sorted by key (stable order for exports and diffs)."""
        frame = self.con.execute(
            "SELECT content_hash, model_id, prompt_version, summary, backend, created_at "
            "FROM summary_cache ORDER BY content_hash, model_id, prompt_version"
        ).pl()
        return frame.cast(SUMMARY_CACHE_COLUMNS) if frame.height else pl.DataFrame(schema=SUMMARY_CACHE_COLUMNS)

    def export_parquet(self, path: str | Path) -> int:
        """Write the whole cache to one parquet file; returns the number of rows written."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        frame = self.to_frame()
        frame.write_parquet(path)
        logger.info("exported %d cached summaries to %s", frame.height, path)
        return frame.height

    def import_parquet(self, path: str | Path) -> int:
        """Upsert every row of a parquet file written by `export_parquet`; returns the rows read.

        Idempotent: importing the same file twice gives the same table.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"summary cache export {path} does not exist; write one with SummaryCache.export_parquet")
        frame = pl.read_parquet(path)
        missing = [c for c in SUMMARY_CACHE_COLUMNS if c not in frame.columns and c != "created_at"]
        if missing:
            raise ValueError(f"{path} is not a summary-cache export: missing columns {missing}")
        before = len(self)
        n = self.put_many(frame)
        logger.info("imported %d cached summaries from %s (%d new)", n, path, len(self) - before)
        return n

    @staticmethod
    def _to_frame(rows: Iterable[Mapping[str, Any]] | pl.DataFrame) -> pl.DataFrame:
        if isinstance(rows, pl.DataFrame):
            frame = rows
        else:
            rows = list(rows)
            if not rows:
                return pl.DataFrame(schema=SUMMARY_CACHE_COLUMNS)
            frame = pl.DataFrame([dict(r) for r in rows], infer_schema_length=None)
        required = [c for c in SUMMARY_CACHE_COLUMNS if c != "created_at"]
        missing = [c for c in required if c not in frame.columns]
        if missing:
            raise ValueError(f"summary cache rows need columns {required}; missing {missing}")
        if "created_at" not in frame.columns:
            frame = frame.with_columns(pl.lit(datetime.now(timezone.utc)).alias("created_at"))
        frame = frame.select(list(SUMMARY_CACHE_COLUMNS)).cast(SUMMARY_CACHE_COLUMNS)
        nulls = [c for c in required if frame[c].null_count()]
        if nulls:
            raise ValueError(f"summary cache rows have nulls in {nulls}; every field except created_at is required")
        # ON CONFLICT DO UPDATE cannot touch one key twice in one statement: keep the last row per key.
        return frame.unique(subset=list(_KEY_COLUMNS), keep="last", maintain_order=True)


def _file_digest(h: "hashlib._Hash", path: Path, head_bytes: int = 1 << 20) -> None:
    size = path.stat().st_size
    h.update(f"{path.name}:{size}:".encode())
    with path.open("rb") as f:
        h.update(f.read(head_bytes))
        if size > 2 * head_bytes:
            f.seek(size - head_bytes)
            h.update(f.read(head_bytes))


def local_model_id(model_dir: str | Path, gguf_file: str | None = None) -> str:
    """A stable, machine-independent id of a local model: `<name>@<8-hex fingerprint>`.

    name: the GGUF file stem, else the folder name (its parent's when the folder is called "model").
    fingerprint: sha256 of config/tokenizer files and the size + first/last MiB of each weight file,
    so two different models in folders of the same name get different cache keys.
    """
    model_dir = Path(model_dir)
    h = hashlib.sha256()
    if gguf_file is not None:
        path = model_dir / gguf_file
        name = Path(gguf_file).stem
        _file_digest(h, path)
    else:
        name = model_dir.name if model_dir.name not in {"model", "models", ""} else model_dir.parent.name
        for path in sorted(model_dir.iterdir()):
            if path.suffix in {".json", ".txt", ".model"} and path.name != "README.md":
                h.update(path.name.encode())
                h.update(path.read_bytes())
            elif path.suffix in {".safetensors", ".bin", ".pt", ".gguf"}:
                _file_digest(h, path)
    return f"{name}@{h.hexdigest()[:8]}"
