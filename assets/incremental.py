"""rq_kmeans_catalog_sids: the RQ-KMeans SID table of the growing catalog, extended, never rewritten.

Each materialization keeps every SID the table already holds and gives SIDs only to ads that have
none yet, with the stored (frozen) `rq_kmeans_model`, resolving collisions against the existing
rows (`unisid_pipeline.sid_incremental`). Job `assign_new_ad_sids` re-ingests the source, embeds
(cached) and extends this table without retraining the tokenizer. A retrained tokenizer (another
model_version) starts the table again from `rq_kmeans_sids`, and says so.
"""
import polars as pl
from dagster import AssetExecutionContext, AssetIn, Output, asset

from assets.metadata import readable, run_metadata
from assets.resources import MlflowTracking, ProjectHome
from assets.tokenizers import GROUP
from unisid_pipeline import paths, warehouse
from unisid_pipeline.artifacts import TrainedTokenizer
from unisid_pipeline.embeddings import frame_to_embeddings
from unisid_pipeline.sid import LazyRowCost, collision_stats, sid_table_to_array
from unisid_pipeline.sid_incremental import assign_new_sids, new_ad_ids

NAME = "rq_kmeans_catalog_sids"


def _resolution_of(table: pl.DataFrame) -> str:
    """The resolution a SID table was built with: length L + 1 = suffix; length L = reassign, or none when
    SIDs still collide."""
    if table.height == 0:
        return "suffix"
    if table["codes"].list.len()[0] == table["raw_codes"].list.len()[0] + 1:
        return "suffix"
    return "none" if collision_stats(sid_table_to_array(table)[1])["n_colliding_items"] else "reassign"


@asset(name=NAME, group_name=GROUP, kinds={"polars", "duckdb", "mlflow"}, owners=["team:tokenizers"],
       tags={"stage": "tokenizers"},
       ins={"trained": AssetIn("rq_kmeans_model"), "rq_kmeans_sids": AssetIn(), "ad_text_embeddings": AssetIn()})
def rq_kmeans_catalog_sids(context: AssetExecutionContext, mlflow: MlflowTracking, project_home: ProjectHome,
                           trained: TrainedTokenizer, rq_kmeans_sids: pl.DataFrame,
                           ad_text_embeddings: pl.DataFrame) -> Output[pl.DataFrame]:
    """SIDs of every ad in the current catalog: previous rows unchanged, new ads assigned by the frozen tokenizer."""
    db = paths.warehouse_path(project_home.root)
    previous = warehouse.read_table(db, NAME) if warehouse.has_table(db, NAME) else None
    if previous is not None and previous.height and previous["model_version"][0] != trained.version:
        context.log.warning(f"tokenizer changed ({previous['model_version'][0]} -> {trained.version}): "
                            "the catalog SID table starts again from rq_kmeans_sids")
        previous = None
    existing = previous if previous is not None else rq_kmeans_sids
    resolution = _resolution_of(existing)
    ad_ids, x = frame_to_embeddings(ad_text_embeddings)
    is_new = new_ad_ids(existing, ad_ids)
    new_ids, new_x = ad_ids[is_new], x[is_new]
    model = trained.model
    codes = model.encode(new_x)
    cost = LazyRowCost(len(new_ids), model.rq.codebook_size,
                       lambda rows: model.last_level_distances(new_x[rows], codes=codes[rows]))
    rows, info = assign_new_sids(existing, new_ids, codes, method="rq_kmeans", model_version=trained.version,
                                 resolution=resolution, last_level_cost=cost)
    table = pl.concat([existing.select(rows.columns), rows])
    with mlflow.run_for(context, params={"model_version": trained.version, "resolution": resolution}) as run:
        run.log_metrics({"n_existing": info["n_existing"], "n_new": info["n_new"],
                         "n_new_colliding": info["n_new_colliding"],
                         "collision_rate_post": info["post"]["collision_rate"]})
        if info["n_new"]:
            run.log_table(rows, "new_ad_sids.parquet")
        meta = run_metadata(run, mlflow.ui_base)
    context.log.info(f"{info['n_new']:,} new ads got SIDs ({info['n_new_colliding']:,} resolved against existing "
                     f"ones); {info['n_existing']:,} SIDs kept unchanged")
    return Output(table, metadata=readable({**meta, "dagster/row_count": table.height, "n_new": info["n_new"],
                                   "n_existing": info["n_existing"], "resolution": resolution,
                                   "collision_rate_post": info["post"]["collision_rate"],
                                   "model_version": trained.version}))


ASSETS = [rq_kmeans_catalog_sids]
