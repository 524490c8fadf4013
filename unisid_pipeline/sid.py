"""Semantic-ID tables: collision statistics and collision resolution, shared by every tokenizer.

A tokenizer gives raw codes (n, L) int64 in [0, K). Two items "collide" when their full code
tuples are equal. Two resolutions make every SID unique:

- "suffix" (TIGER): append one token, the item's index inside its collision group (groups
  ordered by ad_id), 0 for items without collision. SID length L + 1; the extra token can exceed
  K - 1 when a group has more than K items (its vocabulary is `info["post"]["max_group_size"]`
  wide before resolution, i.e. `pre["max_group_size"]`).
- "reassign": keep the length L and move colliding items to the nearest free last-level code
  inside their (L-1)-prefix, by a per-item cost (n, K), lower is better (RQ tokenizers pass
  `last_level_distances`, UniSID passes -logits). Impossible when some prefix holds more than K
  items: `resolve_reassign` raises `ReassignmentImpossible` and `build_sid_table` falls back to
  "suffix" for the whole table (one table, one SID length) and says so in its info.

Everything is deterministic and independent of row order: ties are broken by ad_id.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

RESOLUTIONS = ("suffix", "reassign", "none")


class LazyRowCost:
    """An (n, K) last-level cost matrix computed only for the rows asked for: `cost[rows]` returns
    `fn(rows)` ((len(rows), K) float). `resolve_reassign` reads only the rows of colliding items,
    so at catalog scale the full (n, K) matrix (1 GB at 1M items x K=256) is never built."""

    def __init__(self, n_items: int, n_codes: int, fn):
        self.shape = (int(n_items), int(n_codes))
        self._fn = fn

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        out = np.asarray(self._fn(rows), dtype=np.float64)
        if out.shape != (rows.size, self.shape[1]):
            raise ValueError(f"cost function returned shape {out.shape} for {rows.size} rows, expected {(rows.size, self.shape[1])}")
        return out


class ReassignmentImpossible(ValueError):
    """A (L-1)-prefix holds more items than the K last-level codes: no unique L-length SIDs exist."""


def _check_codes(codes: np.ndarray) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] < 1:
        raise ValueError(f"codes must be a 2-D integer array (n_items, L) with L >= 1, got shape {codes.shape}")
    if codes.size and not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"codes must be integers, got dtype {codes.dtype}")
    if codes.size and codes.min() < 0:
        raise ValueError("codes must be >= 0")
    return codes.astype(np.int64, copy=False)


def _check_ad_ids(ad_ids: np.ndarray, n: int) -> np.ndarray:
    ad_ids = np.asarray(ad_ids)
    if ad_ids.shape != (n,):
        raise ValueError(f"ad_ids must be 1-D with one id per row of codes ({n}), got shape {ad_ids.shape}")
    if n and not np.issubdtype(ad_ids.dtype, np.integer):
        raise ValueError(f"ad_ids must be integers, got dtype {ad_ids.dtype}")
    ad_ids = ad_ids.astype(np.int64, copy=False)
    if np.unique(ad_ids).size != n:
        raise ValueError("ad_ids must be unique: deduplicate the catalogue before building SIDs")
    return ad_ids


def _group_ids(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """codes (n, L) -> (group index per row (n,), group sizes (n_groups,)); groups in lexicographic order."""
    if codes.shape[1] == 0:
        return np.zeros(codes.shape[0], dtype=np.int64), np.array([codes.shape[0]], dtype=np.int64)
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return inverse.reshape(-1), counts


def collision_stats(codes: np.ndarray) -> dict[str, Any]:
    """Collision statistics of a code table (n, L).

    n_items; n_unique_sids; collision_rate = share of items whose full SID is held by another
    item too; n_colliding_items; n_groups = number of SIDs held by two or more items;
    max_group_size = most items sharing one SID (1 when all are unique, 0 for an empty table).
    """
    codes = _check_codes(codes)
    n = codes.shape[0]
    if n == 0:
        return {"n_items": 0, "n_unique_sids": 0, "collision_rate": 0.0, "n_colliding_items": 0, "n_groups": 0, "max_group_size": 0}
    inverse, counts = _group_ids(codes)
    colliding = counts[inverse] > 1
    return {
        "n_items": int(n),
        "n_unique_sids": int(counts.size),
        "collision_rate": float(colliding.mean()),
        "n_colliding_items": int(colliding.sum()),
        "n_groups": int((counts > 1).sum()),
        "max_group_size": int(counts.max()),
    }


def resolve_suffix(codes: np.ndarray, ad_ids: np.ndarray) -> np.ndarray:
    """TIGER's disambiguation token: codes (n, L) -> (n, L + 1), last column = rank of the item
    inside its collision group by ascending ad_id (0 for the smallest ad_id and for unique SIDs)."""
    codes = _check_codes(codes)
    n = codes.shape[0]
    ad_ids = _check_ad_ids(ad_ids, n)
    suffix = np.zeros(n, dtype=np.int64)
    if n:
        inverse, _ = _group_ids(codes)
        order = np.lexsort((ad_ids, inverse))
        groups = inverse[order]
        is_start = np.r_[True, groups[1:] != groups[:-1]]
        start_pos = np.maximum.accumulate(np.where(is_start, np.arange(n), 0))
        suffix[order] = np.arange(n) - start_pos
    return np.column_stack([codes, suffix])


def resolve_reassign(codes: np.ndarray, last_level_cost: np.ndarray, ad_ids: np.ndarray) -> np.ndarray:
    """Move colliding items to free last-level codes of their own (L-1)-prefix: (n, L) -> (n, L).

    last_level_cost: (n, K) float array or `LazyRowCost`, lower is better, K > every last-level
    code; only the rows of colliding items are read. In each group of
    items sharing a full SID, the item with the lowest cost at the shared code keeps it (ties:
    smallest ad_id). The other items of all groups of one prefix then, in order of (cost at their
    current code, ad_id), each take their lowest-cost last-level code not used by any item of the
    prefix (ties: lowest code). Only last-level codes change; prefixes never do.

    Raises ReassignmentImpossible when a prefix holds more than K items.
    """
    codes = _check_codes(codes)
    n, n_levels = codes.shape
    ad_ids = _check_ad_ids(ad_ids, n)
    lazy = isinstance(last_level_cost, LazyRowCost)
    cost = last_level_cost if lazy else np.asarray(last_level_cost, dtype=np.float64)
    if len(cost.shape) != 2 or cost.shape[0] != n:
        raise ValueError(f"last_level_cost must have shape (n_items={n}, K), got {cost.shape}")
    n_codes = cost.shape[1]
    if n and codes[:, -1].max() >= n_codes:
        raise ValueError(f"last-level codes reach {codes[:, -1].max()} but last_level_cost has only K={n_codes} columns")
    if not lazy and not np.isfinite(cost).all():
        raise ValueError("last_level_cost contains NaN or inf; pass finite costs (e.g. -logits)")
    out = codes.copy()
    if n == 0:
        return out
    prefix, prefix_sizes = _group_ids(codes[:, : n_levels - 1])
    if prefix_sizes.max() > n_codes:
        worst = int(np.argmax(prefix_sizes))
        example = codes[np.flatnonzero(prefix == worst)[0], : n_levels - 1].tolist()
        raise ReassignmentImpossible(
            f"prefix {example} holds {int(prefix_sizes.max())} items but the last level has only K={n_codes} codes "
            f"({int((prefix_sizes > n_codes).sum())} prefix(es) overfull); use resolution='suffix' or a larger K"
        )
    sid, sid_sizes = _group_ids(codes)
    colliding = np.flatnonzero(sid_sizes[sid] > 1)
    if colliding.size == 0:
        return out
    cost_rows = cost[colliding]  # (m, K): the only rows the resolution reads
    if lazy and not np.isfinite(cost_rows).all():
        raise ValueError("last_level_cost contains NaN or inf; pass finite costs (e.g. -logits)")
    row_of = np.full(n, -1, dtype=np.int64)
    row_of[colliding] = np.arange(colliding.size)
    own_cost = np.zeros(n, dtype=np.float64)
    own_cost[colliding] = cost_rows[np.arange(colliding.size), codes[colliding, -1]]
    # keeper of each SID group: lowest own cost, then smallest ad_id
    order = colliding[np.lexsort((ad_ids[colliding], own_cost[colliding], sid[colliding]))]
    is_keeper = np.r_[True, sid[order][1:] != sid[order][:-1]]
    movers = order[~is_keeper]
    movers = movers[np.lexsort((ad_ids[movers], own_cost[movers], prefix[movers]))]
    # occupied last-level codes of every prefix that has movers
    touched = np.unique(prefix[movers])
    local = np.full(prefix_sizes.size, -1, dtype=np.int64)
    local[touched] = np.arange(touched.size)
    rows = np.flatnonzero(local[prefix] >= 0)
    occupied = np.zeros((touched.size, n_codes), dtype=bool)
    occupied[local[prefix[rows]], codes[rows, -1]] = True
    for i in movers:
        r = local[prefix[i]]
        j = int(np.argmin(np.where(occupied[r], np.inf, cost_rows[row_of[i]])))
        out[i, -1] = j
        occupied[r, j] = True
    return out


def build_sid_table(
    ad_ids: np.ndarray,
    raw_codes: np.ndarray,
    method: str,
    model_version: str,
    resolution: str,
    last_level_cost: np.ndarray | None = None,
    weights_sha256: str = "",
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Build the SID table of the data contract and its collision report.

    ad_ids (n,) unique ints; raw_codes (n, L) tokenizer output; resolution "suffix" | "reassign"
    | "none" ("reassign" needs last_level_cost (n, K) or a `LazyRowCost`, lower is better). Rows keep
    the input order.

    Returns (table with columns ad_id Int64, codes List(Int64), raw_codes List(Int64), method Utf8,
    model_version Utf8, weights_sha256 Utf8 (the sha256 of the tokenizer's weights: a registry version
    number alone can be reused after the tracking store is lost); info) where info has resolution_requested, resolution_used,
    fallback_reason (None, or why "reassign" fell back to "suffix"), sid_length, n_reassigned
    (items whose SID changed without growing), pre and post (`collision_stats` before and after).
    """
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
    if resolution == "reassign" and last_level_cost is None:
        raise ValueError("resolution='reassign' needs last_level_cost (n, K); pass it or use resolution='suffix'")
    raw = _check_codes(raw_codes)
    ids = _check_ad_ids(ad_ids, raw.shape[0])
    used, fallback_reason, n_reassigned = resolution, None, 0
    if resolution == "suffix":
        final = resolve_suffix(raw, ids)
    elif resolution == "reassign":
        try:
            final = resolve_reassign(raw, last_level_cost, ids)
            n_reassigned = int((final != raw).any(axis=1).sum())
        except ReassignmentImpossible as exc:
            final, used, fallback_reason = resolve_suffix(raw, ids), "suffix", str(exc)
    else:
        final = raw.copy()
    table = pl.DataFrame(
        {
            "ad_id": pl.Series("ad_id", ids, dtype=pl.Int64),
            "codes": pl.Series("codes", final).cast(pl.List(pl.Int64)),
            "raw_codes": pl.Series("raw_codes", raw).cast(pl.List(pl.Int64)),
            "method": pl.Series("method", [method] * raw.shape[0], dtype=pl.Utf8),
            "model_version": pl.Series("model_version", [model_version] * raw.shape[0], dtype=pl.Utf8),
            "weights_sha256": pl.Series("weights_sha256", [weights_sha256] * raw.shape[0], dtype=pl.Utf8),
        }
    )
    info = {
        "resolution_requested": resolution,
        "resolution_used": used,
        "fallback_reason": fallback_reason,
        "sid_length": int(final.shape[1]),
        "n_reassigned": n_reassigned,
        "pre": collision_stats(raw),
        "post": collision_stats(final),
    }
    return table, info


def sid_table_to_array(table: pl.DataFrame, column: str = "codes") -> tuple[np.ndarray, np.ndarray]:
    """SID table -> (ad_ids (n,) int64, codes (n, L) int64) of `column` ("codes" or "raw_codes")."""
    if column not in ("codes", "raw_codes"):
        raise ValueError(f"column must be 'codes' or 'raw_codes', got {column!r}")
    ad_ids = table["ad_id"].to_numpy().astype(np.int64)
    if table.height == 0:
        return ad_ids, np.zeros((0, 0), dtype=np.int64)
    lengths = table[column].list.len()
    if lengths.n_unique() != 1:
        raise ValueError(f"column {column!r} has SIDs of lengths {sorted(lengths.unique().to_list())}; one table must use one length")
    codes = table[column].list.to_array(int(lengths[0])).to_numpy().astype(np.int64)
    return ad_ids, codes.reshape(table.height, int(lengths[0]))
