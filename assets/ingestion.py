"""Ingestion assets: raw_ads, ad_interactions (+ their rejected rows) and user_sequences."""

import polars as pl
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetOut,
    Config,
    Failure,
    MetadataValue,
    Output,
    asset,
    asset_check,
    multi_asset,
)
from pydantic import Field

from assets.config import Ingestion, to_core
from assets.metadata import markdown_table, readable, rounded, run_metadata, table_metadata
from assets.resources import KEEP_PREVIOUS, MlflowTracking
from unisid_pipeline import paths
from unisid_pipeline.data.ingest import IngestionConfig, ingest
from unisid_pipeline.data.sequences import build_user_sequences
from unisid_pipeline.table_diff import TableChange, compare_with_stored

GROUP = "ingestion"
KINDS = {"polars", "duckdb", "mlflow"}


def _change_metadata(change: TableChange) -> dict:
    """raw_ads metadata of a re-run: counts of added / removed / changed ads, the changed fields, a sample, and
    where the previous version is (with the one-liner that restores it)."""
    sample = change.changes.head(10).with_columns(pl.col("fields").list.join(", "))
    return {"ads_added": change.summary["added"], "ads_removed": change.summary["removed"],
            "ads_changed": change.summary["changed"],
            "changed_fields": ", ".join(f"{k}: {v:,}" for k, v in change.summary["fields"].items()) or "none",
            "changes_sample": MetadataValue.md(markdown_table(sample) if sample.height else "no changes"),
            "changes_table": f"{change.db}::raw_ads_changes",
            "previous_version": change.recover if change.changes.height else
            f"no change in this run; table raw_ads_previous in {change.db}, where present, holds the version before "
            "the last change"}


def _no_clean_ads(rejected: pl.DataFrame, info: dict, mlflow: MlflowTracking, meta: dict, stored: bool) -> Failure:
    """The failure of an ingestion that found no clean ad: the first rejects' reasons and where all of them are
    (they were stored before it is raised); raw_ads and ad_interactions keep their previous version."""
    db = paths.warehouse_path(paths.project_home(mlflow.home or None))  # the IO manager's: same home
    first = "; ".join(f"line {r['line']} {r['field']}: {r['reason']}" for r in rejected.head(3).iter_rows(named=True))
    run_id = meta.get("mlflow_run_id")
    where = " and ".join([*([f"warehouse table rejected_ads in {db}"] if stored else []),
                          f"rejected_ads.parquet of MLflow run {getattr(run_id, 'value', run_id)}"])
    return Failure(
        description=(f"ingestion found no clean ads in {info['ads_source']}: {rejected.height:,} rejected"
                     + (f" (first: {first}). All rejected rows are in the {where}" if rejected.height else
                        " (the source has no ad rows)")
                     + ". raw_ads and ad_interactions were not replaced (they keep their previous version); fix "
                       "the source and re-run."),
        metadata={"ads_rejected": rejected.height, "source": str(info["ads_source"]),
                  "rejected_rows": MetadataValue.md(markdown_table(rejected.head(10))) if rejected.height else "none",
                  "rejected_table": f"{db}::rejected_ads" if stored else "not selected"})


