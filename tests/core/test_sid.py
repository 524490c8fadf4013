"""SID tables: collision statistics and the two collision resolutions."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from unisid_pipeline.sid import (
    ReassignmentImpossible,
    build_sid_table,
    collision_stats,
    resolve_reassign,
    resolve_suffix,
    sid_table_to_array,
)

# 6 items: SID (1,2,3) x3, (1,2,4) x1, (0,0,0) x2
CODES = np.array([[1, 2, 3], [0, 0, 0], [1, 2, 3], [1, 2, 4], [1, 2, 3], [0, 0, 0]], dtype=np.int64)
AD_IDS = np.array([50, 10, 20, 40, 30, 60], dtype=np.int64)


def random_table(seed: int, n: int = 400, L: int = 3, K: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Skewed codes (many collisions) where no prefix holds more than K items, plus ids and costs."""
    rng = np.random.default_rng(seed)
    prefixes = rng.integers(0, 4, size=(n, L - 1))
    # at most K items per prefix: drop the surplus
    _, inv = np.unique(prefixes, axis=0, return_inverse=True)
    keep = np.zeros(n, dtype=bool)
    for g in np.unique(inv):
        keep[np.flatnonzero(inv == g)[:K]] = True
    prefixes = prefixes[keep]
    m = prefixes.shape[0]
    last = rng.integers(0, 3, size=(m, 1))  # only 3 of K last codes used: many collisions
    codes = np.hstack([prefixes, last]).astype(np.int64)
    ad_ids = rng.permutation(10 * m)[:m].astype(np.int64)
    cost = rng.random((m, K))
    return codes, ad_ids, cost


def by_ad_id(ad_ids: np.ndarray, codes: np.ndarray) -> dict[int, tuple[int, ...]]:
    return {int(a): tuple(int(v) for v in row) for a, row in zip(ad_ids, codes)}


# ------------------------------------------------------------------ statistics


def test_collision_stats_hand_computed() -> None:
    assert collision_stats(CODES) == {
        "n_items": 6,
        "n_unique_sids": 3,
        "collision_rate": 5 / 6,
        "n_colliding_items": 5,
        "n_groups": 2,
        "max_group_size": 3,
    }
    assert collision_stats(np.arange(12).reshape(4, 3))["collision_rate"] == 0.0
    assert collision_stats(np.zeros((0, 3), dtype=np.int64))["n_items"] == 0


def test_collision_stats_invariant_to_row_order() -> None:
    codes, _, _ = random_table(0)
    perm = np.random.default_rng(1).permutation(len(codes))
    assert collision_stats(codes) == collision_stats(codes[perm])


# ------------------------------------------------------------------ suffix


def test_suffix_hand_computed_and_order_invariant() -> None:
    out = resolve_suffix(CODES, AD_IDS)
    # group (1,2,3): ad_ids 50, 20, 30 -> 2, 0, 1; group (0,0,0): 10, 60 -> 0, 1; unique (1,2,4) -> 0
    assert out[:, -1].tolist() == [2, 0, 0, 0, 1, 1]
    assert np.array_equal(out[:, :3], CODES)
    perm = np.array([3, 5, 0, 2, 4, 1])
    assert by_ad_id(AD_IDS[perm], resolve_suffix(CODES[perm], AD_IDS[perm])) == by_ad_id(AD_IDS, out)


# ------------------------------------------------------------------ reassign


