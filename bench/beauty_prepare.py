"""Prepare the Amazon Beauty inputs that the GPU benchmark needs and the GPU machine cannot make.

Writes to --out (default bench/out/beauty): ads.parquet (raw_ads schema), sequences.parquet
(user_sequences, leave-one-out, history <= 20), embeddings.parquet (MiniLM title embeddings,
the RQ baselines' input), labels.parquet (the 8x8x8 hierarchy derived from those embeddings, as
the `ad_hierarchy_labels` asset derives it: UniSID's L_sid targets and the V-measure reference)
and, with --summaries template|llm, summaries.parquet.

    python bench/beauty_prepare.py --beauty-dir ../shared/data/amazon-beauty-2014
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from unisid_pipeline.data.ingest import IngestionConfig, ingest  # noqa: E402
from unisid_pipeline.data.schema import ad_text  # noqa: E402
from unisid_pipeline.data.sequences import build_user_sequences  # noqa: E402
from unisid_pipeline.hierarchy import derive_hierarchy  # noqa: E402
from unisid_pipeline.embeddings import TextEncoder, embed_texts_cached, embeddings_to_frame  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--beauty-dir", default="../shared/data/amazon-beauty-2014")
    ap.add_argument("--out", default="bench/out/beauty")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--summaries", choices=["none", "template", "llm"], default="none")
    ap.add_argument("--cache", default="bench/out/beauty_cache.duckdb", help="summary/embedding cache (resumable)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = ingest(IngestionConfig(source="amazon_beauty", beauty_dir=args.beauty_dir))
    seqs, info = build_user_sequences(res.ad_interactions, max_history=20)
    res.raw_ads.write_parquet(out / "ads.parquet")
    seqs.write_parquet(out / "sequences.parquet")
    print(f"ads {res.raw_ads.height}, users {info['n_users']}, interactions {res.ad_interactions.height}")
    t0 = time.perf_counter()
    enc = TextEncoder(device=args.device)
    x = embed_texts_cached(res.raw_ads["ad_id"].to_list(), ad_text(res.raw_ads).to_list(), enc, args.cache)
    embeddings_to_frame(res.raw_ads["ad_id"].to_list(), x).write_parquet(out / "embeddings.parquet")
    print(f"embeddings {x.shape} in {time.perf_counter() - t0:.1f}s ({enc.model_id})")
    labels, info = derive_hierarchy(x, res.raw_ads["ad_id"].to_numpy(), branching=(8, 8, 8), seed=0)
    labels.write_parquet(out / "labels.parquet")
    print(f"labels: derived hierarchy {info}")
    if args.summaries != "none":
        from unisid_pipeline.llm import SummarizerConfig, SummaryCache, build_summarizer, summarize_ads

        summ = build_summarizer(SummarizerConfig(backend="transformers" if args.summaries == "llm" else "template",
                                                 device=args.device))
        t0 = time.perf_counter()
        table = summarize_ads(res.raw_ads, summ, SummaryCache(args.cache),
                              progress=lambda p: print(f"summaries {p['done']}/{p['total']} {p['rate_per_s']:.2f}/s", flush=True))
        table.write_parquet(out / "summaries.parquet")
        print(f"summaries ({summ.backend}, {summ.model_id}) in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
