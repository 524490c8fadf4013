"""Co-interaction partners for UniSID's embedding loss (ours; the paper's L_emb pairs two views of one ad).

Two ads are partners when one user clicked them one right after the other in the *training* part of
the leave-one-out split (`user_sequences.train_items`): validation and test targets never become
positives, so no evaluation interaction leaks into the tokenizer. A partner is kept once per
occurrence, so that frequent transitions are sampled more often.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import polars as pl

from unisid_pipeline.data.sequences import consecutive_clicks


class Partners(NamedTuple):
    """CSR lists: the partners of ad row i are rows values[offsets[i]:offsets[i + 1]] (int64)."""

    offsets: np.ndarray  # (n + 1,)
    values: np.ndarray  # (m,)

    @property
    def n_ads(self) -> int:
        return len(self.offsets) - 1

    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)


def transition_pairs(ad_ids: np.ndarray, sequences: pl.DataFrame) -> np.ndarray:
    """(m, 2) row indices into `ad_ids` of consecutive distinct training clicks (both ads known).

    sequences: the `user_sequences` table (needs `train_items`)."""
    pairs = consecutive_clicks(sequences)
    rows = pl.DataFrame({"ad_id": np.asarray(ad_ids, dtype=np.int64), "row": np.arange(len(ad_ids), dtype=np.int64)})
    joined = (pairs.join(rows.rename({"ad_id": "a", "row": "ra"}), on="a", how="inner")
              .join(rows.rename({"ad_id": "b", "row": "rb"}), on="b", how="inner"))
    return joined.select("ra", "rb").to_numpy().astype(np.int64).reshape(-1, 2)


def co_interaction_partners(ad_ids: np.ndarray, sequences: pl.DataFrame) -> Partners:
    """Partners of every ad row (both directions of each training transition), sorted for determinism."""
    pairs = transition_pairs(ad_ids, sequences)
    both = np.concatenate([pairs, pairs[:, ::-1]]) if len(pairs) else np.zeros((0, 2), dtype=np.int64)
    order = np.lexsort((both[:, 1], both[:, 0]))
    both = both[order]
    n = len(ad_ids)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(both[:, 0], minlength=n), out=offsets[1:])
    return Partners(offsets, np.ascontiguousarray(both[:, 1]))


def sample_partners(partners: Partners, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One partner row per anchor row (uniform over its partner list); an ad without partners gets itself
    (its second view is then its positive, as in the paper)."""
    rows = np.asarray(rows, dtype=np.int64)
    start, count = partners.offsets[rows], partners.counts()[rows]
    pick = np.floor(rng.random(len(rows)) * np.maximum(count, 1)).astype(np.int64)
    has = count > 0
    out = rows.copy()
    out[has] = partners.values[start[has] + pick[has]]
    return out