def test_reassign_hand_computed() -> None:
    codes = np.array([[0, 1], [0, 1], [0, 1], [0, 2], [1, 1]], dtype=np.int64)
    ad_ids = np.array([1, 2, 3, 4, 5])
    cost = np.array(
        [
            [0.1, 0.5, 0.9, 0.2],  # own cost 0.5: moves second, only 3 is left free
            [0.9, 0.3, 0.1, 0.9],  # own cost 0.3: lowest of SID (0, 1), keeps code 1
            [0.2, 0.4, 0.1, 0.8],  # own cost 0.4: moves first; 2 is held by the 4th item, so takes 0
            [0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],
        ]
    )
    out = resolve_reassign(codes, cost, ad_ids)
    assert out[:, 1].tolist() == [3, 1, 0, 2, 1]
    assert np.array_equal(out[:, 0], codes[:, 0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reassign_keeps_prefixes_and_removes_collisions(seed: int) -> None:
    codes, ad_ids, cost = random_table(seed)
    assert collision_stats(codes)["collision_rate"] > 0.5
    out = resolve_reassign(codes, cost, ad_ids)
    assert np.array_equal(out[:, :-1], codes[:, :-1])
    assert collision_stats(out)["collision_rate"] == 0.0
    unchanged = (out == codes).all(1)
    # in every collided SID exactly one item (the one with the lowest cost) keeps the code
    _, inv, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    for g in np.flatnonzero(counts > 1):
        members = np.flatnonzero(inv == g)
        keeper = members[np.argmin(cost[members, codes[members, -1]])]
        assert unchanged[members].tolist() == [m == keeper for m in members]
    # determinism, independent of row order
    perm = np.random.default_rng(seed + 10).permutation(len(codes))
    again = resolve_reassign(codes[perm], cost[perm], ad_ids[perm])
    assert by_ad_id(ad_ids[perm], again) == by_ad_id(ad_ids, out)
    assert np.array_equal(resolve_reassign(codes, cost, ad_ids), out)


def test_reassign_impossible_when_prefix_overfull() -> None:
    codes = np.zeros((5, 2), dtype=np.int64)
    with pytest.raises(ReassignmentImpossible, match="holds 5 items"):
        resolve_reassign(codes, np.zeros((5, 4)), np.arange(5))


# ------------------------------------------------------------------ table


@pytest.mark.parametrize("resolution", ["suffix", "reassign"])
def test_everything_colliding_is_resolved(resolution: str) -> None:
    n, K = 8, 8
    codes = np.zeros((n, 3), dtype=np.int64)
    cost = np.random.default_rng(0).random((n, K))
    table, info = build_sid_table(np.arange(100, 100 + n), codes, "rq_kmeans", "v1", resolution, cost)
    assert info["pre"]["collision_rate"] == 1.0
    assert info["post"]["collision_rate"] == 0.0
    assert info["resolution_used"] == resolution and info["fallback_reason"] is None
    assert info["sid_length"] == (4 if resolution == "suffix" else 3)
    assert table["codes"].list.len().unique().to_list() == [info["sid_length"]]


def test_reassign_falls_back_to_suffix_for_the_whole_table() -> None:
    codes = np.vstack([np.zeros((9, 3)), np.array([[1, 1, 1], [2, 2, 2]])]).astype(np.int64)
    cost = np.random.default_rng(0).random((11, 8))
    table, info = build_sid_table(np.arange(11), codes, "rq_vae", "v2", "reassign", cost)
    assert info["resolution_requested"] == "reassign" and info["resolution_used"] == "suffix"
    assert "holds 9 items" in info["fallback_reason"]
    assert info["post"]["collision_rate"] == 0.0 and info["sid_length"] == 4
    assert table["codes"].list.len().unique().to_list() == [4]


def test_sid_table_schema_and_round_trip() -> None:
    table, info = build_sid_table(AD_IDS, CODES, "unisid", "m@3", "suffix")
    assert table.schema == pl.Schema(
        {"ad_id": pl.Int64, "codes": pl.List(pl.Int64), "raw_codes": pl.List(pl.Int64), "method": pl.Utf8, "model_version": pl.Utf8,
         "weights_sha256": pl.Utf8}
    )
    ids, codes = sid_table_to_array(table)
    assert np.array_equal(ids, AD_IDS) and np.array_equal(codes, resolve_suffix(CODES, AD_IDS))
    assert np.array_equal(sid_table_to_array(table, "raw_codes")[1], CODES)
    assert table["method"].unique().to_list() == ["unisid"] and info["n_reassigned"] == 0


def test_none_keeps_raw_codes_and_reports_collisions() -> None:
    table, info = build_sid_table(AD_IDS, CODES, "rq_kmeans", "v1", "none")
    assert np.array_equal(sid_table_to_array(table)[1], CODES)
    assert info["post"] == info["pre"] and info["post"]["collision_rate"] == 5 / 6


def test_build_sid_table_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="last_level_cost"):
        build_sid_table(AD_IDS, CODES, "m", "v", "reassign")
    with pytest.raises(ValueError, match="unique"):
        build_sid_table(np.zeros(6, dtype=np.int64), CODES, "m", "v", "suffix")
    with pytest.raises(ValueError, match="resolution"):
        build_sid_table(AD_IDS, CODES, "m", "v", "drop")
