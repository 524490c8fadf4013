"""Item-level evaluation of the generative recommender (leave-one-out, full ranking).

Every generated SID maps to exactly one item (the table is collision-free and the constrained beam
search only emits complete valid SIDs), so the top-W beams are a ranking of W distinct items over
the whole catalog. Metrics are computed on items, never on SIDs (see DESIGN.md §3 pitfalls).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
import polars as pl
import torch

from unisid_pipeline.metrics import DEFAULT_NDCG_KS, DEFAULT_RECALL_KS, ranking_metrics
from unisid_pipeline.recommender.model import GenerativeRecommender
from unisid_pipeline.seeding import cpu_determinism, resolve_device

logger = logging.getLogger(__name__)

SPLITS = ("valid", "test")


def split_columns(split: str) -> tuple[str, str]:
    """(history column, target column) of a user_sequences split."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return f"{split}_history", f"{split}_target"


def check_sequences(sequences: pl.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in ("user_id", *columns) if c not in sequences.columns]
    if missing:
        raise ValueError(f"user_sequences lacks column(s) {missing}; see the user_sequences contract")
    if sequences.height == 0:
        raise ValueError("user_sequences is empty")


@torch.no_grad()
def rank_histories(
    model: GenerativeRecommender,
    history_idx: np.ndarray,
    user_tokens: np.ndarray | None,
    batch_size: int,
    beam_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Constrained beam search over many users in batches (sorted by history length to cut padding).

    history_idx: (n, H) int64 item indices right-padded with -1; user_tokens: (n,) hashed user
    token ids or None. Returns ranked item indices (n, W) int64 (-1 = none) and scores (n, W).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = history_idx.shape[0]
    w = beam_size or model.config.beam_size
    order = np.argsort(-(history_idx >= 0).sum(1), kind="stable")
    items = np.full((n, w), -1, dtype=np.int64)
    scores = np.full((n, w), -np.inf, dtype=np.float32)
    hist_t = torch.from_numpy(history_idx)
    utok_t = None if user_tokens is None else torch.from_numpy(np.asarray(user_tokens, dtype=np.int64))
    for start in range(0, n, batch_size):
        rows = order[start : start + batch_size]
        rows_t = torch.from_numpy(rows)
        input_ids, mask = model.assemble_inputs(hist_t[rows_t], None if utok_t is None else utok_t[rows_t])
        it, sc = model.beam_search(input_ids, mask, w)
        items[rows] = it.cpu().numpy()
        scores[rows] = sc.float().cpu().numpy()
    return items, scores


def rank_split(
    bundle: GenerativeRecommender,
    sequences: pl.DataFrame,
    split: str = "test",
    batch_size: int | None = None,
    beam_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Rank every user's ``split`` history with the constrained beam search, on the bundle's device.

    Returns item indices (n, W) int64 (rows of the SID table, -1 = none), the same ranking as ad_ids
    (n, W), the targets' ad_ids (n,) int64 and the beam search's wall seconds.
    """
    hist_col, tgt_col = split_columns(split)
    check_sequences(sequences, (hist_col, tgt_col))
    w = beam_size or bundle.config.beam_size
    history_idx = bundle.history_matrix(sequences[hist_col].to_list())
    targets = sequences[tgt_col].to_numpy().astype(np.int64)
    user_tokens = bundle.vocab.user_token(sequences["user_id"].to_numpy()) if bundle.config.use_user_token else None
    if bundle.device.type == "cuda":
        torch.cuda.synchronize(bundle.device)
    t0 = time.perf_counter()
    with cpu_determinism(bundle.device):  # small CPU kernels: one thread beats two oversubscribed ones
        items, _ = rank_histories(bundle, history_idx, user_tokens, batch_size or bundle.config.eval_batch_size, w)
    seconds = time.perf_counter() - t0
    ranked = np.where(items >= 0, bundle.vocab.ad_ids[np.clip(items, 0, None)], -1)
    return items, ranked, targets, seconds


def evaluate_recommender(
    bundle: GenerativeRecommender,
    sequences: pl.DataFrame,
    split: str = "test",
    batch_size: int | None = None,
    device: str | None = None,
    beam_size: int | None = None,
    recall_ks: Sequence[int] = DEFAULT_RECALL_KS,
    ndcg_ks: Sequence[int] = DEFAULT_NDCG_KS,
) -> dict[str, float]:
    """Leave-one-out metrics of ``split`` ("valid" or "test") with full ranking over all items.

    Moves ``bundle`` to ``device`` when given (in place). Returns ``recall@k`` (= HR@k) for
    recall_ks, ``ndcg@k`` for ndcg_ks, ``mrr`` (over the W returned items), plus ``n_users``,
    ``seconds`` (beam search wall time) and ``users_per_s``. A target outside the top W counts as
    a miss, so recall@k with k > beam size is recall within the top W (a warning is logged).
    """
    if device is not None:
        bundle.to(resolve_device(device))
    w = beam_size or bundle.config.beam_size
    kmax = max([*recall_ks, *ndcg_ks])
    if w < kmax and w < bundle.vocab.n_items:
        logger.warning("beam size %d < k=%d: metrics @k above %d only see the top %d items", w, kmax, w, w)
    _, ranked, targets, seconds = rank_split(bundle, sequences, split, batch_size, w)
    out = ranking_metrics(ranked, targets, recall_ks, ndcg_ks)
    out.update(n_users=float(len(targets)), seconds=seconds, users_per_s=len(targets) / max(seconds, 1e-9))
    logger.info("%s metrics: %s", split, {k: round(v, 4) for k, v in out.items()})
    return out
