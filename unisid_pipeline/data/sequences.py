"""User sequences with the leave-one-out split (last item test, second-last validation)."""
from __future__ import annotations

import polars as pl

SEQUENCE_SCHEMA = {
    "user_id": pl.Int64,
    "items": pl.List(pl.Int64),
    "train_items": pl.List(pl.Int64),
    "valid_history": pl.List(pl.Int64),
    "valid_target": pl.Int64,
    "test_history": pl.List(pl.Int64),
    "test_target": pl.Int64,
}


def build_user_sequences(interactions: pl.DataFrame, max_history: int = 20, min_items: int = 3) -> tuple[pl.DataFrame, dict]:
    """Group clean interactions into per-user sequences in time order and split leave-one-out.

    Users with fewer than `min_items` (>= 3) interactions cannot be split; they are counted in the
    returned info (they stay in `ad_interactions`).
    """
    if max_history < 1:
        raise ValueError(f"max_history must be >= 1, got {max_history}")
    if min_items < 3:
        raise ValueError(f"min_items must be >= 3 for a train/valid/test split, got {min_items}")
    seqs = (
        interactions.sort(["user_id", "timestamp"], maintain_order=True)
        .group_by("user_id", maintain_order=True)
        .agg(pl.col("ad_id").alias("items"))
        .with_columns(pl.col("items").list.len().alias("__n"))
    )
    short = seqs.filter(pl.col("__n") < min_items)
    seqs = seqs.filter(pl.col("__n") >= min_items).sort("user_id")
    out = seqs.select(
        "user_id",
        "items",
        pl.col("items").list.head(pl.col("__n") - 2).alias("train_items"),
        pl.col("items").list.head(pl.col("__n") - 2).list.tail(max_history).alias("valid_history"),
        pl.col("items").list.get(-2).alias("valid_target"),
        pl.col("items").list.head(pl.col("__n") - 1).list.tail(max_history).alias("test_history"),
        pl.col("items").list.get(-1).alias("test_target"),
    ).cast(SEQUENCE_SCHEMA)
    info = {
        "n_users": out.height,
        "n_users_too_short": short.height,
        "max_history": max_history,
        "mean_length": float(seqs["__n"].mean()) if seqs.height else 0.0,
    }
    return out, info


def consecutive_clicks(sequences: pl.DataFrame, column: str = "train_items") -> pl.DataFrame:
    """(a, b) ad_id pairs of each user's consecutive, distinct items in `column` (default: the training
    clicks of the leave-one-out split, so no validation or test target appears)."""
    if column not in sequences.columns:
        raise ValueError(f"sequences lacks the column {column!r}: pass the user_sequences table")
    return (
        sequences.select(pl.col(column).alias("a"), pl.col(column).list.slice(1).alias("b"))
        .with_columns(pl.col("a").list.head(pl.col("b").list.len()))
        .explode(["a", "b"])
        .drop_nulls()
        .filter(pl.col("a") != pl.col("b"))
    )
