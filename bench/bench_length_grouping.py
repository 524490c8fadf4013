"""Benchmark: recommender training with plain random batches vs length-grouped batches.

Trains the same recommender (same SIDs, data and seed) with ``length_pool_batches`` = each of
--pools, one process per setting, all at once (one CPU thread each, so the settings share the machine
alike), and prints a table: seconds per epoch, training loss per epoch, test R@10 / N@10.

    .venv/bin/python bench/bench_length_grouping.py --sequences bench/out/beauty/sequences.parquet \\
        --sids <sids_rq_kmeans_s0.parquet> --users 4000 --epochs 4 --pools 1 8 --seeds 0

Default model: the demo's 2+2-layer, d_model 64 T5 (the TIGER size costs minutes per epoch on a CPU).
The table is also logged to the MLflow experiment `benchmarks` (bench/report.py; --no-mlflow skips it).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import add_report_args, emit  # noqa: E402


def one_run(args: argparse.Namespace) -> None:
    import polars as pl

    from unisid_pipeline.recommender import RecommenderConfig, evaluate_recommender, train_recommender

    seqs = pl.read_parquet(args.sequences).head(args.users)
    cfg = RecommenderConfig(n_encoder_layers=2, n_decoder_layers=2, d_model=64, n_heads=4, d_kv=16, d_ff=256,
                            use_user_token=False, batch_size=args.batch_size, epochs=args.epochs, lr=2e-3,
                            lr_schedule="constant", warmup_steps=50, patience=100, valid_max_users=500,
                            length_pool_batches=args.pool, device=args.device)
    t0 = time.perf_counter()
    model, hist = train_recommender(cfg, pl.read_parquet(args.sids), seqs, seed=args.seed, eval_every=args.epochs)
    train_s = time.perf_counter() - t0
    test = evaluate_recommender(model, seqs, split="test")
    print(json.dumps({"pool": args.pool, "seed": args.seed, "train_s": train_s,
                      "epoch_s": [r["seconds"] for r in hist], "loss": [r["train_loss"] for r in hist],
                      "test_r10": test["recall@10"], "test_n10": test["ndcg@10"]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sequences", required=True, help="user_sequences parquet (bench/beauty_prepare.py)")
    ap.add_argument("--sids", required=True, help="collision-free SID table parquet (ad_id, codes)")
    ap.add_argument("--users", type=int, default=4000, help="first N users of the sequences")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--pools", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--pool", type=int, help=argparse.SUPPRESS)  # internal: one run
    ap.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    add_report_args(ap)
    args = ap.parse_args()
    if args.pool is not None:
        one_run(args)
        return
    base = [sys.executable, __file__, "--sequences", args.sequences, "--sids", args.sids, "--users", str(args.users),
            "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--device", args.device]
    procs = [(p, s, subprocess.Popen(base + ["--pool", str(p), "--seed", str(s)], stdout=subprocess.PIPE, text=True))
             for p in args.pools for s in args.seeds]
    rows = []
    for p, s, proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"run pool={p} seed={s} failed with rc={proc.returncode}")
        rows.append(json.loads(out.strip().splitlines()[-1]))
    emit("bench_length_grouping",
         [{"length_pool_batches": r["pool"], "seed": r["seed"], "s / epoch (mean)": sum(r["epoch_s"]) / len(r["epoch_s"]),
           "train loss per epoch": r["loss"], "test R@10": r["test_r10"], "test N@10": r["test_n10"]} for r in rows],
         args=args, title=f"\n{args.users} users, batch {args.batch_size}, T5 2+2 d64, device {args.device}, "
                          f"{len(procs)} runs at once")


if __name__ == "__main__":
    main()
