"""Wall time of each asset in a Dagster run of this project, from the instance's event log.

    python bench/graph_timings.py [RUN_ID] [--out timings.csv]     # default: the latest run in $DAGSTER_HOME

One row per step (start, seconds, status) and one per asset: a graph-backed recommender's time runs from its
first step's start to its last step's end (its seeds train side by side under the multiprocess executor).
Prints the asset table as markdown; both tables are also logged to the MLflow experiment `benchmarks`
(bench/report.py; --no-mlflow skips it).
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import polars as pl
from dagster import DagsterEventType, DagsterInstance

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import Report, add_report_args  # noqa: E402


def step_table(instance: DagsterInstance, run_id: str) -> pl.DataFrame:
    starts, ends, status = {}, {}, {}
    for e in instance.all_logs(run_id):
        if not e.is_dagster_event or e.step_key is None:
            continue
        t = e.dagster_event.event_type
        if t == DagsterEventType.STEP_START:
            starts.setdefault(e.step_key, e.timestamp)
        elif t in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
            ends[e.step_key], status[e.step_key] = e.timestamp, t.value
    t0 = min(starts.values())
    rows = [{"step": k, "asset": k.split(".")[0].split("[")[0], "start_s": round(s - t0, 1),
             "seconds": round(ends.get(k, s) - s, 1), "status": status.get(k, "RUNNING")} for k, s in starts.items()]
    return pl.DataFrame(rows).sort("start_s")


def asset_table(steps: pl.DataFrame) -> pl.DataFrame:
    spans = defaultdict(lambda: [float("inf"), 0.0])
    for r in steps.iter_rows(named=True):
        lo, hi = spans[r["asset"]]
        spans[r["asset"]] = [min(lo, r["start_s"]), max(hi, r["start_s"] + r["seconds"])]
    return pl.DataFrame([{"asset": a, "start_s": lo, "wall_s": round(hi - lo, 1)} for a, (lo, hi) in spans.items()]).sort("start_s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_id", nargs="?", help="default: the latest run")
    ap.add_argument("--out", help="also write the step table here (.csv)")
    add_report_args(ap)
    args = ap.parse_args()
    instance = DagsterInstance.get()
    run_id = args.run_id or instance.get_runs(limit=1)[0].run_id
    steps = step_table(instance, run_id)
    assets = asset_table(steps)
    total = float((steps["start_s"] + steps["seconds"]).max())
    rep = Report("graph_timings", {"dagster_run_id": run_id}, args=args)
    rep.table(assets.to_dicts(), title=f"run {run_id}: {total:,.0f} s from the first step's start to the last step's end")
    rep.table(steps.to_dicts(), key="steps", show=False)
    if args.out:
        steps.write_csv(args.out)
        assets.write_csv(args.out.replace(".csv", "_assets.csv"))
    rep.log([args.out, args.out.replace(".csv", "_assets.csv")] if args.out else [])


if __name__ == "__main__":
    main()
