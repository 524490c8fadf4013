"""The 3-level hierarchy every SID method is judged against (and UniSID's L_sid positives)."""
from typing import Literal

import polars as pl
from dagster import AssetExecutionContext, Config, MetadataValue, Output, asset
from pydantic import Field

from assets.metadata import readable, run_metadata, table_value
from assets.resources import MlflowTracking
from unisid_pipeline.embeddings import frame_to_embeddings
from unisid_pipeline.hierarchy import derive_hierarchy, labels_from_category_path


class HierarchyConfig(Config):
    """Where the ground-truth hierarchy comes from."""

    source: Literal["auto", "category_path", "derived"] = Field(
        "auto", description="auto: the ads' category_path when at least min_coverage of ads have one, else derived "
        "from text embeddings (e.g. Amazon Beauty without item_meta.jsonl)")
    min_coverage: float = Field(0.5, description="share of ads with a category path needed to use it (auto)")
    branching: list[int] = Field([8, 8, 8], description="derived: clusters per level (top-down recursive k-means)")
    method: Literal["recursive_kmeans", "agglomerative"] = Field("recursive_kmeans", description="derived: clustering")
    seed: int = Field(0, description="derived: clustering seed")


@asset(group_name="tokenizers", kinds={"polars", "duckdb", "mlflow"}, owners=["team:analysis"], tags={"stage": "labels"})
def ad_hierarchy_labels(context: AssetExecutionContext, config: HierarchyConfig, mlflow: MlflowTracking,
                        raw_ads: pl.DataFrame, ad_text_embeddings: pl.DataFrame) -> Output[pl.DataFrame]:
    """ad_id -> level_1/level_2/level_3 (path prefixes): the taxonomy when the data has one, else a derived one.

    The run's metadata and MLflow params say which (`hierarchy_source`, and how it was derived).
    """
    coverage = float(raw_ads["category_path"].is_not_null().mean()) if raw_ads.height else 0.0
    use_path = config.source == "category_path" or (config.source == "auto" and coverage >= config.min_coverage)
    with mlflow.run_for(context, params={**config.model_dump(), "category_path_coverage": coverage}) as run:
        if use_path:
            labels = labels_from_category_path(raw_ads)
            info = {"hierarchy_source": "category_path", "coverage": coverage}
        else:
            ad_ids, x = frame_to_embeddings(ad_text_embeddings)
            labels, derived = derive_hierarchy(x, ad_ids, branching=tuple(config.branching), seed=config.seed,
                                               method=config.method)
            info = {"hierarchy_source": "derived", "coverage": coverage, **derived}
            context.log.warning(f"no category path for {1 - coverage:.0%} of ads: hierarchy DERIVED from text "
                                f"embeddings ({config.method}, branching {config.branching}); V-measures against it "
                                "favour methods built on the same embeddings")
        run.set_tags({"hierarchy_source": info["hierarchy_source"]})
        run.log_dict(info, "hierarchy_info.json")
        n_per_level = {c: labels[c].n_unique() for c in ("level_1", "level_2", "level_3")}
        run.log_metrics({f"n_{k}": v for k, v in n_per_level.items()})
        meta = run_metadata(run, mlflow.ui_base)
    return Output(labels, metadata=readable({
        **meta, "dagster/row_count": labels.height, "hierarchy_source": info["hierarchy_source"],
        "labels_per_level": MetadataValue.json(n_per_level),
        "preview": table_value(labels),
        "how": MetadataValue.json({k: v for k, v in info.items() if isinstance(v, (str, int, float, list, dict))}),
    }))


ASSETS = [ad_hierarchy_labels]
