"""Ranking metrics for next-item recommendation with one held-out target per user.

All functions take ``ranked_items``: int64 array of shape (n_users, K), best first, ``-1`` marking an
empty slot (fewer than K valid items returned), and ``targets``: int64 array of shape (n_users,) of
item ids (>= 0). Rankings are first cleaned by :func:`dedupe_rankings`: a repeated item only counts
at its first position and later copies are removed (the list closes up), so duplicates can never
inflate a score nor push the target down. With one target per user Recall@k equals HitRate@k.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_RECALL_KS: tuple[int, ...] = (1, 5, 10, 20)
DEFAULT_NDCG_KS: tuple[int, ...] = (5, 10)


def _check(ranked_items: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ranked = np.asarray(ranked_items)
    tgt = np.asarray(targets)
    if ranked.ndim != 2:
        raise ValueError(f"ranked_items must have shape (n_users, K), got shape {ranked.shape}")
    if tgt.ndim != 1 or tgt.shape[0] != ranked.shape[0]:
        raise ValueError(
            f"targets must have shape (n_users,) = ({ranked.shape[0]},), got shape {tgt.shape}"
        )
    if not np.issubdtype(ranked.dtype, np.integer) or not np.issubdtype(tgt.dtype, np.integer):
        raise ValueError("ranked_items and targets must be integer item ids (use -1 for an empty slot)")
    if tgt.size and tgt.min() < 0:
        raise ValueError("targets must be item ids >= 0 (-1 is reserved for empty ranking slots)")
    if ranked.shape[0] == 0:
        raise ValueError("ranking metrics need at least one user; got 0 rows")
    return ranked.astype(np.int64, copy=False), tgt.astype(np.int64, copy=False)


def dedupe_rankings(ranked_items: np.ndarray) -> np.ndarray:
    """Drop repeated items (keep the first occurrence) and invalid ids (< 0); close up the gaps.

    (n, K) int -> (n, K) int64, each row's distinct valid items in their original order, padded
    with -1 on the right.
    """
    ranked = np.asarray(ranked_items, dtype=np.int64)
    if ranked.ndim != 2:
        raise ValueError(f"ranked_items must have shape (n_users, K), got shape {ranked.shape}")
    n, k = ranked.shape
    if k == 0:
        return ranked.copy()
    earlier = np.tril(np.ones((k, k), dtype=bool), k=-1)  # earlier[j, i]: position i comes before j
    same = ranked[:, :, None] == ranked[:, None, :]
    dup = (same & earlier[None]).any(axis=2)
    keep = (ranked >= 0) & ~dup
    order = np.argsort(~keep, axis=1, kind="stable")
    out = np.take_along_axis(ranked, order, axis=1)
    kept = np.take_along_axis(keep, order, axis=1)
    out[~kept] = -1
    return out


def target_ranks(ranked_items: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based rank of each user's target in its (deduplicated) list; 0 where it is absent. (n,) int64."""
    ranked, tgt = _check(ranked_items, targets)
    clean = dedupe_rankings(ranked)
    hits = clean == tgt[:, None]
    found = hits.any(axis=1)
    return np.where(found, hits.argmax(axis=1) + 1, 0).astype(np.int64)


def _check_k(k: int) -> None:
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")


def recall_at_k(ranked_items: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Fraction of users whose target is among the first k distinct valid items (= HitRate@k)."""
    _check_k(k)
    ranks = target_ranks(ranked_items, targets)
    return float(np.mean((ranks >= 1) & (ranks <= k)))


def ndcg_at_k(ranked_items: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Mean NDCG@k with one relevant item: 1 / log2(rank + 1) if rank <= k else 0 (ideal DCG = 1)."""
    _check_k(k)
    ranks = target_ranks(ranked_items, targets)
    gain = np.zeros(ranks.shape, dtype=np.float64)
    hit = (ranks >= 1) & (ranks <= k)
    gain[hit] = 1.0 / np.log2(ranks[hit] + 1.0)
    return float(gain.mean())


def mrr(ranked_items: np.ndarray, targets: np.ndarray) -> float:
    """Mean reciprocal rank over the whole returned list; 0 for a user whose target is absent."""
    ranks = target_ranks(ranked_items, targets)
    rr = np.zeros(ranks.shape, dtype=np.float64)
    rr[ranks > 0] = 1.0 / ranks[ranks > 0]
    return float(rr.mean())


def ranking_metrics(
    ranked_items: np.ndarray,
    targets: np.ndarray,
    recall_ks: Sequence[int] = DEFAULT_RECALL_KS,
    ndcg_ks: Sequence[int] = DEFAULT_NDCG_KS,
) -> dict[str, float]:
    """All metrics at once: keys ``recall@k`` for recall_ks, ``ndcg@k`` for ndcg_ks, and ``mrr``."""
    out: dict[str, float] = {}
    for k in recall_ks:
        out[f"recall@{k}"] = recall_at_k(ranked_items, targets, k)
    for k in ndcg_ks:
        out[f"ndcg@{k}"] = ndcg_at_k(ranked_items, targets, k)
    out["mrr"] = mrr(ranked_items, targets)
    return out
