"""What a re-run changed in a keyed warehouse table (raw_ads), and the previous version kept one generation back.

When a table is replaced, `compare_with_stored` diffs the new frame against the stored one: which keys were added,
removed or changed, and which fields changed. `TableChange.replace` then writes, in ONE DuckDB transaction, the new
table, the diff as `<name>_changes` (key, change, fields) and, when anything changed, the old table as
`<name>_previous`, so that `CREATE OR REPLACE TABLE <name> AS SELECT * FROM <name>_previous` gets it back. A process
killed at any point leaves the old table or the new one with its previous version, never the new one alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from unisid_pipeline import warehouse

CHANGES_SUFFIX, PREVIOUS_SUFFIX = "_changes", "_previous"


def diff_tables(old: pl.DataFrame, new: pl.DataFrame, key: str) -> pl.DataFrame:
    """One row per key that differs: (key, change 'added' | 'removed' | 'changed', fields: the changed columns in
    the new table's order; empty for added / removed). Row order is no change; NaN equals NaN, null equals null;
    a column only one side has is a change of each row holding a value in it. Sorted by key."""
    cols = [c for c in dict.fromkeys([*new.columns, *old.columns]) if c != key]
    left = old.with_columns(pl.lit(True).alias("__in_old"))
    right = new.with_columns(pl.lit(True).alias("__in_new"))
    joined = left.join(right, on=key, how="full", coalesce=True, suffix="__new", nulls_equal=True)
    differs = []
    for c in cols:
        if c in old.columns and c in new.columns:
            expr = (pl.col(c).ne_missing(pl.col(f"{c}__new")) if old.schema[c] == new.schema[c]
                    else pl.col(c).cast(pl.Utf8, strict=False).ne_missing(pl.col(f"{c}__new").cast(pl.Utf8, strict=False))
                    if not isinstance(old.schema[c], (pl.List, pl.Struct, pl.Array)) else pl.lit(True))
        else:
            expr = pl.col(c).is_not_null()
        differs.append(pl.when(expr).then(pl.lit(c)).otherwise(pl.lit(None, dtype=pl.Utf8)))
    fields = (pl.concat_list(differs).list.drop_nulls() if differs else pl.lit([], dtype=pl.List(pl.Utf8)))
    both = pl.col("__in_old").fill_null(False) & pl.col("__in_new").fill_null(False)
    out = joined.select(
        pl.col(key),
        pl.when(~pl.col("__in_old").fill_null(False)).then(pl.lit("added"))
        .when(~pl.col("__in_new").fill_null(False)).then(pl.lit("removed"))
        .otherwise(pl.lit("changed")).alias("change"),
        pl.when(both).then(fields).otherwise(pl.lit([], dtype=pl.List(pl.Utf8))).alias("fields"),
    )
    return out.filter((pl.col("change") != "changed") | (pl.col("fields").list.len() > 0)).sort(key)


def summarize(changes: pl.DataFrame) -> dict[str, Any]:
    """Counts: added, removed, changed (keys), and per field how many changed keys it differs in."""
    counts = dict(changes.group_by("change").len().iter_rows())
    per_field = changes.select(pl.col("fields").explode()).drop_nulls().group_by("fields", maintain_order=True).len()
    return {"added": int(counts.get("added", 0)), "removed": int(counts.get("removed", 0)),
            "changed": int(counts.get("changed", 0)), "fields": dict(per_field.iter_rows())}


@dataclass
class TableChange:
    """The difference between a stored table and the frame about to replace it."""

    name: str
    old: pl.DataFrame
    changes: pl.DataFrame
    summary: dict[str, Any]
    db: Path

    @property
    def previous(self) -> str:
        return f"{self.name}{PREVIOUS_SUFFIX}"

    @property
    def recover_sql(self) -> str:
        return f"CREATE OR REPLACE TABLE {self.name} AS SELECT * FROM {self.previous}"

    @property
    def recover(self) -> str:
        """How a user gets the previous version back (the duckdb CLI; `python -c "import duckdb; ..."` does the same)."""
        return (f"table {self.previous} in {self.db} holds the version before the last change (one generation back); "
                f"to restore it (then re-materialize what reads {self.name}): duckdb {self.db} "
                f"\"{self.recover_sql}\"")

    def replace(self, new: pl.DataFrame, db: Path | None = None,
                lock_timeout_s: float = warehouse.DEFAULT_LOCK_TIMEOUT_S, guard_shrink: bool = False,
                shrink_fix: str = "") -> None:
        """Replace the stored table by `new` and record this change, in one transaction (`warehouse.write_table`):
        `<name>_changes` = this diff (empty when nothing changed); `<name>_previous` = the table being replaced,
        only when something changed (an unchanged re-run keeps the older generation there). A refused shrink or
        any failure leaves all three tables as they were."""
        warehouse.write_table(Path(db or self.db), self.name, new, lock_timeout_s=lock_timeout_s,
                              guard_shrink=guard_shrink, shrink_fix=shrink_fix,
                              keep_previous=self.previous if self.changes.height else "",
                              also={f"{self.name}{CHANGES_SUFFIX}": self.changes})


def compare_with_stored(db: Path, name: str, new: pl.DataFrame, key: str,
                        lock_timeout_s: float = warehouse.DEFAULT_LOCK_TIMEOUT_S) -> TableChange | None:
    """The change `new` makes to stored table `name` (None when there is none stored yet, or it has no `key`)."""
    db = Path(db)
    if not warehouse.has_table(db, name, lock_timeout_s):
        return None
    old = warehouse.read_table(db, name, lock_timeout_s)
    if key not in old.columns:
        return None
    changes = diff_tables(old, new, key)
    return TableChange(name, old, changes, summarize(changes), db)
