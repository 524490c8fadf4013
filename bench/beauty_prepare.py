"""Prepare the Amazon Beauty inputs that the GPU benchmark needs and the GPU machine cannot make.

Writes to --out (default bench/out/beauty): ads.parquet (raw_ads schema), sequences.parquet
(user_sequences, leave-one-out, history <= 20), embeddings.parquet (MiniLM embeddings of the ad
text, the RQ baselines' input), labels.parquet (UniSID's L_sid targets and the V-measure reference:
the real Amazon category path, 6/46/193 labels per level, when the Beauty folder has item_meta.jsonl;
otherwise the 8x8x8 hierarchy derived from the embeddings; as the `ad_hierarchy_labels` asset
chooses) and, with --summaries template|llm, summaries.parquet.

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
from unisid_pipeline.hierarchy import derive_hierarchy, labels_from_category_path  # noqa: E402
from unisid_pipeline.embeddings import TextEncoder, embed_texts_cached, embeddings_to_frame  # noqa: E402

MIN_PATH_COVERAGE = 0.5


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
    # the folder named on the command line is the input root (links inside it are still refused)
    res = ingest(IngestionConfig(source="amazon_beauty", beauty_dir=args.beauty_dir, allowed_roots=(args.beauty_dir,)))
    seqs, info = build_user_sequences(res.ad_interactions, max_history=20)
    res.raw_ads.write_parquet(out / "ads.parquet")
    seqs.write_parquet(out / "sequences.parquet")
    print(f"ads {res.raw_ads.height}, users {info['n_users']}, interactions {res.ad_interactions.height}")
    t0 = time.perf_counter()
    enc = TextEncoder(device=args.device)
    x = embed_texts_cached(res.raw_ads["ad_id"].to_list(), ad_text(res.raw_ads).to_list(), enc, args.cache)
    embeddings_to_frame(res.raw_ads["ad_id"].to_list(), x).write_parquet(out / "embeddings.parquet")
    print(f"embeddings {x.shape} in {time.perf_counter() - t0:.1f}s ({enc.model_id})")
    coverage = float(res.raw_ads["category_path"].is_not_null().mean()) if res.raw_ads.height else 0.0
    if coverage >= MIN_PATH_COVERAGE:  # the `ad_hierarchy_labels` asset's default rule
        labels = labels_from_category_path(res.raw_ads)
        per_level = {c: labels[c].n_unique() for c in ("level_1", "level_2", "level_3")}
        print(f"labels: category path (coverage {coverage:.1%}; distinct labels {per_level})")
    else:
        labels, info = derive_hierarchy(x, res.raw_ads["ad_id"].to_numpy(), branching=(8, 8, 8), seed=0)
        print(f"labels: DERIVED hierarchy from the embeddings (category path coverage {coverage:.1%}: "
              f"{res.info.get('category_path')}) {info}")
    labels.write_parquet(out / "labels.parquet")
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
