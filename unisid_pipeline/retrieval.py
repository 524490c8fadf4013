"""Ad-to-ad embedding retrieval, as in the UniSID paper: 1 positive among 999 sampled negatives.

Query/positive pairs are consecutive clicks of one user: `heldout_pairs` (the last history ad ->
the validation or test target; what an embedding trained on training clicks has never seen, so the
only fair pairs for UniSID with co-interaction positives) or `click_pairs` (consecutive training
clicks, train_items[t] -> train_items[t+1]). Each query's positive is ranked by cosine
similarity against `n_negatives` ads drawn uniformly from the catalog (never the query or the
positive). Recall@k = share of queries whose positive ranks in the top k of the 1 + n_negatives.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from unisid_pipeline.data.sequences import consecutive_clicks


def click_pairs(sequences: pl.DataFrame, max_pairs: int, seed: int) -> np.ndarray:
    """(m, 2) ad_id pairs of consecutive distinct training clicks, at most `max_pairs`, sampled with `seed`."""
    pairs = consecutive_clicks(sequences)
    arr = pairs.select("a", "b").to_numpy().astype(np.int64)
    if len(arr) > max_pairs:
        arr = arr[np.sort(np.random.default_rng(seed).choice(len(arr), max_pairs, replace=False))]
    return arr


def heldout_pairs(sequences: pl.DataFrame, split: str = "test", max_pairs: int | None = None, seed: int = 0) -> np.ndarray:
    """(m, 2) ad_id pairs (last history ad, target) of the `split` ("valid" or "test") with distinct ads,
    at most `max_pairs` (a seeded sample, in user order)."""
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    pairs = (sequences.select(pl.col(f"{split}_history").list.last().alias("a"), pl.col(f"{split}_target").alias("b"))
             .drop_nulls().filter(pl.col("a") != pl.col("b")))
    arr = pairs.to_numpy().astype(np.int64).reshape(-1, 2)
    if max_pairs is not None and len(arr) > max_pairs:
        arr = arr[np.sort(np.random.default_rng(seed).choice(len(arr), max_pairs, replace=False))]
    return arr


def retrieval_recall(
    ad_ids: np.ndarray,
    embeddings: np.ndarray,
    pairs: np.ndarray,
    n_negatives: int = 999,
    ks: Sequence[int] = (1, 5, 10, 20),
    seed: int = 0,
) -> dict[str, float]:
    """Recall@k of the positive among 1 + n_negatives candidates (ties count against the positive)."""
    if len(ad_ids) < n_negatives + 2:
        raise ValueError(f"need at least n_negatives + 2 = {n_negatives + 2} ads, got {len(ad_ids)}: lower n_negatives")
    index = {int(a): i for i, a in enumerate(ad_ids)}
    keep = np.array([int(a) in index and int(b) in index for a, b in pairs], dtype=bool)
    pairs = pairs[keep]
    if len(pairs) == 0:
        raise ValueError("no query/positive pair has both ads in the embedding table")
    x = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    q = np.array([index[int(a)] for a in pairs[:, 0]])
    p = np.array([index[int(b)] for b in pairs[:, 1]])
    rng = np.random.default_rng(seed)
    n = len(ad_ids)
    neg = rng.integers(0, n - 2, size=(len(q), n_negatives))
    # map [0, n-2) onto the catalog without the query and the positive
    lo, hi = np.minimum(q, p)[:, None], np.maximum(q, p)[:, None]
    neg = neg + (neg >= lo) + ((neg + (neg >= lo)) >= hi)
    pos_score = np.einsum("ij,ij->i", x[q], x[p])
    rank = np.empty(len(q), dtype=np.int64)  # 0 = positive first
    step = max(1, (1 << 26) // max(1, n_negatives * x.shape[1]))  # ~256 MB of gathered negatives per chunk
    for s in range(0, len(q), step):
        neg_score = np.einsum("ij,ikj->ik", x[q[s:s + step]], x[neg[s:s + step]])
        rank[s:s + step] = (neg_score >= pos_score[s:s + step, None]).sum(axis=1)
    out = {f"recall@{k}": float((rank < k).mean()) for k in ks}
    out["n_queries"] = float(len(q))
    return out
