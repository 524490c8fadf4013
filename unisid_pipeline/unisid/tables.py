"""UniSID's training inputs from the pipeline's tables (raw_ads, ad_summaries, ad_hierarchy_labels)."""
from __future__ import annotations

import numpy as np
import polars as pl

from unisid_pipeline.hierarchy import LEVEL_COLUMNS, encode_level_labels


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
