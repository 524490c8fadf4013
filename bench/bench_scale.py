"""Large synthetic catalogs on the CPU: time and peak memory of every stage, and how they grow.

    .venv/bin/python bench/bench_scale.py --n-ads 10000 100000 1000000

Each catalog size runs in a fresh subprocess through the core functions the assets call:
ingest (synthetic world, n_users = n_ads / 5; validation; user sequences) -> template summaries
(TemplateSummarizer, DuckDB summary cache) -> text embeddings -> RQ-KMeans fit (on a random
sample of --fit-sample rows) -> SID assignment (chunked encoding of every ad with the frozen
tokenizer, collision resolution) -> collision report (`sid_report` with category-path labels and
neighbour agreement). Every table is written to a DuckDB warehouse as the IO manager would.

Text embeddings use --encoder: `hashed_bow` (default; the model-free hashed bag-of-words of
`unisid_pipeline.hashed_encoder`, NOT a sentence model) or `minilm` (all-MiniLM-L6-v2: hours at
1M ads on 2 CPU cores). The printed table names the encoder.

Peak memory per stage: the process's peak RSS (VmHWM) reset before the stage through
/proc/self/clear_refs, so it includes the tables the process still holds from earlier stages.
Timings are marked "loaded" when the 1-minute load average exceeded the core count. The tables are also
logged to the MLflow experiment `benchmarks` (bench/report.py; --no-mlflow skips it).

    .venv/bin/python bench/bench_scale.py --n-ads 500 --fit-sample 0 --codebook-size 16 --n-iter 2 \
        --max-queries 50 --hashed-dim 32                                   # smallest
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import Report, add_report_args  # noqa: E402

STAGES = ("ingest", "summaries", "embeddings", "tokenizer_fit", "sid_assignment", "collision_report")


def _status_kb(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def run_one(args: argparse.Namespace, n_ads: int) -> dict:
    import numpy as np
    import polars as pl

    from unisid_pipeline import warehouse
    from unisid_pipeline.analysis import compare_methods, sid_report
    from unisid_pipeline.data.ingest import IngestionConfig, ingest
    from unisid_pipeline.data.schema import ad_text
    from unisid_pipeline.data.sequences import build_user_sequences
    from unisid_pipeline.data.synthetic import SyntheticWorldConfig
    from unisid_pipeline.embeddings import embed_texts_cached, embeddings_to_frame
    from unisid_pipeline.hierarchy import labels_from_category_path
    from unisid_pipeline.llm import SummaryCache, TemplateSummarizer, summarize_ads
    from unisid_pipeline.models.rq import RQKMeansConfig, fit_rq_kmeans
    from unisid_pipeline.sid import build_sid_table

    import torch

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    work = Path(tempfile.mkdtemp(prefix=f"bench_scale_{n_ads}_", dir=args.workdir))
    db, cache_db = work / "warehouse.duckdb", work / "cache.duckdb"
    rows: dict[str, dict] = {}
    resettable = _reset_peak()

    def stage(name: str, fn):
        _reset_peak()
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
        rows[name] = {"seconds": seconds, "peak_rss_mb": _status_kb("VmHWM") / 1024,
                      "rss_after_mb": _status_kb("VmRSS") / 1024, "load": max(load0, os.getloadavg()[0])}
        print(f"  n={n_ads:,} {name}: {seconds:.1f}s, peak RSS {rows[name]['peak_rss_mb']:.0f} MB", file=sys.stderr, flush=True)
        return out

    def do_ingest():
        cfg = IngestionConfig(synthetic=SyntheticWorldConfig(n_ads=n_ads, n_users=max(10, n_ads // 5), seed=0))
        res = ingest(cfg)
        seqs, _ = build_user_sequences(res.ad_interactions)
        for name, frame in (("raw_ads", res.raw_ads), ("ad_interactions", res.ad_interactions), ("user_sequences", seqs)):
            warehouse.write_table(db, name, frame)
        return res.raw_ads, res.info

    raw_ads, info = stage("ingest", do_ingest)
    if args.stop_after == "ingest":
        return {"n_ads": n_ads, "n_users": max(10, n_ads // 5), "torch_threads": torch.get_num_threads(),
                "n_interactions": info["interactions_clean"], "encoder": "-", "dim": 0, "stages": rows}

    def do_summaries():
        con = SummaryCache(str(cache_db))
        table = summarize_ads(raw_ads, TemplateSummarizer(), con, chunk_size=args.summary_chunk)
        warehouse.write_table(db, "ad_summaries", table)
        con.con.close()
        return table.height

    stage("summaries", do_summaries)

    def do_embeddings():
        if args.encoder == "hashed_bow":
            from unisid_pipeline.hashed_encoder import HashedBowConfig, HashedBowEncoder

            encoder = HashedBowEncoder(HashedBowConfig(dim=args.hashed_dim))
        else:
            from unisid_pipeline.embeddings import TextEncoder

            encoder = TextEncoder(device="cpu")
        ad_ids = raw_ads["ad_id"].to_numpy()
        x = embed_texts_cached(ad_ids, ad_text(raw_ads).to_list(), encoder, str(cache_db), chunk_size=args.embed_chunk)
        warehouse.write_table(db, "ad_text_embeddings", embeddings_to_frame(ad_ids, x))
        return ad_ids, x, encoder.model_id

    ad_ids, x, encoder_id = stage("embeddings", do_embeddings)

    def do_fit():
        kwargs = {"fit_sample_size": args.fit_sample} if args.fit_sample else {}
        cfg = RQKMeansConfig(n_levels=args.levels, codebook_size=args.codebook_size, n_iter=args.n_iter, **kwargs)
        tok, _ = fit_rq_kmeans(cfg, x, seed=0, device="cpu")
        return tok

    tok = stage("tokenizer_fit", do_fit)

    def do_assign():
        codes = tok.encode(x)
        if args.resolution == "reassign":
            if args.dense_cost:
                cost = tok.last_level_distances(x)
            else:
                from unisid_pipeline.sid import LazyRowCost

                cost = LazyRowCost(len(ad_ids), args.codebook_size,
                                   lambda r: tok.last_level_distances(x[r], codes=codes[r]))
        else:
            cost = tok.last_level_distances(x) if args.dense_cost else None  # what the old asset computed
        table, sid_info = build_sid_table(ad_ids, codes, "rq_kmeans", "bench", args.resolution, cost)
        warehouse.write_table(db, "rq_kmeans_sids", table)
        return table, sid_info

    table, sid_info = stage("sid_assignment", do_assign)

    def do_report():
        labels = labels_from_category_path(raw_ads)
        rep = sid_report(table, labels=labels, embeddings=x, embedding_ad_ids=ad_ids, k=10, seed=0,
                         max_queries=args.max_queries)
        df = compare_methods({"rq_kmeans": rep})
        warehouse.write_table(db, "sid_collision_report", df)
        return rep

    rep = stage("collision_report", do_report)
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return {
        "n_ads": n_ads, "n_users": max(10, n_ads // 5), "torch_threads": torch.get_num_threads(),
        "n_interactions": info["interactions_clean"], "encoder": encoder_id, "dim": int(x.shape[1]),
        "peak_resettable": resettable, "stages": rows,
        "collision_rate_pre": sid_info["pre"]["collision_rate"], "collision_rate_post": sid_info["post"]["collision_rate"],
        "resolution_used": sid_info["resolution_used"], "l1_v_measure": rep.get("l1_v_measure"),
        "l3_v_measure": rep.get("l3_v_measure"), "nbr_agree_l1": rep.get("nbr_agree_l1"),
    }


def fit_exponent(ns: list[int], values: list[float]) -> float:
    """b of the least-squares fit log(value) = a + b log(n)."""
    lx = [math.log(n) for n in ns]
    ly = [math.log(max(v, 1e-9)) for v in values]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    den = sum((a - mx) ** 2 for a in lx)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / den if den else float("nan")


def print_table(results: list[dict], args: argparse.Namespace) -> None:
    cores = os.cpu_count() or 1
    ns = [r["n_ads"] for r in results]
    rep = Report("bench_scale", args=args)
    rows = []
    for name in (*[st for st in STAGES if st in results[0]["stages"]], "total"):
        row: dict = {"stage": name}
        secs, mems, loaded_at = [], [], []
        for r in results:
            if name == "total":
                s = sum(v["seconds"] for v in r["stages"].values())
                m = max(v["peak_rss_mb"] for v in r["stages"].values())
                loaded = any(v["load"] > cores for v in r["stages"].values())
            else:
                s, m, loaded = r["stages"][name]["seconds"], r["stages"][name]["peak_rss_mb"], r["stages"][name]["load"] > cores
            secs.append(s)
            mems.append(m)
            row[f"{r['n_ads']:,} ads: s"], row[f"{r['n_ads']:,} ads: peak RSS MB"] = s, m
            if loaded:
                loaded_at.append(f"{r['n_ads']:,}")
        if len(ns) > 1:
            row["time exponent"], row["memory exponent"] = fit_exponent(ns, secs), fit_exponent(ns, mems)
        row["loaded at"] = ", ".join(loaded_at) or "-"
        rows.append(row)
    rep.table(rows, title=f"encoder: {results[0]['encoder']} (dim {results[0]['dim']}); "
                          f"torch threads: {results[0].get('torch_threads')}")
    if "collision_rate_pre" in results[0]:
        print()
        rep.table([{"ads": r["n_ads"], "interactions": r["n_interactions"], "collision rate pre": r["collision_rate_pre"],
                    "post": r["collision_rate_post"], "resolution": r["resolution_used"], "V L1": r["l1_v_measure"],
                    "V L3": r["l3_v_measure"], "nbr agree L1": r["nbr_agree_l1"]} for r in results], key="sid_quality")
    rep.log([args.json] if args.json else [])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-ads", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--encoder", choices=("hashed_bow", "minilm"), default="hashed_bow")
    p.add_argument("--hashed-dim", type=int, default=256)
    p.add_argument("--fit-sample", type=int, default=65536, help="RQ-KMeans fit sample (0 = all rows)")
    p.add_argument("--n-iter", type=int, default=20)
    p.add_argument("--levels", type=int, default=3)
    p.add_argument("--codebook-size", type=int, default=256)
    p.add_argument("--resolution", choices=("suffix", "reassign"), default="suffix")
    p.add_argument("--dense-cost", action="store_true", help="build the full (n, K) cost matrix (the pre-scale path)")
    p.add_argument("--summary-chunk", type=int, default=8192)
    p.add_argument("--embed-chunk", type=int, default=8192)
    p.add_argument("--max-queries", type=int, default=2000)
    p.add_argument("--workdir", default=None, help="where the per-run DuckDB files go (default: system temp)")
    p.add_argument("--keep", action="store_true", help="keep the DuckDB files")
    p.add_argument("--stop-after", choices=("ingest",), default=None, help="run only the stages up to this one")
    p.add_argument("--torch-threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    p.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)
    add_report_args(p)
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_one(args, args.one)))
        return
    results = []
    argv = [a for a in sys.argv[1:]]
    for n in args.n_ads:
        load = os.getloadavg()[0]
        print(f"n_ads={n:,} (load {load:.1f})", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, *argv, "--one", str(n)], stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"n_ads={n} failed (exit {proc.returncode})")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        res["wall_s"] = time.perf_counter() - t0
        results.append(res)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(results, indent=1))
    print_table(results, args)


if __name__ == "__main__":
    main()
