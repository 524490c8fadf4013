"""Train the generative recommender from parquet tables, in one process or under torchrun (DDP).

    python -m unisid_pipeline.cli.train_recommender --config run.json --sids unisid_sids.parquet \\
        --sequences user_sequences.parquet --out DIR
    torchrun --nproc_per_node=2 -m unisid_pipeline.cli.train_recommender ...   # same arguments

run.json: {"model": RecommenderConfig.to_dict(), "seed": null, "device": null, "eval_every": null}
(seed/device/eval_every null = the model config's). --sids: ad_id, codes (collision-free); --sequences: the
user_sequences contract. Rank 0 writes DIR/model.safetensors (the model, stored without pickle: warehouse.write_object),
DIR/history.json (per-epoch list) and DIR/summary.json.
"""
from __future__ import annotations

import time

from unisid_pipeline.cli.common import (
    HISTORY_FILE, MODEL_FILE, SUMMARY_FILE, base_parser, read_config, read_parquet, reporter, run_main, write_json,
    write_model,
)
from unisid_pipeline.distributed import DistContext
from unisid_pipeline.recommender import RecommenderConfig, train_recommender
from unisid_pipeline.seeding import resolve_device


def main(argv: list[str] | None = None) -> int:
    p = base_parser("Train the generative recommender (single process or torchrun DDP)")
    p.add_argument("--sids", required=True, help="SID table parquet (ad_id, codes)")
    p.add_argument("--sequences", required=True, help="user_sequences parquet")
    args = p.parse_args(argv)
    cfg = read_config(args.config, ("model",))
    config = RecommenderConfig.from_dict(cfg["model"])
    seed = config.seed if cfg.get("seed") is None else int(cfg["seed"])
    device = config.device if cfg.get("device") is None else str(cfg["device"])
    sids = read_parquet(args.sids, "--sids")
    sequences = read_parquet(args.sequences, "--sequences")
    ctx = DistContext.from_env(resolve_device(device))
    with reporter(ctx.is_main) as rep:
        def on_epoch(row: dict) -> None:
            valid = row.get("valid_recall@10")
            rep.info(f"recommender epoch {row['epoch']}: loss {row['train_loss']:.4f}"
                     + (f", valid R@10 {valid:.4f}" if valid is not None else "") + f" ({ctx.world_size} rank(s))")
            rep.message({"kind": "epoch", **row})

        t0 = time.perf_counter()
        model, history = train_recommender(config, sids, sequences, seed=seed, device=device, on_epoch=on_epoch,
                                           eval_every=None if cfg.get("eval_every") is None else int(cfg["eval_every"]))
        seconds = time.perf_counter() - t0
        replicas = ctx.replica_fingerprints(model.t5)
        if len(set(replicas)) != 1:
            raise RuntimeError(f"the ranks ended with different recommender weights {replicas}: DDP lost sync")
        if ctx.is_main:
            args.out.mkdir(parents=True, exist_ok=True)
            summary = {"world_size": ctx.world_size, "seed": seed, "device": str(ctx.device),
                       "epochs_run": len(history), "train_seconds": seconds,
                       "first_loss": history[0]["train_loss"], "final_loss": history[-1]["train_loss"],
                       "replica_sha256": replicas}
            write_model(args.out / MODEL_FILE, model)
            write_json(args.out / HISTORY_FILE, history)
            write_json(args.out / SUMMARY_FILE, summary)
            rep.info(f"recommender trained on {ctx.world_size} rank(s) in {seconds:.1f}s; wrote {args.out}")
            rep.materialization({k: summary[k] for k in ("world_size", "train_seconds", "epochs_run", "final_loss")})
    return 0


if __name__ == "__main__":
    run_main(main)
