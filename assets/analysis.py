"""sid_collision_report: every tokenizer's SID table side by side (collisions, usage, V-measure, neighbours, transitions)."""
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    Config,
    ConfigurableResource,
    MetadataValue,
    Output,
    asset,
    asset_check,
)
from pydantic import Field

from assets.metadata import plots_metadata, readable, run_metadata
from assets.resources import MlflowTracking, ProjectHome, optional_input
from unisid_pipeline.analysis import compare_methods, markdown_summary, sid_report
from unisid_pipeline.analysis.plots import plot_bucket_sizes, plot_codebook_usage, plot_v_measure, save_png
from unisid_pipeline.embeddings import frame_to_embeddings

SID_METHODS = ("rq_kmeans", "rq_vae", "unisid")


class ReportConfig(Config):
    """Neighbour-agreement settings."""

    k: int = Field(10, description="neighbours per query (cosine on the ad text embeddings)")
    max_queries: int = Field(2000, description="items sampled as kNN queries")
    seed: int = Field(0, description="query sampling seed")


@asset(group_name="analysis", kinds={"polars", "duckdb", "mlflow"}, owners=["team:analysis"], tags={"stage": "analysis"},
       ins={**{f"{m}_sids": optional_input(f"{m}_sids") for m in SID_METHODS}, "ad_hierarchy_labels": AssetIn(), "ad_text_embeddings": AssetIn(),
            "user_sequences": AssetIn()})
def sid_collision_report(context: AssetExecutionContext, config: ReportConfig, mlflow: MlflowTracking,
                         project_home: ProjectHome, ad_hierarchy_labels: pl.DataFrame, ad_text_embeddings: pl.DataFrame,
                         user_sequences: pl.DataFrame, **sid_tables: pl.DataFrame | None) -> Output[pl.DataFrame]:
    """One row per SID method: collision rate before/after resolution, group sizes, per-level utilization,
    entropy, perplexity, Gini, prefix fan-out, V-measure per level against the hierarchy, neighbour agreement,
    and transition agreement (consecutive training interactions sharing a SID prefix, `seq_agree_l*`). Compares
    whichever SID tables are materialized (at least one)."""
    tables = {name.removesuffix("_sids"): t for name, t in sid_tables.items() if t is not None}
    if not tables:
        raise ValueError("no SID table has been materialized: run e.g. `dagster asset materialize --select "
                         "'+rq_kmeans_sids'` first")
    context.log.info(f"SID tables compared: {', '.join(tables)} (methods not materialized are left out)")
    ad_ids, x = frame_to_embeddings(ad_text_embeddings)
    with mlflow.run_for(context, params={**config.model_dump(), "methods": list(tables)}) as run:
        reports = {}
        for method, table in tables.items():
            reports[method] = sid_report(table, labels=ad_hierarchy_labels, embeddings=x, embedding_ad_ids=ad_ids,
                                         k=config.k, seed=config.seed, max_queries=config.max_queries,
                                         sequences=user_sequences)
            run.log_metrics({f"{method}.{k}": v for k, v in reports[method].items()})
            context.log.info(f"{method}: collision pre {reports[method]['collision_rate_pre']:.4f}, V-measure "
                             f"L1/L2/L3 {[round(reports[method].get(f'l{i}_v_measure', float('nan')), 3) for i in (1, 2, 3)]}, transition "
                             f"agreement L1/L2 {[round(reports[method].get(f'seq_agree_l{i}', float('nan')), 4) for i in (1, 2)]}")
        df = compare_methods(reports)
        summary = markdown_summary(df)
        run.log_text(summary, "sid_report.md")
        run.log_table(df, "sid_report.parquet")
        out_dir = project_home.sub("reports")
        figs = {"bucket_sizes": plot_bucket_sizes(tables), "codebook_usage": plot_codebook_usage(tables),
                "v_measure": plot_v_measure(df)}
        for name, fig in figs.items():
            path = save_png(fig, Path(out_dir) / f"sid_{name}.png")
            run.log_artifact(path, "plots")
        meta = run_metadata(run, mlflow.ui_base)
    return Output(df, metadata=readable({**plots_metadata(figs), **meta, "summary": MetadataValue.md(summary),
                                         "dagster/row_count": df.height}))




class SidCheckThresholds(ConfigurableResource):
    """Thresholds of the SID asset checks (editable in the launchpad's resources section)."""

    max_collision_rate_post: float = Field(0.0, description="largest acceptable post-resolution collision rate")
    min_level_utilization: float = Field(0.05, description="smallest acceptable share of a codebook level in use")
    utilization_severity: Literal["WARN", "ERROR"] = Field("WARN", description="severity of a low-utilization result")
    max_summary_fallback_share: float = Field(0.05, description="largest acceptable share of ads whose LLM summary "
                                              "came out empty (the fallback marker)")


