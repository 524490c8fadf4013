"""Benchmark: RQ-KMeans and RQ-VAE training time and peak memory vs catalogue size.

Synthetic embeddings: d-dim, L2-normalised, hierarchically clustered (topics -> subtopics -> leaves),
like sentence embeddings of a catalogue. Each (method, size) runs in a fresh subprocess, so the
peak resident memory (ru_maxrss) is that run's own; on CUDA the peak allocated GPU memory is
reported too. Prints a markdown table, also logged to the MLflow experiment `benchmarks` (bench/report.py;
--no-mlflow skips it).

    .venv/bin/python bench/bench_rq.py --sizes 10000,100000,1000000 --device cpu --epochs 5
    .venv/bin/python bench/bench_rq.py --sizes 2000 --codebook-size 16 --epochs 1 --n-iter 2 --dim 32   # smallest
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import add_report_args, emit  # noqa: E402

METHODS = ("rq_kmeans", "rq_kmeans_balanced", "rq_vae")


def synthetic_embeddings(n: int, d: int, seed: int, chunk: int = 100_000) -> np.ndarray:
    """(n, d) float32 unit rows around a 3-level hierarchy of centres (64 topics x 16 subtopics x
    16 leaves, each level a smaller offset from its parent), plus item noise; generated in chunks."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(64, d)).astype(np.float32)
    for spread in (0.6, 0.4):
        centres = np.repeat(centres, 16, axis=0)
        centres += spread * rng.normal(size=centres.shape).astype(np.float32)
    out = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        block = centres[rng.integers(len(centres), size=m)] + 0.25 * rng.normal(size=(m, d)).astype(np.float32)
        out[start : start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def run_one(method: str, n: int, args: argparse.Namespace) -> dict:
    import torch

    from unisid_pipeline.models.rq import RQKMeansConfig, RQVAEConfig, fit_rq_kmeans, train_rq_vae
    from unisid_pipeline.sid import collision_stats

    if args.threads:
        torch.set_num_threads(args.threads)
    x = synthetic_embeddings(n, args.dim, args.seed)
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    if method.startswith("rq_kmeans"):
        cfg = RQKMeansConfig(
            n_levels=args.levels, codebook_size=args.codebook_size, n_iter=args.n_iter,
            balanced=method == "rq_kmeans_balanced",
        )
        tok, hist = fit_rq_kmeans(cfg, x, seed=args.seed, device=args.device)
        usage = hist["usage"]
    else:
        cfg = RQVAEConfig(n_levels=args.levels, codebook_size=args.codebook_size, epochs=args.epochs)
        tok, hist = train_rq_vae(cfg, x, seed=args.seed, device=args.device)
        usage = [hist[f"usage_level_{l}"][-1] for l in range(args.levels)]
    if cuda:
        torch.cuda.synchronize()
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    codes = tok.encode(x)
    encode_s = time.perf_counter() - t0
    return {
        "method": method,
        "n_items": n,
        "config": {k: v for k, v in dataclasses.asdict(cfg).items()},
        "train_s": train_s,
        "encode_s": encode_s,
        "rss_data_mb": rss_data,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "usage": usage,
        "collision_rate": collision_stats(codes)["collision_rate"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated n_items")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=5, help="RQ-VAE epochs")
    parser.add_argument("--n-iter", type=int, default=20, help="k-means Lloyd iterations per level")
    parser.add_argument("--methods", default="rq_kmeans,rq_vae", help=f"comma-separated subset of {METHODS}")
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--codebook-size", type=int, default=256)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    add_report_args(parser)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(run_one(args.child[0], int(args.child[1]), args)))
        return

    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    sizes = [int(s) for s in args.sizes.split(",") if s]
    passthrough = [
        "--device", args.device, "--epochs", str(args.epochs), "--n-iter", str(args.n_iter), "--levels",
        str(args.levels), "--codebook-size", str(args.codebook_size), "--dim", str(args.dim), "--seed", str(args.seed),
        "--threads", str(args.threads),
    ]
    rows = []
    for n in sizes:
        for method in methods:
            proc = subprocess.run(
                [sys.executable, __file__, "--child", method, str(n), *passthrough],
                capture_output=True, text=True,
            )
            if proc.returncode != 0:
                rows.append({"method": method, "n_items": n, "error": proc.stderr.strip().splitlines()[-1:]})
                continue
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))

    title = (f"d={args.dim}, L={args.levels}, K={args.codebook_size}, device={args.device}, "
             f"threads={args.threads or 'default'}, k-means iters/level={args.n_iter}, RQ-VAE epochs={args.epochs}")
    table = []
    for r in rows:
        if "error" in r:
            table.append({"method": r["method"], "n_items": r["n_items"], "train s": f"failed: {r['error']}"})
            continue
        table.append({"method": r["method"], "n_items": r["n_items"], "train s": r["train_s"], "encode s": r["encode_s"],
                      "peak RSS MB": r["peak_rss_mb"], "RSS MB data alone": r["rss_data_mb"],
                      "peak GPU MB": r["peak_gpu_mb"], "usage per level": r["usage"],
                      "collision rate": r["collision_rate"]})
    emit("bench_rq", table, args=args, title=title)


if __name__ == "__main__":
    main()
