"""Benchmark: train + evaluate the TIGER-style generative recommender on one SID table.

Leave-one-out, history <= 20, full ranking over all items by constrained beam search (DESIGN.md §3).
Prints a markdown table: test R@1/5/10/20, N@5/10, MRR, training time, beam-search users/s.

    .venv/bin/python bench/bench_recommender.py --sequences user_sequences.parquet --sids sids.parquet \\
        --device cuda --bf16 --epochs 200 --batch-size 256 --beam-size 20

Without a pipeline run, ``--beauty-txt ../shared/data/amazon-beauty-2014/sequential_data.txt
--random-sids 3x256`` builds user_sequences from the raw Beauty file and random collision-free SIDs
(a sanity/throughput check only: random SIDs carry no semantics). The table is also logged to the MLflow
experiment `benchmarks` (bench/report.py; --no-mlflow skips it), with the --json-out file when given.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import add_report_args, emit  # noqa: E402


# model-size flags -> RecommenderConfig fields (e.g. a capacity variant of a recipe: "--d-model 256 --d-ff 2048")
ARCH_FLAGS = {"--d-model": "d_model", "--d-ff": "d_ff", "--n-heads": "n_heads", "--d-kv": "d_kv",
              "--encoder-layers": "n_encoder_layers", "--decoder-layers": "n_decoder_layers"}


def beauty_sequences(path: str, max_history: int = 20) -> pl.DataFrame:
    """user_sequences (contract of CONTRIBUTING_CORE.md) from a `user item item ...` text file."""
    rows = []
    for line in Path(path).read_text().splitlines():
        parts = [int(x) for x in line.split()]
        if len(parts) < 4:  # user + >= 3 items
            continue
        uid, items = parts[0], parts[1:]
        rows.append(
            {
                "user_id": uid,
                "items": items,
                "train_items": items[:-2],
                "valid_history": items[:-2][-max_history:],
                "valid_target": items[-2],
                "test_history": items[:-1][-max_history:],
                "test_target": items[-1],
            }
        )
    return pl.DataFrame(rows)


def random_sids(ad_ids: np.ndarray, spec: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random L x K codes plus a collision-breaking last level (as TIGER's 4th token)."""
    n_levels, k = (int(x) for x in spec.lower().split("x"))
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, k, size=(len(ad_ids), n_levels))
    _, inverse = np.unique(codes, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    extra = np.zeros(len(ad_ids), dtype=np.int64)
    seen: dict[int, int] = {}
    for i, g in enumerate(inverse.tolist()):
        extra[i] = seen.get(g, 0)
        seen[g] = extra[i] + 1
    return ad_ids.astype(np.int64), np.concatenate([codes, extra[:, None]], axis=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sequences", help="user_sequences parquet")
    p.add_argument("--sids", help="SID table parquet (ad_id, codes)")
    p.add_argument("--beauty-txt", help="build user_sequences from this text file instead of --sequences")
    p.add_argument("--random-sids", help="LxK: random collision-free SIDs instead of --sids, e.g. 3x256")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--beam-size", type=int, default=20)
    p.add_argument("--eval-batch-size", type=int, default=512)
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast for training and decoding")
    p.add_argument("--compile", action="store_true", help="torch.compile the training step (static shapes)")
    p.add_argument("--compile-mode", default="reduce-overhead")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-schedule", default="inverse_sqrt", choices=("inverse_sqrt", "constant", "cosine"))
    p.add_argument("--warmup-steps", type=int, default=1000)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--ema-decay", type=float, default=0.0,
                   help="validate, keep and test an exponential moving average of the weights (e.g. 0.999); 0 = off")
    p.add_argument("--eval-every", type=int, default=1)
    p.add_argument("--valid-max-users", type=int, default=None)
    p.add_argument("--max-train-seconds", type=float, default=None, help="stop after the epoch that ends past this budget")
    p.add_argument("--max-history", type=int, default=20)
    for flag, field in ARCH_FLAGS.items():  # the core defaults (TIGER's 4+4 x d128) unless given
        p.add_argument(flag, dest=field, type=int, default=None, help=f"RecommenderConfig.{field}")
    p.add_argument("--length-pool-batches", type=int, default=None,
                   help="group training rows of similar history length (pools of this many batches); 1 = plain random; "
                        "default: RecommenderConfig's")
    p.add_argument("--compile-length-step", type=int, default=None,
                   help="under --compile: pad batches to a multiple of this many items (default: always max-history)")
    p.add_argument("--no-user-token", action="store_true")
    p.add_argument("--user-token", dest="no_user_token", action="store_false",
                   help="undo an earlier --no-user-token (the last of the two wins), e.g. in a variant appended to a recipe")
    p.add_argument("--no-valid-eval", action="store_true",
                   help="skip the final full-validation ranking (the test split is always ranked)")
    p.add_argument("--extra-test-beams", type=int, nargs="*", default=[],
                   help="also rank the test split with these beam sizes (JSON key test_beams), e.g. 50: does beam 20 cut recall?")
    p.add_argument("--extra-test-fp32", action="store_true",
                   help="with --bf16: also rank the test split decoding in fp32 from the same weights (JSON test_fp32)")
    p.add_argument("--save", help="write the trained model here (safetensors + JSON, no pickle; rank_analysis.py reads it)")
    p.add_argument("--json-out", help="also write the test/valid metrics and run facts as JSON here")
    add_report_args(p)
    args = p.parse_args()
    if args.extra_test_fp32 and not args.bf16:
        p.error("--extra-test-fp32 compares fp32 with bf16 decoding: give --bf16 too (without it the test split is decoded in fp32 already)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)

    import torch

    from unisid_pipeline.recommender import RecommenderConfig, evaluate_recommender, train_recommender

    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    if args.beauty_txt:
        seqs = beauty_sequences(args.beauty_txt, args.max_history)
    elif args.sequences:
        seqs = pl.read_parquet(args.sequences)
    else:
        p.error("give --sequences or --beauty-txt")
    if args.random_sids:
        ad_ids = np.unique(np.concatenate([np.asarray(x) for x in seqs["items"].to_list()]))
        sids: object = random_sids(ad_ids, args.random_sids, args.seed)
        sid_name = f"random {args.random_sids}+1"
    elif args.sids:
        sids = pl.read_parquet(args.sids)
        sid_name = Path(args.sids).name
        if "method" in sids.columns and sids.height:
            sid_name = f"{sids['method'][0]} ({sid_name})"
    else:
        p.error("give --sids or --random-sids")

    cfg = RecommenderConfig(
        epochs=args.epochs, batch_size=args.batch_size, beam_size=args.beam_size, eval_batch_size=args.eval_batch_size,
        bf16=args.bf16, compile=args.compile, compile_mode=args.compile_mode, lr=args.lr,
        lr_schedule=args.lr_schedule, warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay, dropout=args.dropout, patience=args.patience, ema_decay=args.ema_decay,
        valid_max_users=args.valid_max_users, max_train_seconds=args.max_train_seconds, max_history=args.max_history, use_user_token=not args.no_user_token,
        compile_length_step=args.compile_length_step,
        seed=args.seed, device=args.device,
        # the core default unless given
        **{f: getattr(args, f) for f in ("length_pool_batches", *ARCH_FLAGS.values()) if getattr(args, f) is not None},
    )
    t0 = time.perf_counter()
    model, history = train_recommender(cfg, sids, seqs, eval_every=args.eval_every)
    train_s = time.perf_counter() - t0
    test = evaluate_recommender(model, seqs, split="test")
    valid = None if args.no_valid_eval else evaluate_recommender(model, seqs, split="valid")
    test_beams = {w: evaluate_recommender(model, seqs, split="test", beam_size=w) for w in args.extra_test_beams}
    test_fp32 = None
    if args.extra_test_fp32:  # the same weights, beam search without bf16 autocast (nor TF32)
        trained_config, model.config = model.config, dataclasses.replace(model.config, bf16=False)
        torch.backends.cuda.matmul.allow_tf32 = False
        test_fp32 = evaluate_recommender(model, seqs, split="test")
        model.config = trained_config
    if args.save:
        from unisid_pipeline.warehouse import write_object

        write_object(Path(args.save), model)

    evaluated = [r for r in history if r["evaluated"]]
    best = max(evaluated, key=lambda r: (r["valid_recall@10"], r["valid_ndcg@10"]))
    dev = torch.cuda.get_device_name(model.device) if model.device.type == "cuda" else "cpu"
    title = (f"\nSIDs: {sid_name}; users {len(seqs)}; items {model.vocab.n_items}; SID length {model.vocab.n_levels}; "
             f"device {dev}; bf16 {args.bf16}; compile {args.compile and args.compile_mode}; seed {args.seed}\n"
             f"epochs run {len(history)} (best {best['epoch']}), batch {args.batch_size}, lr {args.lr} "
             f"({args.lr_schedule}, warmup {args.warmup_steps}), beam {args.beam_size}")
    splits = [("test", test), *([("valid", valid)] if valid is not None else []),
              *((f"test, beam {w}", m) for w, m in test_beams.items()),
              *([("test, fp32 decoding", test_fp32)] if test_fp32 is not None else [])]
    rows = [{"split": name, "R@1": m["recall@1"], "R@5": m["recall@5"], "R@10": m["recall@10"], "R@20": m["recall@20"],
             "N@5": m["ndcg@5"], "N@10": m["ndcg@10"], "MRR": m["mrr"], "train s": train_s,
             "beam users/s": m["users_per_s"]} for name, m in splits]
    if args.json_out:
        import json

        Path(args.json_out).write_text(json.dumps({
            "sids": sid_name, "seed": args.seed, "device": dev, "epochs_run": len(history), "best_epoch": best["epoch"],
            "train_seconds": train_s, "config": cfg.to_dict(), "test": test, "valid": valid, "history": history,
            "test_beams": {str(w): m for w, m in test_beams.items()}, "test_fp32": test_fp32,
        }, default=float, indent=1))
    emit("bench_recommender", rows, args=args, title=title,
         params={"sids_name": sid_name, "device_name": dev, "epochs_run": len(history), "best_epoch": best["epoch"]},
         artifacts=[args.json_out] if args.json_out else [])


if __name__ == "__main__":
    main()
