"""<method>_catalog_sids: each tokenizer's SID table of the growing catalog, extended, never rewritten.

Each materialization keeps every SID the table already holds and gives SIDs only to ads that have none yet, with
the stored (frozen) tokenizer, resolving collisions against the existing rows by the table's own rule
(`unisid_pipeline.sid_incremental`). RQ-KMeans and RQ-VAE read new ads' text embeddings; UniSID reads the new ads
themselves (one forward pass). Job `assign_new_ad_sids` re-ingests the source, embeds (cached) and extends the
table of every tokenizer that has been trained (one that has not is skipped, and says so). A retrained tokenizer
(another model_version) starts its table again from `<method>_sids`, and says so.
"""
from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl
from dagster import AssetExecutionContext, AssetIn, Output, asset

from assets.metadata import device_in_use, readable, run_metadata
from assets.resources import ComputeDevice, MlflowTracking, ProjectHome, optional_input
from assets.tokenizers import GROUP
from unisid_pipeline import paths, warehouse
from unisid_pipeline.artifacts import TrainedTokenizer
from unisid_pipeline.embeddings import frame_to_embeddings
from unisid_pipeline.sid import LazyRowCost, collision_stats, sid_table_to_array
from unisid_pipeline.sid_incremental import assign_new_sids, check_same_weights, new_ad_ids

def _resolution_of(table: pl.DataFrame) -> str:
    """The resolution a SID table was built with: length L + 1 = suffix; length L = reassign, or none when
    SIDs still collide."""
    if table.height == 0:
        return "suffix"
    if table["codes"].list.len()[0] == table["raw_codes"].list.len()[0] + 1:
        return "suffix"
    return "none" if collision_stats(sid_table_to_array(table)[1])["n_colliding_items"] else "reassign"


def _new_from_embeddings(trained: TrainedTokenizer, frame: pl.DataFrame, existing: pl.DataFrame, device: str):
    """(new ad ids, raw codes, reassign cost) of the ads of `frame` (ad_text_embeddings) not in `existing`."""
    ad_ids, x = frame_to_embeddings(frame)
    is_new = new_ad_ids(existing, ad_ids)
    ids, x = ad_ids[is_new], x[is_new]
    model = trained.model
    codes = model.encode(x)
    return ids, codes, LazyRowCost(len(ids), model.rq.codebook_size,
                                   lambda rows: model.last_level_distances(x[rows], codes=codes[rows]))


def _new_from_ads(trained: TrainedTokenizer, ads: pl.DataFrame, existing: pl.DataFrame, device: str):
    """The same for UniSID, which reads the ads (raw_ads rows): SID and last-level scores in one forward pass."""
    ads = ads.filter(new_ad_ids(existing, ads["ad_id"].to_numpy()))
    if ads.height == 0:
        cfg = trained.model.config
        return (np.zeros(0, dtype=np.int64), np.zeros((0, cfg.n_levels), dtype=np.int64),
                np.zeros((0, cfg.codebook_size)))
    codes, _, scores = trained.model.encode(ads, device=device)
    trained.model.cpu()
    return ads["ad_id"].to_numpy().astype(np.int64), codes, -scores


def catalog_sids_asset(method: str, source: str, encode_new: Callable[..., tuple[np.ndarray, np.ndarray, Any]]):
    name = f"{method}_catalog_sids"

    @asset(name=name, group_name=GROUP, kinds={"polars", "duckdb", "mlflow"}, owners=["team:tokenizers"],
           tags={"stage": "tokenizers"}, output_required=False,
           ins={"trained": optional_input(f"{method}_model"), "sids": optional_input(f"{method}_sids"),
                "source": AssetIn(source)},
           description=f"SIDs of every ad in the current catalog by the frozen {method} tokenizer: rows already in "
                       f"the table never change, new ads (from `{source}`) are resolved against them. Skipped while "
                       f"`{method}_model` / `{method}_sids` are not materialized.")
    def _catalog(context: AssetExecutionContext, mlflow: MlflowTracking, project_home: ProjectHome,
                 compute: ComputeDevice, trained: TrainedTokenizer | None, sids: pl.DataFrame | None,
                 source: pl.DataFrame):
        if trained is None or sids is None:
            context.log.info(f"{name}: skipped, {method}_model and {method}_sids have not been materialized")
            return
        db = paths.warehouse_path(project_home.root)
        previous = warehouse.read_table(db, name) if warehouse.has_table(db, name) else None
        if previous is not None and previous.height and previous["model_version"][0] != trained.version:
            context.log.warning(f"tokenizer changed ({previous['model_version'][0]} -> {trained.version}): "
                                f"the catalog SID table starts again from {method}_sids")
            previous = None
        existing = previous if previous is not None else sids
        # The same version name with other weights (a lost MLflow store numbers versions from 1 again): refuse
        # to mix, naming the asset to rebuild.
        try:
            check_same_weights(existing, trained.weights, trained.version)
        except ValueError as exc:
            raise ValueError(f"{name}: {str(exc).replace('<method>_sids', f'{method}_sids')}") from None
        resolution = _resolution_of(existing)
        device = device_in_use(context, compute, "auto", name) if method == "unisid" else "cpu"
        new_ids, codes, cost = encode_new(trained, source, existing, device)
        rows, info = assign_new_sids(existing, new_ids, codes, method=method, model_version=trained.version,
                                     resolution=resolution, last_level_cost=cost, weights_sha256=trained.weights)
        table = pl.concat([existing.select(rows.columns), rows])
        with mlflow.run_for(context, params={"model_version": trained.version, "resolution": resolution}) as run:
            run.log_metrics({"n_existing": info["n_existing"], "n_new": info["n_new"],
                             "n_new_colliding": info["n_new_colliding"],
                             "collision_rate_post": info["post"]["collision_rate"]})
            if info["n_new"]:
                run.log_table(rows, "new_ad_sids.parquet")
            meta = run_metadata(run, mlflow.ui_base)
        context.log.info(f"{method}: {info['n_new']:,} new ads got SIDs ({info['n_new_colliding']:,} resolved against "
                         f"existing ones); {info['n_existing']:,} SIDs kept unchanged")
        yield Output(table, metadata=readable({**meta, "dagster/row_count": table.height, "n_new": info["n_new"],
                                              "n_existing": info["n_existing"], "resolution": resolution,
                                              "collision_rate_post": info["post"]["collision_rate"],
                                              "model_version": trained.version}))

    return _catalog


ASSETS = [catalog_sids_asset("rq_kmeans", "ad_text_embeddings", _new_from_embeddings),
          catalog_sids_asset("rq_vae", "ad_text_embeddings", _new_from_embeddings),
          catalog_sids_asset("unisid", "raw_ads", _new_from_ads)]
NAMES = [a.key.to_user_string() for a in ASSETS]