def sid_table_check(method: str):
    """A blocking check on `<method>_sids`: every ad has a distinct SID after collision resolution. A failure stops
    the run's downstream steps (the recommender would decode one SID into two ads)."""

    @asset_check(asset=AssetKey(f"{method}_sids"), name=f"{method}_sids_distinct", blocking=True,
                 description="every ad has its own SID after collision resolution (blocking: stops the recommender)")
    def _check(table: pl.DataFrame) -> AssetCheckResult:
        keys = table.select(pl.col("codes").cast(pl.List(pl.Utf8)).list.join("-")).to_series()
        dup = table.height - keys.n_unique()
        return AssetCheckResult(passed=dup == 0, metadata={"ads": table.height, "ads_sharing_a_sid": dup})

    return _check


def sid_utilization_check(method: str):
    """A check on `<method>_sids`: every level of the raw SIDs uses at least `min_level_utilization` of its codes
    (distinct codes / (largest code + 1)): a collapsed level (the paper-path UniSID once used 14 codes of 256)
    makes the SIDs carry little, whatever the recommender does. Severity from `sid_check_thresholds`."""

    @asset_check(asset=AssetKey(f"{method}_sids"), name=f"{method}_sids_utilization",
                 description="every SID level uses at least min_level_utilization of its codes (collapse check)")
    def _check(table: pl.DataFrame, sid_check_thresholds: SidCheckThresholds) -> AssetCheckResult:
        from unisid_pipeline.sid import sid_table_to_array

        floor = sid_check_thresholds.min_level_utilization
        _, raw = sid_table_to_array(table, "raw_codes")
        usage = {}
        if raw.size:
            size = int(raw.max()) + 1
            usage = {f"l{i + 1}": round(len(np.unique(raw[:, i])) / size, 4) for i in range(raw.shape[1])}
        low = {k: v for k, v in usage.items() if v < floor}
        return AssetCheckResult(passed=bool(usage) and not low,
                                severity=AssetCheckSeverity[sid_check_thresholds.utilization_severity],
                                metadata={"utilization": MetadataValue.json(usage), "floor": floor,
                                          "below_floor": MetadataValue.json(low)})

    return _check


def tokenizer_model_check(method: str):
    """A blocking check on `<method>_model`: its weights are finite. A diverged tokenizer (NaN or infinite weights)
    would still emit codes, all alike; this stops its SID table and everything after it."""

    @asset_check(asset=AssetKey(f"{method}_model"), name=f"{method}_model_finite", blocking=True,
                 description="every weight of the tokenizer is finite (blocking: stops its SID table)")
    def _check(trained) -> AssetCheckResult:
        import torch

        n = bad = 0
        for t in trained.model.state_dict().values():
            if torch.is_floating_point(t):
                n += t.numel()
                bad += int((~torch.isfinite(t)).sum())
        return AssetCheckResult(passed=n > 0 and bad == 0,
                                metadata={"weights": n, "non_finite": bad, "version": trained.version})

    return _check


@asset_check(asset=AssetKey("ad_summaries"), description="share of ads whose summary fell back to the marker text")
def summaries_fallback_share(ad_summaries: pl.DataFrame, sid_check_thresholds: SidCheckThresholds) -> AssetCheckResult:
    from unisid_pipeline.llm.summarizer import FALLBACK_SUMMARY

    n = int((ad_summaries["summary"] == FALLBACK_SUMMARY).sum())
    share = n / ad_summaries.height if ad_summaries.height else 0.0
    return AssetCheckResult(passed=share <= sid_check_thresholds.max_summary_fallback_share,
                            severity=AssetCheckSeverity.WARN,
                            metadata={"fallback_summaries": n, "share": round(share, 4),
                                      "threshold": sid_check_thresholds.max_summary_fallback_share})


@asset_check(asset=AssetKey("sid_collision_report"), description="post-resolution collision rate within its threshold (0 by default)")
def sids_collision_free(sid_collision_report: pl.DataFrame, sid_check_thresholds: SidCheckThresholds) -> AssetCheckResult:
    rates = dict(zip(sid_collision_report["method"].to_list(), sid_collision_report["collision_rate_post"].to_list()))
    passed = all(r <= sid_check_thresholds.max_collision_rate_post for r in rates.values())
    return AssetCheckResult(passed=passed, metadata={"collision_rate_post": MetadataValue.json(rates),
                                                     "threshold": sid_check_thresholds.max_collision_rate_post})


@asset_check(asset=AssetKey("sid_collision_report"), description="every codebook level is used above a floor")
def codebook_utilization_floor(sid_collision_report: pl.DataFrame, sid_check_thresholds: SidCheckThresholds) -> AssetCheckResult:
    floor = sid_check_thresholds.min_level_utilization
    cols = [c for c in sid_collision_report.columns if c.endswith("_utilization")]
    low = {}
    for row in sid_collision_report.iter_rows(named=True):
        bad = {c: row[c] for c in cols if row[c] is not None and row[c] < floor}
        if bad:
            low[row["method"]] = bad
    return AssetCheckResult(passed=not low, severity=AssetCheckSeverity[sid_check_thresholds.utilization_severity],
                            metadata={"floor": floor, "below_floor": MetadataValue.json(low)})


ASSETS = [sid_collision_report]
CHECKS = [sids_collision_free, codebook_utilization_floor, summaries_fallback_share,
          *[sid_table_check(m) for m in SID_METHODS], *[sid_utilization_check(m) for m in SID_METHODS],
          *[tokenizer_model_check(m) for m in SID_METHODS]]
