"""How much sequence structure survives a narrower item space: RQ-KMeans on the raw title embeddings and on
their PCA projections to k dimensions (k = the RQ-VAE's latent width and wider), one SID table each, scored by
transition agreement (`unisid_pipeline.analysis.transition_agreement`: the share of consecutive training
interactions whose SIDs share the level-l prefix) and the raw collision rate. Prints one markdown table.

    python bench/sid_projection.py --data bench/out/beauty --dims 32 64 128 --seed 0     # 25 s on an idle 2-core CPU

--data is a bench/beauty_prepare.py folder (embeddings.parquet, sequences.parquet). The table is also logged to
the MLflow experiment `benchmarks` (bench/report.py; --no-mlflow skips it).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import add_report_args, emit  # noqa: E402
from unisid_pipeline.analysis import transition_agreement  # noqa: E402
from unisid_pipeline.embeddings import frame_to_embeddings  # noqa: E402
from unisid_pipeline.models.rq import RQKMeansConfig, fit_rq_kmeans  # noqa: E402
from unisid_pipeline.sid import build_sid_table  # noqa: E402


def pca(x: np.ndarray, k: int) -> np.ndarray:
    """The centred rows of x on their top-k principal axes (float32, contiguous)."""
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return np.ascontiguousarray(centred @ vt[:k].T, dtype=np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="bench/out/beauty")
    ap.add_argument("--dims", nargs="+", type=int, default=[32, 64, 128])
    ap.add_argument("--seed", type=int, default=0)
    add_report_args(ap)
    args = ap.parse_args()
    ad_ids, x = frame_to_embeddings(pl.read_parquet(Path(args.data) / "embeddings.parquet"))
    seqs = pl.read_parquet(Path(args.data) / "sequences.parquet")
    too_wide = [k for k in args.dims if not 1 <= k < x.shape[1]]
    if too_wide:
        ap.error(f"--dims {too_wide}: each must be between 1 and {x.shape[1] - 1} (the embeddings are {x.shape[1]}-d)")
    spaces = [(f"raw {x.shape[1]}-d", x)] + [(f"PCA {k}-d", pca(x, k)) for k in args.dims]
    rows = []
    for name, z in spaces:
        t0 = time.perf_counter()
        tok, _ = fit_rq_kmeans(RQKMeansConfig(), z, seed=args.seed, device="cpu")
        table, info = build_sid_table(ad_ids, tok.encode(z), method="rq_kmeans", model_version=f"rq_kmeans-{name}",
                                      resolution="suffix", last_level_cost=tok.last_level_distances(z))
        m = transition_agreement(table, seqs)
        rows.append({"item space": name, "raw collisions": info["pre"]["collision_rate"], "agree L1": m["seq_agree_l1"],
                     "chance L1": m["seq_chance_l1"], "agree L2": m["seq_agree_l2"], "agree L3": m["seq_agree_l3"],
                     "seconds": time.perf_counter() - t0})
        print(f"{name}: done", file=sys.stderr, flush=True)
    emit("sid_projection", rows, args=args)


if __name__ == "__main__":
    main()
