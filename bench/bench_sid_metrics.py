"""Time the SID metric set on synthetic SID tables (3 levels x 256 codes); prints a markdown table.

    .venv/bin/python bench/bench_sid_metrics.py --sizes 10000 100000 1000000

Synthetic data: Zipf-skewed first-level codes, residual levels correlated with their parent (so
there are real collision groups), a 4th resolution token, 3-level labels derived from the
codes with 10% noise, and d-dim embeddings clustered by the first code. The table is also logged to the
MLflow experiment `benchmarks` (bench/report.py; --no-mlflow skips it).

    .venv/bin/python bench/bench_sid_metrics.py --sizes 2000 --max-queries 100   # smallest
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import add_report_args, emit  # noqa: E402
from unisid_pipeline.analysis.sid_metrics import (  # noqa: E402
    codes_matrix,
    collision_metrics,
    fanout_metrics,
    level_usage_metrics,
    neighbour_agreement,
    sid_report,
    v_measure_metrics,
)

K = 256
LEVELS = 3


def synthetic(n: int, dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    l1 = np.minimum(rng.zipf(1.3, n) - 1, K - 1)
    l2 = (l1 * 7 + rng.integers(0, 16, n)) % K
    l3 = (l2 * 13 + rng.integers(0, 64, n)) % K
    raw = np.stack([l1, l2, l3], axis=1).astype(np.int64)
    # resolution token: rank of the item inside its SID bucket (what a 4th-token scheme does)
    df = pl.DataFrame({"a": l1, "b": l2, "c": l3}).with_columns(
        pl.int_range(pl.len()).over("a", "b", "c").alias("d")
    )
    post = np.concatenate([raw, df["d"].to_numpy()[:, None]], axis=1)
    ad_ids = rng.permutation(n).astype(np.int64) + 1
    table = pl.DataFrame(
        {
            "ad_id": ad_ids,
            "codes": pl.Series(post).cast(pl.List(pl.Int64)),
            "raw_codes": pl.Series(raw).cast(pl.List(pl.Int64)),
            "method": "synthetic",
            "model_version": "bench",
        }
    )
    noise = rng.random(n) < 0.1
    lab1 = np.where(noise, rng.integers(0, 40, n), l1 % 40)
    labels = pl.DataFrame(
        {
            "ad_id": ad_ids,
            "level_1": pl.Series(lab1).cast(pl.Utf8),
            "level_2": pl.Series(lab1 * 1000 + l2 % 100).cast(pl.Utf8),
            "level_3": pl.Series(lab1 * 1000_000 + (l2 % 100) * 1000 + l3 % 300).cast(pl.Utf8),
        }
    )
    centers = rng.normal(size=(K, dim)).astype(np.float32)
    emb = centers[l1] + 0.7 * rng.normal(size=(n, dim)).astype(np.float32)
    return table, labels, emb, ad_ids


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def timed_cpu(fn):
    """(wall s, process CPU s summed over threads, result): CPU time is steadier on a shared machine."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--max-queries", type=int, default=2000)
    add_report_args(ap)
    args = ap.parse_args()
    header = [
        "n_items", "collisions (pre+post) s", "levels s", "fan-out s", "V-measure s",
        "neighbours s", "sid_report total s", "sid_report CPU s", "collision_rate_pre", "l1_v_measure", "nbr_agree_l1",
    ]
    rows = []
    load_before = os.getloadavg()[0]
    for n in args.sizes:
        table, labels, emb, ids = synthetic(n, args.dim)
        raw = codes_matrix(table["raw_codes"])
        t_col, _ = timed(lambda: (collision_metrics(table["raw_codes"]), collision_metrics(table["codes"])))
        t_lvl, _ = timed(lambda: level_usage_metrics(raw, K))
        t_fan, _ = timed(lambda: fanout_metrics(raw))
        t_vm, _ = timed(lambda: v_measure_metrics(table, labels))
        t_nb, _ = timed(lambda: neighbour_agreement(table, emb, ids, k=10, max_queries=args.max_queries))
        t_all, cpu_all, rep = timed_cpu(
            lambda: sid_report(table, labels, emb, ids, codebook_size=K, k=10, seed=0, max_queries=args.max_queries)
        )
        rows.append(dict(zip(header, [n, t_col, t_lvl, t_fan, t_vm, t_nb, t_all, cpu_all, rep["collision_rate_pre"],
                                      rep["l1_v_measure"], rep["nbr_agree_l1"]])))
    title = (f"SID metric set, {LEVELS} levels x {K} codes, embeddings d={args.dim}, k=10, "
             f"{args.max_queries} neighbour queries; {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
             f"1-min load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after (wall times grow with load)")
    emit("bench_sid_metrics", rows, args=args, title=title)


if __name__ == "__main__":
    main()
