"""SID inference throughput: UniSID `encode` (codes + embedding) and RQ-KMeans `encode` over a large catalog.

    python bench/bench_sid_inference.py --n-ads 1000000 --device cuda --backbone <minilm folder> --batch-size 1024

The ads come from the synthetic world; UniSID's weights are untrained (MiniLM backbone, fresh heads):
inference costs the same as for a trained model. RQ-KMeans encodes random 384-d vectors with freshly
fitted codebooks (fit on 65,536 rows, not timed). Prints ads/s and peak memory per stage as a markdown table,
also logged to the MLflow experiment `benchmarks` (bench/report.py; --no-mlflow skips it).

    .venv/bin/python bench/bench_sid_inference.py --n-ads 300 --backbone tiny --batch-size 64   # smallest (CPU)
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
import torch  # noqa: E402

from bench.report import add_report_args, emit  # noqa: E402


def peak(dev: torch.device) -> tuple[float, str]:
    """(peak memory GiB, what was measured)."""
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**30, "cuda alloc"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "RSS"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-ads", type=int, default=10000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backbone", default="minilm")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--no-amp", action="store_true")
    add_report_args(ap)
    args = ap.parse_args()
    from unisid_pipeline.data.synthetic import SyntheticWorldConfig, generate_world
    from unisid_pipeline.models.rq import RQKMeansConfig, fit_rq_kmeans
    from unisid_pipeline.unisid import UniSIDConfig
    from unisid_pipeline.unisid.model import UniSIDModel

    dev = torch.device(args.device)
    t0 = time.perf_counter()
    ads = generate_world(SyntheticWorldConfig(n_ads=args.n_ads, n_users=100, seed=0)).ads
    gen_s = time.perf_counter() - t0
    # the SID heads' codes: an untrained model has no fitted embedding quantizer (the default sid_source, embedding_rq)
    model = UniSIDModel(UniSIDConfig(backbone=args.backbone, max_length=args.max_length, sid_source="head")).to(dev).eval()
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    rows = []
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    model.encode(ads.head(min(2048, args.n_ads)), batch_size=args.batch_size, device=args.device, amp=not args.no_amp)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    codes, emb, _ = model.encode(ads, batch_size=args.batch_size, device=args.device, amp=not args.no_amp)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    s = time.perf_counter() - t0
    rows.append((f"UniSID encode ({args.backbone}, batch {args.batch_size}, amp {not args.no_amp})", s, args.n_ads / s, peak(dev)))

    x = np.random.default_rng(0).standard_normal((args.n_ads, 384)).astype(np.float32)
    tok, _ = fit_rq_kmeans(RQKMeansConfig(), x[: min(65536, args.n_ads)], seed=0, device=args.device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    rq_codes = tok.encode(x)
    s = time.perf_counter() - t0
    rows.append(("RQ-KMeans encode (3x256, 384-d)", s, args.n_ads / s, peak(dev)))
    emit("bench_sid_inference",
         [{"stage": stage, "seconds": sec, "ads/s": rate, "peak memory GiB": mem[0], "memory": mem[1]}
          for stage, sec, rate, mem in rows], args=args,
         title=f"\n{args.n_ads:,} synthetic ads (generated in {gen_s:.1f}s) on {name}; torch {torch.__version__}; "
               f"codes {codes.shape}, embeddings {emb.shape}, RQ codes {rq_codes.shape}")


if __name__ == "__main__":
    main()
