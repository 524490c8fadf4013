"""Amazon Beauty benchmark: tokenizers (RQ-VAE, RQ-KMeans, UniSID) -> SIDs -> TIGER recommender, per seed.

Stages (each also runs on its own):
  tokenize  for every method and seed: train the tokenizer, build the SID table (suffix resolution),
            write <out>/sids_<method>_s<seed>.parquet and the SID quality report <out>/sid_report.parquet
  train     launch one recommender run per (method, seed) as parallel processes
            (bench/bench_recommender.py --json-out), wait, and print the comparison table
The inputs come from bench/beauty_prepare.py (ads, sequences, title embeddings, summaries, labels).

    python bench/beauty_benchmark.py all --data bench/out/beauty --out bench/out/beauty_results \
        --device cuda --backbone <MiniLM folder> --seeds 0 1 2
    python bench/beauty_benchmark.py summarize --out <folder of rec_*.json> [--also <folder> ...] [--group table]

The comparison table (train, summarize) is also logged to the MLflow experiment `benchmarks` with every run's
results as downstream.parquet (bench/report.py; --no-mlflow skips it, here and in the recommender runs it starts).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.report import add_report_args, emit  # noqa: E402

METRICS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10")
PUBLISHED = {  # DESIGN.md §3, same protocol
    "TIGER (RQ-VAE), own paper": (0.0454, 0.0648, 0.0321, 0.0384),
    "TIGER + RQ-KMeans (public reproduction)": (0.0452, 0.0655, 0.0304, 0.0369),
    "TIGER-UniSID (paper)": (0.0482, 0.0741, 0.0323, 0.0406),
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def tokenize(args) -> None:
    from unisid_pipeline.analysis import compare_methods, sid_report
    from unisid_pipeline.sid import build_sid_table

    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ads = pl.read_parquet(data / "ads.parquet")
    emb = pl.read_parquet(data / args.embeddings)  # (the GPU image has no duckdb: no unisid_pipeline.embeddings here)
    ad_ids = emb["ad_id"].to_numpy()
    x = np.ascontiguousarray(emb["embedding"].to_numpy(), dtype=np.float32).reshape(emb.height, -1)
    labels = pl.read_parquet(data / "labels.parquet")
    seqs = pl.read_parquet(data / "sequences.parquet") if (data / "sequences.parquet").exists() else None  # seq_agree_l*
    if args.branching:  # re-derive the hierarchy (UniSID's L_sid targets; V-measure reference) at another granularity
        from unisid_pipeline.hierarchy import derive_hierarchy

        labels, info = derive_hierarchy(x, ad_ids, branching=tuple(args.branching), seed=0)
        log(f"derived hierarchy {args.branching}: {info}")
    reports = {}
    for method in args.methods:
        for seed in args.seeds:
            t0 = time.perf_counter()
            if method == "rq_kmeans":
                from unisid_pipeline.models.rq import RQKMeansConfig, fit_rq_kmeans

                tok, _ = fit_rq_kmeans(RQKMeansConfig(), x, seed=seed, device=args.device)
                ids, raw, cost = ad_ids, tok.encode(x), tok.last_level_distances(x)
            elif method == "rq_vae":
                from unisid_pipeline.models.rq import RQVAEConfig, train_rq_vae

                rq_cfg = RQVAEConfig(epochs=args.rqvae_epochs, **({} if args.rqvae_optimizer is None else {"optimizer": args.rqvae_optimizer}),
                                     **({} if args.rqvae_lr is None else {"lr": args.rqvae_lr}),
                                     **({} if args.rqvae_latent_dim is None else {"latent_dim": args.rqvae_latent_dim}),
                                     standardize_inputs=args.rqvae_standardize,
                                     reinit_dead_codes=not args.rqvae_no_reinit)
                tok, hist = train_rq_vae(rq_cfg, x, seed=seed, device=args.device)
                ids, raw, cost = ad_ids, tok.encode(x), tok.last_level_distances(x)
                log(f"rq_vae seed {seed}: final loss {hist['loss'][-1]:.4f}, usage "
                    f"{[round(hist[f'usage_level_{l}'][-1], 3) for l in range(3)]}")
            elif method == "unisid":
                from unisid_pipeline.hierarchy import encode_level_labels
                from unisid_pipeline.unisid import UniSIDConfig, UniSIDTrainConfig, train_unisid

                summaries = ads.select("ad_id").join(pl.read_parquet(data / args.summaries).select("ad_id", "summary"), on="ad_id", how="left")
                lab = ads.select("ad_id").join(labels, on="ad_id", how="left")
                from unisid_pipeline.unisid.tables import sequence_inputs

                given = lambda **kw: {k: v for k, v in kw.items() if v is not None}  # noqa: E731 (None = the config's default)
                cfg = UniSIDTrainConfig(model=UniSIDConfig(backbone=str(Path(args.backbone).resolve()), use_image=False,
                                                           **given(sid_source=args.unisid_sid_source)),
                                        epochs=args.unisid_epochs, batch_size=args.unisid_batch_size,
                                        rec_decoder=args.unisid_rec_decoder, checkpoint_every=0,
                                        **given(emb_positives=args.unisid_emb_positives, lr_backbone=args.unisid_lr_backbone))
                ad_ids_u = ads["ad_id"].to_numpy()
                partners, vpairs = sequence_inputs(ads, seqs)
                epochs_log = []

                def on_epoch(r, seed=seed):
                    epochs_log.append(r)
                    log(f"unisid seed {seed} epoch {r['epoch']}: " + ", ".join(f"{k} {v:.4f}" for k, v in r.items() if isinstance(v, float)))

                model, hist = train_unisid(cfg, ads, summaries["summary"].to_list(),
                                           encode_level_labels(lab.select("level_1", "level_2", "level_3")),
                                           seed=seed, device=args.device, on_epoch=on_epoch,
                                           partners=partners, retrieval_pairs=vpairs)
                codes, emb_u, logits = model.encode(ads, batch_size=256, device=args.device)
                ids, raw, cost = ad_ids_u, codes, -logits
                pl.DataFrame({"ad_id": ad_ids_u, "embedding": emb_u.astype(np.float16)}).write_parquet(
                    out / f"emb_{method}_s{seed}.parquet")
                (out / f"history_{method}_s{seed}.json").write_text(json.dumps({"epoch": epochs_log, "config": cfg.to_dict()}, default=str))
            else:
                raise ValueError(f"unknown method {method}")
            table, info = build_sid_table(ids, raw, method=method, model_version=f"{method}-s{seed}", resolution="suffix",
                                          last_level_cost=cost)
            table.write_parquet(out / f"sids_{method}_s{seed}.parquet")
            rep = sid_report(table, labels=labels, embeddings=x, embedding_ad_ids=ad_ids, codebook_size=256, sequences=seqs)
            rep["tokenizer_seconds"] = time.perf_counter() - t0
            reports[f"{method}_s{seed}"] = rep
            log(f"{method} seed {seed}: collisions {info['pre']['collision_rate']:.4f} -> {info['post']['collision_rate']:.4f}, "
                f"V L1/L2/L3 {[round(rep[f'l{l}_v_measure'], 4) for l in (1, 2, 3)]}, neighbour agreement L1/L2 "
                f"{[round(rep[f'nbr_agree_l{l}'], 4) for l in (1, 2)]}, transition agreement L1/L2 "
                f"{[round(rep[f'seq_agree_l{l}'], 4) for l in (1, 2)] if seqs is not None else '-'}, {rep['tokenizer_seconds']:.0f}s")
    df = compare_methods(reports)
    df.write_parquet(out / "sid_report.parquet")
    print(df.select("method", "collision_rate_pre", "l1_v_measure", "l2_v_measure", "l3_v_measure",
                    "l1_utilization", "nbr_agree_l1", "tokenizer_seconds"))


def train(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    procs = []
    for method in args.methods:
        for seed in args.seeds:
            sids = Path(args.sids_dir or out) / f"sids_{method}_s{seed}.parquet"
            js = out / f"rec_{method}_s{seed}.json"
            if js.exists():
                continue
            cmd = [sys.executable, str(REPO / "bench" / "bench_recommender.py"), "--sequences",
                   str(Path(args.data) / "sequences.parquet"), "--sids", str(sids), "--device", args.device,
                   "--seed", str(seed), "--epochs", str(args.rec_epochs), "--batch-size", str(args.rec_batch_size),
                   "--lr", str(args.rec_lr), "--warmup-steps", str(args.rec_warmup), "--patience", str(args.rec_patience),
                   "--eval-every", str(args.rec_eval_every), "--valid-max-users", str(args.valid_max_users),
                   "--eval-batch-size", str(args.eval_batch_size), "--json-out", str(js)]
            cmd += ["--lr-schedule", args.rec_lr_schedule, "--dropout", str(args.rec_dropout),
                    "--weight-decay", str(args.rec_weight_decay)]
            if args.rec_length_pool is not None:
                cmd += ["--length-pool-batches", str(args.rec_length_pool)]
            if args.rec_max_seconds:
                cmd += ["--max-train-seconds", str(args.rec_max_seconds)]
            if args.rec_no_user_token:
                cmd.append("--no-user-token")
            if args.bf16:
                cmd.append("--bf16")
            if args.no_mlflow:
                cmd.append("--no-mlflow")
            if args.compile:
                cmd += ["--compile", "--compile-mode", args.compile_mode]
                if args.rec_compile_length_step:
                    cmd += ["--compile-length-step", str(args.rec_compile_length_step)]
            logf = open(out / f"rec_{method}_s{seed}.log", "w")
            procs.append((method, seed, subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT)))
            log(f"started recommender {method} seed {seed}")
    for method, seed, p in procs:
        rc = p.wait()
        log(f"recommender {method} seed {seed} finished rc={rc}")
    summarize(args)


def summarize(args) -> None:
    out = Path(args.out)
    rows = []
    for js in sorted(p for folder in (out, *map(Path, args.also)) for p in folder.glob("rec_*.json")):
        d = json.loads(js.read_text())
        method = js.stem.removeprefix("rec_").rsplit("_s", 1)[0]
        if args.group == "table":  # "rq_vae (sids_rq_vae600std_s0.parquet)" -> rq_vae600std: one row per kind of table
            table = re.search(r"sids_(.+)_s\d+\.parquet", d.get("sids", ""))
            if table is None:
                raise SystemExit(f"{js}: no SID table file named in its 'sids' field ({d.get('sids')!r}); "
                                 "use --group run for it")
            method = table.group(1)
        extra = {f"recall@10_beam{b}": m["recall@10"] for b, m in (d.get("test_beams") or {}).items()}
        if d.get("test_fp32"):  # --extra-test-fp32: the same weights decoded without bf16
            extra.update({f"{m}_fp32": d["test_fp32"][m] for m in ("recall@10", "ndcg@10")})
        rows.append({"method": method, "seed": d["seed"], **{m: d["test"][m] for m in METRICS},
                     "epochs_run": d["epochs_run"], "best_epoch": d.get("best_epoch"), "train_s": d["train_seconds"],
                     **extra})
    if not rows:
        print("no results yet")
        return
    df = pl.DataFrame(rows, infer_schema_length=None)  # runs with and without --extra-test-beams mix
    agg = df.group_by("method", maintain_order=True).agg(
        pl.len().alias("seeds"), *[pl.format("{} ± {}", pl.col(m).mean().round(4), pl.col(m).std().fill_null(0).round(4)).alias(m)
                                   for m in METRICS], pl.col("epochs_run").mean().alias("epochs"), pl.col("train_s").mean().round(0))
    print(df.sort("method", "seed"))
    table = [{"method": f"{r['method']} (ours)", "seeds": r["seeds"], **dict(zip(("R@5", "R@10", "N@5", "N@10"),
                                                                                 (r[m] for m in METRICS)))}
             for r in agg.iter_rows(named=True)]
    table += [{"method": name, "seeds": None, **dict(zip(("R@5", "R@10", "N@5", "N@10"), vals))}
              for name, vals in PUBLISHED.items()]
    df.write_parquet(out / "downstream.parquet")
    emit("beauty_benchmark", table, args=args, params={"runs": df.height},
         artifacts=[out / "downstream.parquet"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["tokenize", "train", "summarize", "all"])
    ap.add_argument("--data", default="bench/out/beauty")
    ap.add_argument("--also", nargs="+", default=[], metavar="DIR",
                    help="summarize: further folders of rec_*.json pooled with --out's (e.g. two sessions' results)")
    ap.add_argument("--group", choices=("run", "table"), default="run",
                    help="summarize: one row per run name (rec_<name>_s<seed>.json), or per kind of SID table "
                         "(sids_<kind>_s<seed>.parquet), pooling every run on those tables")
    ap.add_argument("--out", default="bench/out/beauty_results")
    ap.add_argument("--embeddings", default="embeddings.parquet")
    ap.add_argument("--methods", nargs="+", default=["rq_vae", "rq_kmeans", "unisid"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--backbone", default=".beauty_minilm")
    ap.add_argument("--rqvae-epochs", type=int, default=200)
    ap.add_argument("--rqvae-optimizer", default=None, help="RQVAEConfig.optimizer (default: the config's, adamw)")
    ap.add_argument("--rqvae-lr", type=float, default=None, help="RQVAEConfig.lr (default: the config's)")
    ap.add_argument("--rqvae-latent-dim", type=int, default=None,
                    help="RQVAEConfig.latent_dim (default: the config's, TIGER's 32)")
    ap.add_argument("--rqvae-standardize", action="store_true",
                    help="RQVAEConfig.standardize_inputs: per-dimension standardized encoder input")
    ap.add_argument("--rqvae-no-reinit", action="store_true",
                    help="RQVAEConfig.reinit_dead_codes=False: k-means init only, as TIGER describes (no dead-code restarts)")
    ap.add_argument("--unisid-epochs", type=int, default=3)
    ap.add_argument("--unisid-batch-size", type=int, default=128)
    ap.add_argument("--unisid-rec-decoder", default="tiny", help="tiny | smollm2 (frozen) | a local causal LM folder")
    ap.add_argument("--unisid-sid-source", default=None, choices=("head", "embedding_rq"),
                    help="UniSIDConfig.sid_source (default: the config's, embedding_rq; head = the paper's)")
    ap.add_argument("--unisid-emb-positives", default=None, choices=("view", "co_interaction"),
                    help="UniSIDTrainConfig.emb_positives (default: the config's, co_interaction; view = the paper's)")
    ap.add_argument("--unisid-lr-backbone", type=float, default=None, help="UniSIDTrainConfig.lr_backbone (default 4e-5)")
    ap.add_argument("--branching", nargs=3, type=int, default=None,
                    help="re-derive the 3-level hierarchy from the embeddings with this branching (default: labels.parquet)")
    ap.add_argument("--summaries", default="summaries.parquet", help="L_rec targets in --data (ad_id, summary)")
    ap.add_argument("--rec-epochs", type=int, default=100)
    ap.add_argument("--rec-batch-size", type=int, default=256)
    ap.add_argument("--rec-lr", type=float, default=1e-3)
    ap.add_argument("--rec-warmup", type=int, default=1000)
    ap.add_argument("--rec-patience", type=int, default=5)
    ap.add_argument("--rec-lr-schedule", default="inverse_sqrt", choices=("inverse_sqrt", "constant", "cosine"))
    ap.add_argument("--rec-dropout", type=float, default=0.1)
    ap.add_argument("--rec-weight-decay", type=float, default=0.01)
    ap.add_argument("--rec-no-user-token", action="store_true", help="no hashed user token in the encoder input")
    ap.add_argument("--rec-length-pool", type=int, default=None,
                    help="RecommenderConfig.length_pool_batches (group rows of similar history length; 1 = off; "
                         "default: the config's default)")
    ap.add_argument("--rec-eval-every", type=int, default=2)
    ap.add_argument("--valid-max-users", type=int, default=5000)
    ap.add_argument("--compile", action="store_true", help="torch.compile the recommender's training step")
    ap.add_argument("--compile-mode", default="reduce-overhead", help="torch.compile mode (reduce-overhead = CUDA graphs)")
    ap.add_argument("--rec-compile-length-step", type=int, default=None,
                    help="under --compile, pad batches to a multiple of this many history items (None: always 20)")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--rec-max-seconds", type=float, default=None, help="training time budget of each recommender run")
    ap.add_argument("--sids-dir", default=None, help="read sids_<method>_s<seed>.parquet from here (default: --out)")
    ap.add_argument("--eval-batch-size", type=int, default=256)
    add_report_args(ap)
    args = ap.parse_args()
    if args.stage in ("tokenize", "all"):
        tokenize(args)
    if args.stage in ("train", "all"):
        train(args)
    if args.stage == "summarize":
        summarize(args)


if __name__ == "__main__":
    main()
