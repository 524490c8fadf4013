"""Training throughput of UniSID on synthetic ads; prints a markdown table.

    .venv/bin/python bench/bench_unisid.py --backbone minilm --n-ads 256 --steps 10 --batch-size 32

ads/s counts ads (each ad is read twice: two views); tokens/s counts the backbone tokens of both
views (padding excluded). The first step (warm-up, lazy init) is excluded from the rates.
Peak memory: process peak RSS on the CPU (includes loading), torch.cuda.max_memory_allocated on GPU.
The table is also logged to the MLflow experiment `benchmarks` (bench/report.py; --no-mlflow skips it).

    .venv/bin/python bench/bench_unisid.py --backbone tiny --n-ads 64 --steps 2 --batch-size 16   # smallest
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import torch  # noqa: E402

from bench.report import add_report_args, emit  # noqa: E402
from unisid_pipeline.data.schema import AD_COLUMNS  # noqa: E402
from unisid_pipeline.hierarchy import encode_level_labels, labels_from_category_path  # noqa: E402
from unisid_pipeline.unisid import UniSIDConfig, UniSIDTrainConfig, train_unisid  # noqa: E402

WORDS = ("matte lipstick cream serum lotion shampoo conditioner mascara eyeliner palette nail polish gel "
         "moisturizing hydrating organic natural long lasting waterproof anti aging vitamin oil repair "
         "sensitive skin hair face body lip eye color shade pink red nude black brown gold set kit travel "
         "size pack professional salon formula fragrance free gentle daily night spf sunscreen mask scrub").split()
CATS = [f"{a} > {b} > {c}" for a in ("Makeup", "Skin Care", "Hair Care") for b in ("Face", "Eyes") for c in ("Basic", "Premium")]


def synthetic_ads(n: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        title = " ".join(rng.choice(WORDS, size=rng.integers(6, 14)))
        desc = " ".join(rng.choice(WORDS, size=rng.integers(10, 25)))
        rows.append(dict(ad_id=i, title=title, description=desc, advertiser=f"adv{rng.integers(50)}",
                         industry="beauty", category_path=CATS[rng.integers(len(CATS))], brand=f"brand{rng.integers(100)}",
                         price=float(rng.lognormal(3, 1)), landing_type="web_page", image_features=None))
    return pl.DataFrame(rows, schema=AD_COLUMNS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-ads", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backbone", default="minilm", help="tiny | minilm | path to a local HF model folder")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA, and the CPU via cpu_amp)")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--rec-decoder", default="tiny", help="tiny | smollm2 | path; 'none' disables L_rec")
    ap.add_argument("--peak-tflops", type=float, default=989.0,
                    help="bf16 dense peak of the device for the MFU column (H100 SXM: 989; 0 = skip)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    add_report_args(ap)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    ads = synthetic_ads(args.n_ads)
    labels = encode_level_labels(labels_from_category_path(ads))
    use_rec = args.rec_decoder != "none"
    cfg = UniSIDTrainConfig(
        # training-step throughput: the paper's two-view batches (co-interaction positives only change which ads
        # fill the second half of a batch) and the heads' SIDs (no quantizer fit at the end of this short run)
        model=UniSIDConfig(backbone=args.backbone, max_length=args.max_length, sid_source="head"), emb_positives="view",
        max_steps=args.steps + 1, batch_size=args.batch_size, amp=args.amp, cpu_amp=args.amp, use_rec=use_rec,
        rec_decoder=args.rec_decoder if use_rec else "tiny", rec_target="attributes",
        checkpoint_every=0, code_stats_sample=0,
    )
    steps: list[dict] = []
    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    model, _ = train_unisid(cfg, ads, None, labels, seed=0, device=args.device, on_step=steps.append)
    n_backbone = sum(p.numel() for p in model.backbone.parameters())
    wall = time.perf_counter() - t0
    timed = steps[1:] or steps
    secs = sum(s["seconds"] for s in timed)
    n_ads = sum(s["ads"] for s in timed)
    toks = sum(s["tokens"] for s in timed)
    if dev.type == "cuda":
        mem, mem_kind = torch.cuda.max_memory_allocated(dev) / 2**30, "cuda alloc"
    else:
        mem, mem_kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "RSS"
    threads = torch.get_num_threads() if dev.type == "cpu" else "-"
    # model FLOP utilisation: 6 * backbone params * (non-padding) tokens per second against the bf16 peak;
    # the heads and the L_rec decoder are not counted, so this is a lower bound of the real utilisation
    mfu = 6 * n_backbone * toks / secs / (args.peak_tflops * 1e12) if args.peak_tflops else float("nan")
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else args.device
    emit("bench_unisid", [{
        "backbone": args.backbone, "params M": n_backbone / 1e6, "device": name, "threads": threads,
        "batch": args.batch_size, "max_len": args.max_length, "rec": args.rec_decoder, "amp": args.amp,
        "timed steps": len(timed), "s/step": secs / len(timed), "ads/s": n_ads / secs, "tokens/s": toks / secs,
        "MFU %": 100 * mfu, "peak memory GiB": mem, "memory": mem_kind, "wall s": wall,
    }], args=args)


if __name__ == "__main__":
    main()
