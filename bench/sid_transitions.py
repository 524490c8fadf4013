"""Transition agreement of SID tables next to the test recall their recommenders reached.

For each SID table: the share of consecutive training interactions (one user's item a, then b)
whose SIDs share the level-l prefix (`unisid_pipeline.analysis.transition_agreement`), with its
chance level, and, where a results folder holds `rec_<method>_s<seed>.json` for that table
(bench_recommender.py --json-out), the test R@10 of each such run. Prints one markdown table, also logged to
the MLflow experiment `benchmarks` (bench/report.py; --no-mlflow skips it).

    python bench/sid_transitions.py --sequences bench/out/beauty/sequences.parquet \
        --sids bench/results/beauty/category_paths/sids_*.parquet --results bench/results/beauty/category_paths
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import add_report_args, emit  # noqa: E402
from unisid_pipeline.analysis import transition_agreement  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sequences", required=True, help="user_sequences parquet (train_items column)")
    ap.add_argument("--sids", nargs="+", required=True, help="SID table parquet files named sids_<method>_s<seed>.parquet")
    ap.add_argument("--results", nargs="*", default=[], help="folders of rec_<method>_s<seed>.json to read test R@10 from")
    add_report_args(ap)
    args = ap.parse_args()
    seqs = pl.read_parquet(args.sequences)
    rows = []
    for f in sorted(args.sids):
        name = re.sub(r"^sids_|\.parquet$", "", Path(f).name)
        m = transition_agreement(pl.read_parquet(f), seqs)
        row = {"table": name, **{head: m[k] for head, k in (("agree L1", "seq_agree_l1"), ("chance L1", "seq_chance_l1"),
                                                          ("agree L2", "seq_agree_l2"), ("chance L2", "seq_chance_l2"),
                                                          ("agree L3", "seq_agree_l3"))}}
        for r in args.results:
            js = Path(r) / f"rec_{name}.json"
            row[f"R@10 {Path(r).name}"] = json.loads(js.read_text())["test"]["recall@10"] if js.exists() else None
        rows.append(row)
    emit("sid_transitions", rows, args=args)


if __name__ == "__main__":
    main()
