"""Incremental SID assignment: give new ads SIDs from a frozen tokenizer without touching old SIDs.

A catalog grows; re-resolving collisions over the whole table would renumber old ads (their
suffix or reassigned code depends on who else collides). `assign_new_sids` instead resolves each
new ad against the existing table, which is read-only:

- "suffix" (existing SIDs have length L + 1): the new ad takes its raw codes plus the smallest
  suffix not used by any existing or earlier new SID with the same raw codes.
- "reassign" (length L): the new ad keeps its raw SID when free, else takes the lowest-cost free
  last-level code of its (L-1)-prefix; a full prefix raises `ReassignmentImpossible` (rebuild the
  table with resolution="suffix" and a new tokenizer version to grow further).
- "none" (length L): raw codes as they are, collisions allowed.

New ads are processed in ascending ad_id order, so the result does not depend on row order. The
tokenizer must be the one that built the table (`model_version` is checked).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from unisid_pipeline.sid import (
    LazyRowCost,
    ReassignmentImpossible,
    _check_ad_ids,
    _check_codes,
    collision_stats,
    sid_table_to_array,
)

INCREMENTAL_RESOLUTIONS = ("suffix", "reassign", "none")


def new_ad_ids(existing: pl.DataFrame, ad_ids: np.ndarray) -> np.ndarray:
    """Boolean mask over `ad_ids`: True for ids that have no row in the existing SID table."""
    ad_ids = np.asarray(ad_ids, dtype=np.int64)
    return ~pl.Series(ad_ids).is_in(existing["ad_id"].cast(pl.Int64).implode()).to_numpy()


def _row_keys(rows: np.ndarray, base: int) -> np.ndarray:
    """One int64 per row of `rows` (n, p) with values < base: the row read as a base-`base` number."""
    key = np.zeros(len(rows), dtype=np.int64)
    for j in range(rows.shape[1]):
        key = key * base + rows[:, j]
    return key


def check_same_weights(table: pl.DataFrame, weights_sha256: str, model_version: str) -> None:
    """Refuse to extend (or mix with) a SID table that other weights built, even under the same version name: after
    a lost or replaced MLflow store the registry numbers versions from 1 again, and a retrained tokenizer would
    otherwise add SIDs "by version 1" that the table's version 1 never produced."""
    if "weights_sha256" not in table.columns:
        raise ValueError("the SID table records no weights fingerprint (it predates them), so its tokenizer cannot be "
                         "verified: re-materialize the <method>_sids asset once, then extend it")
    found = sorted(table["weights_sha256"].unique().to_list())
    if found != [weights_sha256]:
        raise ValueError(
            f"the SID table was built by tokenizer weights {[f[:12] for f in found]}, the tokenizer given ({model_version}) "
            f"has weights {weights_sha256[:12]}: they are different models under "
            f"{'the same version name (was the MLflow store lost or replaced? registry versions restart at 1)' if model_version in table['model_version'].unique().to_list() else 'different versions'}. "
            "Mixing their SIDs would corrupt the table: rebuild it with this tokenizer (re-materialize <method>_sids) "
            "or load the tokenizer that built it")


