"""Train UniSID from parquet tables, in one process or under torchrun (DDP).

    python -m unisid_pipeline.cli.train_unisid --config run.json --ads raw_ads.parquet \\
        --labels ad_hierarchy_labels.parquet [--summaries ad_summaries.parquet] --out DIR
    torchrun --nproc_per_node=2 -m unisid_pipeline.cli.train_unisid ...   # same arguments

run.json: {"train": UniSIDTrainConfig.to_dict(), "seed": 0, "device": "cpu", "checkpoint_dir": null}.
--ads: the raw_ads schema; --labels: ad_id, level_1, level_2, level_3 (strings, null = unknown);
--summaries: ad_id, summary (needed for rec_target='summary'); --sequences: the user_sequences table
(needed for emb_positives='co_interaction').
Rank 0 writes DIR/model.safetensors (the model, stored without pickle: warehouse.write_object), DIR/history.json ({"step": [...],
"epoch": [...]}) and DIR/summary.json (world size, seconds, losses, each rank's weight sha256).
"""
from __future__ import annotations

import logging
import time

from unisid_pipeline.cli.common import (
    HISTORY_FILE, MODEL_FILE, SUMMARY_FILE, base_parser, every, read_config, read_parquet, reporter, run_main,
    write_json, write_model,
)
from unisid_pipeline.distributed import DistContext
from unisid_pipeline.seeding import cpu_determinism, resolve_device
from unisid_pipeline.unisid import UniSIDTrainConfig, train_unisid
from unisid_pipeline.unisid.tables import aligned_inputs, sequence_inputs

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    p = base_parser("Train UniSID (single process or torchrun DDP)")
    p.add_argument("--ads", required=True, help="raw_ads parquet")
    p.add_argument("--labels", required=True, help="ad_hierarchy_labels parquet (ad_id, level_1..level_3)")
    p.add_argument("--summaries", default=None, help="ad_summaries parquet (ad_id, summary)")
    p.add_argument("--sequences", default=None, help="user_sequences parquet (needed for emb_positives='co_interaction')")
    args = p.parse_args(argv)
    cfg = read_config(args.config, ("train",))
    train = UniSIDTrainConfig.from_dict(cfg["train"])
    seed, device = int(cfg.get("seed", 0)), str(cfg.get("device", "cpu"))
    ads = read_parquet(args.ads, "--ads")
    summaries, level_labels = aligned_inputs(ads, read_parquet(args.summaries, "--summaries"),
                                             read_parquet(args.labels, "--labels"))
    partners, retrieval_pairs = sequence_inputs(ads, read_parquet(args.sequences, "--sequences"))
    ctx = DistContext.from_env(resolve_device(device))
    with reporter(ctx.is_main) as rep, cpu_determinism(ctx.device):
        due = every(10.0)

        def on_step(row: dict) -> None:
            if due() or row["step"] == 1:
                rep.info(f"unisid step {row['step']}: loss {row['loss']:.4f} ({row['ads_per_s']:.1f} ads/s, "
                         f"{ctx.world_size} rank(s))")

        def on_epoch(row: dict) -> None:
            rep.info(f"unisid epoch {row['epoch']}: " + ", ".join(
                f"{k} {v:.3f}" for k, v in row.items() if isinstance(v, float)))
            rep.message({"kind": "epoch", **row})

        t0 = time.perf_counter()
        model, history = train_unisid(train, ads, summaries, level_labels, seed=seed, device=device,
                                      checkpoint_dir=cfg.get("checkpoint_dir"), on_step=on_step, on_epoch=on_epoch,
                                      partners=partners, retrieval_pairs=retrieval_pairs)
        seconds = time.perf_counter() - t0
        replicas = ctx.replica_fingerprints(model)
        if len(set(replicas)) != 1:
            raise RuntimeError(f"the ranks ended with different UniSID weights {replicas}: DDP lost sync")
        if ctx.is_main:
            args.out.mkdir(parents=True, exist_ok=True)
            steps = history["step"]
            summary = {"world_size": ctx.world_size, "seed": seed, "device": str(ctx.device), "n_ads": ads.height,
                       "steps": len(steps), "train_seconds": seconds, "first_loss": steps[0]["loss"] if steps else None,
                       "final_loss": steps[-1]["loss"] if steps else None, "replica_sha256": replicas}
            write_model(args.out / MODEL_FILE, model)
            write_json(args.out / HISTORY_FILE, history)
            write_json(args.out / SUMMARY_FILE, summary)
            rep.info(f"unisid trained on {ctx.world_size} rank(s) in {seconds:.1f}s; wrote {args.out}")
            rep.materialization({"world_size": ctx.world_size, "train_seconds": seconds, "steps": len(steps),
                                 "final_loss": summary["final_loss"], "state_sha256": replicas[0]})
    return 0


if __name__ == "__main__":
    run_main(main)
