"""Data-parallel training on the CPU (gloo): 1 process vs N under torchrun, same global batch, tiny configs.

UniSID: N ranks with grad_accum_steps=1 vs one process with grad_accum_steps=N (the same optimiser steps);
recommender: the same config (global batch = batch_size either way). Prints wall time of the whole torchrun
command (process start and imports included) and the training time the entry point measured.

    python bench/bench_ddp_cpu.py --nproc 2 --unisid-steps 12 --rec-epochs 6
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from unisid_pipeline.data.sequences import build_user_sequences  # noqa: E402
from unisid_pipeline.data.synthetic import SyntheticWorldConfig, generate_world  # noqa: E402
from unisid_pipeline.hierarchy import labels_from_category_path  # noqa: E402


def write_data(d: Path, n_ads: int, n_users: int) -> None:
    world = generate_world(SyntheticWorldConfig(n_ads=n_ads, n_users=n_users, n_advertisers=6, image_dim=4, seed=3))
    world.ads.write_parquet(d / "ads.parquet")
    labels_from_category_path(world.ads).write_parquet(d / "labels.parquet")
    build_user_sequences(world.interactions, max_history=5)[0].write_parquet(d / "seqs.parquet")
    i = np.arange(world.ads.height)
    pl.DataFrame({"ad_id": world.ads["ad_id"], "codes": np.stack([i // 16, i % 16], 1).tolist()}).write_parquet(
        d / "sids.parquet")


def torchrun(nproc: int, module: str, args: list[str]) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                    "-m", module, *args], cwd=REPO, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--unisid-steps", type=int, default=12)
    p.add_argument("--rec-epochs", type=int, default=6)
    p.add_argument("--n-ads", type=int, default=96)
    p.add_argument("--n-users", type=int, default=200)
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        write_data(d, a.n_ads, a.n_users)
        base = dict(model=dict(backbone="tiny", codebook_size=16, emb_dim=16, max_length=64), max_steps=a.unisid_steps,
                    batch_size=8, use_rec=False, checkpoint_every=0, lr_heads=3e-3, code_stats_sample=16)
        rec = dict(n_encoder_layers=1, n_decoder_layers=1, d_model=32, n_heads=2, d_kv=16, d_ff=64, max_history=5,
                   dropout=0.0, batch_size=64, epochs=a.rec_epochs, warmup_steps=2, beam_size=10, n_user_buckets=8)
        for nproc in (1, a.nproc):
            (d / "u.json").write_text(json.dumps({"train": {**base, "grad_accum_steps": a.nproc // nproc}}))
            (d / "r.json").write_text(json.dumps({"model": rec}))
            for name, module, args in (
                ("unisid", "unisid_pipeline.cli.train_unisid",
                 ["--config", str(d / "u.json"), "--ads", str(d / "ads.parquet"), "--labels", str(d / "labels.parquet")]),
                ("recommender", "unisid_pipeline.cli.train_recommender",
                 ["--config", str(d / "r.json"), "--sids", str(d / "sids.parquet"), "--sequences", str(d / "seqs.parquet")]),
            ):
                out = d / f"{name}_{nproc}"
                wall = torchrun(nproc, module, [*args, "--out", str(out)])
                s = json.loads((out / "summary.json").read_text())
                rows.append((name, nproc, wall, s["train_seconds"], s["first_loss"], s["final_loss"]))
    print(f"{'model':<12} {'procs':>5} {'wall s':>8} {'train s':>8} {'first loss':>11} {'final loss':>11}")
    for r in rows:
        print(f"{r[0]:<12} {r[1]:>5} {r[2]:>8.1f} {r[3]:>8.2f} {r[4]:>11.4f} {r[5]:>11.4f}")


if __name__ == "__main__":
    main()
