"""UniSID's training inputs from the pipeline's tables (raw_ads, ad_summaries, ad_hierarchy_labels, user_sequences)."""
from __future__ import annotations

import numpy as np
import polars as pl

from unisid_pipeline.hierarchy import LEVEL_COLUMNS, encode_level_labels
from unisid_pipeline.retrieval import heldout_pairs
from unisid_pipeline.unisid.pairs import Partners, co_interaction_partners


def aligned_inputs(raw_ads: pl.DataFrame, ad_summaries: pl.DataFrame | None,
                   labels: pl.DataFrame) -> tuple[list[str] | None, np.ndarray]:
    """(summaries, level_labels) in raw_ads row order: one summary per ad (None when ad_summaries is
    None) and the (n, 3) int64 label ids of `encode_level_labels` (-1 = unknown level)."""
    joined = raw_ads.select("ad_id")
    if ad_summaries is not None:
        joined = joined.join(ad_summaries.select("ad_id", "summary"), on="ad_id", how="left")
        missing = joined.filter(pl.col("summary").is_null()).height
        if missing:
            raise ValueError(f"{missing} ads have no summary: re-materialize ad_summaries for the current raw_ads")
    joined = joined.join(labels, on="ad_id", how="left")
    summaries = joined["summary"].to_list() if ad_summaries is not None else None
    return summaries, encode_level_labels(joined.select(*LEVEL_COLUMNS))


def sequence_inputs(raw_ads: pl.DataFrame, user_sequences: pl.DataFrame | None,
                    max_retrieval_pairs: int = 4000, seed: int = 0) -> tuple[Partners | None, np.ndarray | None]:
    """(co-interaction partners, held-out retrieval pairs) in raw_ads row order, from the user sequences.

    Partners come from training clicks only (`unisid.pairs`); the retrieval pairs are the validation
    split's (last history ad, target) as row indices, at most `max_retrieval_pairs`, for the per-epoch
    retrieval diagnostic. Both None without sequences."""
    if user_sequences is None:
        return None, None
    ad_ids = raw_ads["ad_id"].to_numpy()
    row = {int(a): i for i, a in enumerate(ad_ids)}
    pairs = [(row[a], row[b]) for a, b in heldout_pairs(user_sequences, "valid", max_retrieval_pairs, seed)
             if a in row and b in row]
    return co_interaction_partners(ad_ids, user_sequences), np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