def assign_new_sids(
    existing: pl.DataFrame,
    ad_ids: np.ndarray,
    raw_codes: np.ndarray,
    method: str,
    model_version: str,
    resolution: str,
    last_level_cost: np.ndarray | LazyRowCost | None = None,
    weights_sha256: str = "",
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """SID rows (data contract of `build_sid_table`) for ads not yet in `existing`.

    existing: a SID table built by `build_sid_table` (or by this function) with the same tokenizer;
    its rows are never changed. ad_ids (m,) and raw_codes (m, L): the new ads and their tokenizer
    output; last_level_cost ((m, K) array or `LazyRowCost`, lower is better) is needed for
    "reassign". Returns (rows of the new ads only, in ascending ad_id order; info with n_existing,
    n_new, n_new_colliding (new ads whose raw SID was already taken), resolution and `post`, the
    `collision_stats` of existing + new). weights_sha256: the sha256 of the tokenizer's weights; `existing`
    must have been built by the same weights, not only under the same version name (`check_same_weights`).
    """
    if resolution not in INCREMENTAL_RESOLUTIONS:
        raise ValueError(f"resolution must be one of {INCREMENTAL_RESOLUTIONS}, got {resolution!r}")
    raw = _check_codes(raw_codes)
    ids = _check_ad_ids(ad_ids, raw.shape[0])
    n_levels = raw.shape[1]
    old_ids, old_codes = sid_table_to_array(existing, "codes") if existing.height else (
        np.zeros(0, dtype=np.int64), np.zeros((0, n_levels + (resolution == "suffix")), dtype=np.int64))
    if existing.height:
        versions = existing["model_version"].unique().to_list()
        if versions != [model_version]:
            raise ValueError(
                f"the existing SID table was built by tokenizer version(s) {versions}, not {model_version!r}: "
                "load that tokenizer version to extend it, or rebuild the whole table with the new tokenizer")
        check_same_weights(existing, weights_sha256, model_version)
        _, old_raw = sid_table_to_array(existing, "raw_codes")
        if old_raw.shape[1] != n_levels:
            raise ValueError(f"existing raw codes have {old_raw.shape[1]} levels, the new ones {n_levels}")
    clash = ids[~new_ad_ids(existing, ids)] if existing.height else ids[:0]
    if clash.size:
        raise ValueError(f"{clash.size} ad_id(s) already have a SID (e.g. {clash[:5].tolist()}); pass only new ads "
                         "(new_ad_ids(existing, ad_ids) selects them): old SIDs never change")
    want = n_levels + 1 if resolution == "suffix" else n_levels
    if old_codes.shape[1] != want:
        raise ValueError(
            f"resolution {resolution!r} needs existing SIDs of length {want}, the table has {old_codes.shape[1]}: "
            "use the resolution the table was built with (length L + 1 = suffix, L = reassign or none)")
    if resolution == "reassign" and last_level_cost is None:
        raise ValueError("resolution='reassign' needs last_level_cost (m, K) for the new ads")

    order = np.argsort(ids, kind="stable")
    ids, raw = ids[order], raw[order]
    # Only existing SIDs under a prefix some new ad has can conflict: index just those.
    p = n_levels if resolution == "suffix" else n_levels - 1
    base = int(max(old_codes.max(initial=0), raw.max(initial=0))) + 1
    if base**p < 2**62:
        relevant = np.isin(_row_keys(old_codes[:, :p], base), _row_keys(raw[:, :p], base))
    else:  # codebooks too large for an int64 key: index every existing SID
        relevant = np.ones(len(old_codes), dtype=bool)
    taken = {tuple(r) for r in old_codes[relevant].tolist()}
    final = raw.copy() if resolution != "suffix" else np.column_stack([raw, np.zeros(len(ids), dtype=np.int64)])
    n_colliding = 0
    if resolution == "suffix":
        for i, r in enumerate(raw.tolist()):
            s = 0
            while (*r, s) in taken:
                s += 1
            n_colliding += s > 0
            final[i, -1] = s
            taken.add((*r, s))
    elif resolution == "reassign":
        colliding = []
        for i, r in enumerate(raw.tolist()):
            if tuple(r) in taken:
                colliding.append(i)
            else:
                taken.add(tuple(r))
        if colliding:
            rows = order[np.asarray(colliding, dtype=np.int64)]  # rows of the caller's cost matrix
            cost = last_level_cost[rows] if isinstance(last_level_cost, LazyRowCost) else \
                np.asarray(last_level_cost, dtype=np.float64)[rows]
            if not np.isfinite(cost).all():
                raise ValueError("last_level_cost contains NaN or inf; pass finite costs (e.g. -logits)")
            for i, c in zip(colliding, cost):
                prefix = tuple(raw[i, :-1].tolist())
                free = [k for k in np.argsort(c, kind="stable").tolist() if (*prefix, k) not in taken]
                if not free:
                    raise ReassignmentImpossible(
                        f"prefix {list(prefix)} has no free last-level code left for ad {int(ids[i])} (K={c.size}): "
                        "rebuild the SID table with resolution='suffix' (a new tokenizer version) to grow further")
                final[i, -1] = free[0]
                taken.add((*prefix, free[0]))
            n_colliding = len(colliding)
    else:
        for r in raw.tolist():
            n_colliding += tuple(r) in taken
            taken.add(tuple(r))
    table = pl.DataFrame({
        "ad_id": pl.Series("ad_id", ids, dtype=pl.Int64),
        "codes": pl.Series("codes", final).cast(pl.List(pl.Int64)),
        "raw_codes": pl.Series("raw_codes", raw).cast(pl.List(pl.Int64)),
        "method": pl.Series("method", [method] * len(ids), dtype=pl.Utf8),
        "model_version": pl.Series("model_version", [model_version] * len(ids), dtype=pl.Utf8),
        "weights_sha256": pl.Series("weights_sha256", [weights_sha256] * len(ids), dtype=pl.Utf8),
    })
    info = {
        "resolution": resolution,
        "n_existing": int(existing.height),
        "n_new": int(len(ids)),
        "n_new_colliding": int(n_colliding),
        "post": collision_stats(np.concatenate([old_codes, final])) if len(ids) + existing.height else collision_stats(final),
    }
    return table, info
