"""Ranking metrics against hand-computed values and a slow per-user reference."""
from __future__ import annotations

import math

import numpy as np
import pytest

from unisid_pipeline.metrics import (
    dedupe_rankings,
    mrr,
    ndcg_at_k,
    ranking_metrics,
    recall_at_k,
    target_ranks,
)

# row 0: target 3 at rank 2; row 1: target absent (-1 padding); row 2: duplicate 4 removed, so 9 is at
# rank 2 (not 3); row 3: target absent
RANKED = np.array([[5, 3, 7], [1, 2, -1], [4, 4, 9], [8, -1, -1]])
TARGETS = np.array([3, 9, 9, 0])


def test_hand_computed_values() -> None:
    assert target_ranks(RANKED, TARGETS).tolist() == [2, 0, 2, 0]
    assert recall_at_k(RANKED, TARGETS, 1) == 0.0
    assert recall_at_k(RANKED, TARGETS, 2) == 0.5
    assert recall_at_k(RANKED, TARGETS, 3) == 0.5
    assert ndcg_at_k(RANKED, TARGETS, 1) == 0.0
    assert ndcg_at_k(RANKED, TARGETS, 2) == pytest.approx(2 * (1 / math.log2(3)) / 4)
    assert mrr(RANKED, TARGETS) == pytest.approx((0.5 + 0.5) / 4)


def test_first_position_hit() -> None:
    ranked = np.array([[7, 1, 2], [3, 7, 1]])
    targets = np.array([7, 7])
    assert recall_at_k(ranked, targets, 1) == 0.5
    assert ndcg_at_k(ranked, targets, 5) == pytest.approx((1.0 + 1 / math.log2(3)) / 2)
    assert mrr(ranked, targets) == pytest.approx(0.75)


def test_dedupe_keeps_first_occurrence_and_closes_gaps() -> None:
    out = dedupe_rankings(np.array([[2, 2, -1, 3, 2], [-1, 5, 5, 6, -1]]))
    assert out.tolist() == [[2, 3, -1, -1, -1], [5, 6, -1, -1, -1]]


def test_duplicates_never_count_twice_nor_push_target_down() -> None:
    ranked = np.array([[1, 1, 1, 2]])
    assert recall_at_k(ranked, np.array([2]), 2) == 1.0
    assert mrr(ranked, np.array([2])) == 0.5


def _slow_metrics(ranked: np.ndarray, targets: np.ndarray, k: int) -> tuple[float, float, float]:
    rec, ndcg, rr = [], [], []
    for row, t in zip(ranked.tolist(), targets.tolist()):
        clean: list[int] = []
        for item in row:
            if item >= 0 and item not in clean:
                clean.append(item)
        rank = clean.index(t) + 1 if t in clean else 0
        rec.append(1.0 if 0 < rank <= k else 0.0)
        ndcg.append(1 / math.log2(rank + 1) if 0 < rank <= k else 0.0)
        rr.append(1 / rank if rank else 0.0)
    return float(np.mean(rec)), float(np.mean(ndcg)), float(np.mean(rr))


def test_matches_slow_reference_on_random_rankings() -> None:
    rng = np.random.default_rng(0)
    ranked = rng.integers(-1, 12, size=(300, 8))
    targets = rng.integers(0, 12, size=300)
    for k in (1, 3, 5, 8):
        rec, ndcg, rr = _slow_metrics(ranked, targets, k)
        assert recall_at_k(ranked, targets, k) == pytest.approx(rec)
        assert ndcg_at_k(ranked, targets, k) == pytest.approx(ndcg)
        assert mrr(ranked, targets) == pytest.approx(rr)


def test_ranking_metrics_keys_and_values() -> None:
    out = ranking_metrics(RANKED, TARGETS, recall_ks=(1, 2), ndcg_ks=(2,))
    assert set(out) == {"recall@1", "recall@2", "ndcg@2", "mrr"}
    assert out["recall@2"] == recall_at_k(RANKED, TARGETS, 2)


@pytest.mark.parametrize(
    "ranked, targets, match",
    [
        (np.array([1, 2, 3]), np.array([1]), "shape"),
        (np.array([[1, 2]]), np.array([1, 2]), "targets must have shape"),
        (np.array([[1, 2]]), np.array([-1]), "targets must be item ids"),
        (np.array([[1.0, 2.0]]), np.array([1]), "integer"),
    ],
)
def test_bad_inputs_raise(ranked: np.ndarray, targets: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        recall_at_k(ranked, targets, 1)


def test_bad_k_raises() -> None:
    with pytest.raises(ValueError, match="k must be"):
        ndcg_at_k(RANKED, TARGETS, 0)