@multi_asset(
    outs={
        "raw_ads": AssetOut(description="Validated ads (schema: unisid_pipeline/data/schema.py).", kinds=KINDS, metadata={KEEP_PREVIOUS: "ad_id"}, owners=["team:ingestion"], tags={"stage": "ingestion"}, is_required=False),
        "rejected_ads": AssetOut(description="Ad rows that failed validation, each with its line and reason.", kinds=KINDS, owners=["team:ingestion"], tags={"stage": "ingestion"}, is_required=False),
        "ad_interactions": AssetOut(description="Validated user-ad interactions, sorted by user and time.", kinds=KINDS, owners=["team:ingestion"], tags={"stage": "ingestion"}, is_required=False),
        "rejected_interactions": AssetOut(description="Interaction rows that failed validation, with reasons.", kinds=KINDS, owners=["team:ingestion"], tags={"stage": "ingestion"}, is_required=False),
    },
    group_name=GROUP,
    can_subset=True,
)
def ingested_tables(context: AssetExecutionContext, config: Ingestion, mlflow: MlflowTracking):
    """Read the configured source (synthetic world, user files or Amazon Beauty), validate, and split good/bad rows."""
    core = to_core(config, IngestionConfig)
    with mlflow.run_for(context, params=core.to_dict()) as run:
        result = ingest(core)
        info = result.info
        context.log.info(
            f"ads: {info['ads_clean']:,} clean / {info['ads_rejected']:,} rejected; interactions: "
            f"{info['interactions_clean']:,} clean / {info['interactions_rejected']:,} rejected"
        )
        run.log_metrics({k: v for k, v in info.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        run.log_dict(info, "ingestion_info.json")
        if info.get("unknown_columns"): context.log.warning(f"columns not in the schema, ignored (misspelled? suggestion or None): {info['unknown_columns']}")  # noqa: E701
        for name, frame in (("rejected_ads", result.rejected_ads), ("rejected_interactions", result.rejected_interactions)):
            if frame.height:
                run.log_table(frame, f"{name}.parquet")
        meta = run_metadata(run, mlflow.ui_base)
    for name in ("rejected_ads", "rejected_interactions"):
        frame = getattr(result, name)
        if frame.height:
            reasons = frame.group_by("field").len().sort("len", descending=True)
            context.log.warning(f"{name}: {frame.height:,} rows set aside; by field: {reasons.to_dicts()}")
    outputs = {
        "raw_ads": (result.raw_ads, {
            **table_metadata(result.raw_ads, [c for c in ("ad_id", "title", "category_path", "brand", "price")
                                              if c in result.raw_ads.columns]),
            "source": info["ads_source"]}),
        "rejected_ads": (result.rejected_ads, table_metadata(result.rejected_ads)),
        "ad_interactions": (result.ad_interactions, {
            **table_metadata(result.ad_interactions),
            "n_users": MetadataValue.int(result.ad_interactions["user_id"].n_unique()),
            "source": info["interactions_source"]}),
        "rejected_interactions": (result.rejected_interactions, table_metadata(result.rejected_interactions)),
    }
    # The four tables come from one read and one validation; a subset selection stores only what was asked for.
    selected = context.op_execution_context.selected_output_names
    if "raw_ads" in selected and not result.raw_ads.height:
        selected = [n for n in selected if n.startswith("rejected_")]  # stored, then the step fails (below)
    db = paths.warehouse_path(paths.project_home(mlflow.home or None))
    change = compare_with_stored(db, "raw_ads", result.raw_ads, "ad_id") if "raw_ads" in selected else None
    # A re-run: what it changes in raw_ads. The IO manager (KEEP_PREVIOUS) stores raw_ads, raw_ads_previous and
    # raw_ads_changes in one transaction, so a crash never leaves the new raw_ads without the version it replaced.
    if change is not None:
        outputs["raw_ads"][1].update(_change_metadata(change))
    for name in selected:
        value, metadata = outputs[name]
        yield Output(value, name, metadata=readable({**metadata, **meta}))
        if name == "raw_ads" and change is not None:  # stored
            if change.changes.height:
                context.log.info(f"raw_ads: {change.summary['added']:,} ads added, {change.summary['removed']:,} "
                                 f"removed, {change.summary['changed']:,} changed (table raw_ads_changes); "
                                 f"{change.recover}")
    if "raw_ads" in context.op_execution_context.selected_output_names and not result.raw_ads.height:
        raise _no_clean_ads(result.rejected_ads, info, mlflow, meta, stored="rejected_ads" in selected)


class Sequences(Config):
    """Leave-one-out split settings."""

    max_history: int = Field(20, description="history length cap (TIGER/LETTER use 20)")


@asset(group_name=GROUP, kinds=KINDS, owners=["team:ingestion"], tags={"stage": "ingestion"})
def user_sequences(context: AssetExecutionContext, config: Sequences, mlflow: MlflowTracking,
                   ad_interactions: pl.DataFrame) -> Output[pl.DataFrame]:
    """Per-user click sequences in time order, split leave-one-out: last item test, second-last validation, history <= max_history."""
    with mlflow.run_for(context, params={"max_history": config.max_history}) as run:
        seqs, info = build_user_sequences(ad_interactions, max_history=config.max_history)
        run.log_metrics(info)
        meta = run_metadata(run, mlflow.ui_base)
    context.log.info(f"{info['n_users']:,} users with sequences; {info['n_users_too_short']:,} too short to split")
    return Output(seqs, metadata=readable({**table_metadata(seqs.head(10).with_columns(pl.col(pl.List(pl.Int64)).cast(pl.List(pl.Utf8)).list.join(" "))),
                                  **meta, "dagster/row_count": MetadataValue.int(seqs.height),
                                  "mean_length": info["mean_length"], "users_too_short": info["n_users_too_short"]}))


@asset_check(asset=AssetKey("raw_ads"), description="ad_id unique, titles non-empty, table not empty")
def raw_ads_valid(raw_ads: pl.DataFrame) -> AssetCheckResult:
    dup = raw_ads.height - raw_ads["ad_id"].n_unique()
    empty = raw_ads.filter(pl.col("title").is_null() | (pl.col("title").str.strip_chars() == "")).height
    return AssetCheckResult(passed=raw_ads.height > 0 and dup == 0 and empty == 0,
                            metadata={"rows": raw_ads.height, "duplicate_ids": dup, "empty_titles": empty})


@asset_check(asset=AssetKey("ad_interactions"), additional_ins={"raw_ads": AssetIn("raw_ads")},
             description="every interaction points at a known ad; per-user timestamps non-decreasing")
def ad_interactions_valid(ad_interactions: pl.DataFrame, raw_ads: pl.DataFrame) -> AssetCheckResult:
    unknown = ad_interactions.filter(~pl.col("ad_id").is_in(raw_ads["ad_id"].implode())).height
    backwards = ad_interactions.filter(
        pl.col("timestamp") < pl.col("timestamp").shift(1).over("user_id")).height
    return AssetCheckResult(passed=unknown == 0 and backwards == 0,
                            metadata={"unknown_ad_ids": unknown, "backwards_timestamps": backwards})


@asset_check(asset=AssetKey("rejected_ads"), additional_ins={"raw_ads": AssetIn("raw_ads")},
             description="warns when more than 5% of ad rows were rejected")
def rejected_ads_share(rejected_ads: pl.DataFrame, raw_ads: pl.DataFrame) -> AssetCheckResult:
    total = rejected_ads.height + raw_ads.height
    share = rejected_ads.height / total if total else 0.0
    return AssetCheckResult(passed=share <= 0.05, severity=AssetCheckSeverity.WARN,
                            metadata={"rejected_share": rounded(share),
                                      "top_reasons": MetadataValue.md(markdown_table(
                                          rejected_ads.group_by("field").len().sort("len", descending=True)))})


@asset_check(asset=AssetKey("user_sequences"), description="split is consistent: histories within the cap, targets present")
def user_sequences_valid(user_sequences: pl.DataFrame) -> AssetCheckResult:
    s = user_sequences
    bad = s.filter(
        (pl.col("items").list.len() < 3)
        | (pl.col("test_target") != pl.col("items").list.get(-1))
        | (pl.col("valid_target") != pl.col("items").list.get(-2))
        | (pl.col("train_items").list.len() != pl.col("items").list.len() - 2)
    ).height
    return AssetCheckResult(passed=s.height > 0 and bad == 0, metadata={"users": s.height, "inconsistent_rows": bad})


ASSETS = [ingested_tables, user_sequences]
CHECKS = [raw_ads_valid, ad_interactions_valid, rejected_ads_share, user_sequences_valid]
