"""Ingestion: read the configured source, validate, and return clean and rejected tables."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import polars as pl

from unisid_pipeline.data.beauty import load_beauty
from unisid_pipeline.data.readers import read_rows
from unisid_pipeline.data.schema import AD_REQUIRED, CATEGORY_SEP, INTERACTION_REQUIRED
from unisid_pipeline.data.synthetic import SyntheticWorldConfig, generate_world
from unisid_pipeline.data.validation import DEFAULT_MAX_TEXT_CHARS, concat_rejected, validate_ads, validate_interactions

Source = Literal["synthetic", "files", "amazon_beauty"]
SOURCES = ("synthetic", "files", "amazon_beauty")


@dataclass(frozen=True)
class IngestionConfig:
    """Where the ads and interactions come from, and how strictly they are validated."""

    source: Source = "synthetic"
    synthetic: SyntheticWorldConfig = field(default_factory=SyntheticWorldConfig)
    ads_path: str = ""  # source="files": a .csv/.tsv/.jsonl/.parquet file with the raw_ads schema
    interactions_path: str = ""  # source="files": a file with the ad_interactions schema
    category_sep: str = CATEGORY_SEP  # source="files": separator of string category paths (lists need none)
    beauty_dir: str = ""  # source="amazon_beauty": folder with sequential_data.txt etc.
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS
    timestamp_order: Literal["reject", "sort"] = "reject"

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"IngestionConfig.source must be one of {SOURCES}, got {self.source!r}")
        if self.source == "files" and not (self.ads_path and self.interactions_path):
            raise ValueError("IngestionConfig: source='files' needs ads_path and interactions_path")
        if self.source == "amazon_beauty" and not self.beauty_dir:
            raise ValueError("IngestionConfig: source='amazon_beauty' needs beauty_dir (e.g. ../shared/data/amazon-beauty-2014)")
        if not self.category_sep:
            raise ValueError("IngestionConfig.category_sep must be a non-empty string (the separator between the "
                             "levels of a string category_path, e.g. ' > ' or '/')")
        if self.max_text_chars < 1:
            raise ValueError(f"IngestionConfig.max_text_chars must be >= 1, got {self.max_text_chars}")
        if self.timestamp_order not in ("reject", "sort"):
            raise ValueError(f"IngestionConfig.timestamp_order must be 'reject' or 'sort', got {self.timestamp_order!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class IngestionResult:
    raw_ads: pl.DataFrame
    rejected_ads: pl.DataFrame
    ad_interactions: pl.DataFrame
    rejected_interactions: pl.DataFrame
    info: dict


def ingest(config: IngestionConfig) -> IngestionResult:
    info: dict = {"source": config.source}
    if config.source == "synthetic":
        world = generate_world(config.synthetic)
        ads_rows, inter_rows = world.ads, world.interactions
        ads_src = inter_src = f"synthetic(seed={config.synthetic.seed})"
        parse_rej_ads = parse_rej_inter = None
        info["taxonomy_leaves"] = len(world.taxonomy.leaves)
        info["taxonomy_generated_names"] = world.taxonomy.generated
    elif config.source == "amazon_beauty":
        data = load_beauty(config.beauty_dir)
        ads_rows, inter_rows = data.ads, data.interactions
        ads_src = str(Path(config.beauty_dir) / "products_lookup.csv")
        inter_src = str(Path(config.beauty_dir) / "sequential_data.txt")
        parse_rej_ads = parse_rej_inter = None
        info.update(data.info)
    else:
        ads_file = read_rows(config.ads_path, AD_REQUIRED)
        inter_file = read_rows(config.interactions_path, INTERACTION_REQUIRED)
        ads_rows, inter_rows = ads_file.rows, inter_file.rows
        ads_src, inter_src = ads_file.source, inter_file.source
        parse_rej_ads, parse_rej_inter = ads_file.rejected, inter_file.rejected
    # Only user files use the configured separator; the generator and the Beauty reader join levels by " > ".
    sep = config.category_sep if config.source == "files" else CATEGORY_SEP
    ads = validate_ads(ads_rows, ads_src, max_text_chars=config.max_text_chars, category_sep=sep)
    inter = validate_interactions(inter_rows, inter_src, ads.clean["ad_id"], timestamp_order=config.timestamp_order)
    rejected_ads = concat_rejected(parse_rej_ads, ads.rejected)
    rejected_inter = concat_rejected(parse_rej_inter, inter.rejected)
    n_in_ads = ads_rows.height + (parse_rej_ads.height if parse_rej_ads is not None else 0)
    n_in_inter = inter_rows.height + (parse_rej_inter.height if parse_rej_inter is not None else 0)
    info.update({
        "ads_source": ads_src,
        "interactions_source": inter_src,
        "ads_in": n_in_ads,
        "ads_clean": ads.clean.height,
        "ads_rejected": rejected_ads.height,
        "interactions_in": n_in_inter,
        "interactions_clean": inter.clean.height,
        "interactions_rejected": rejected_inter.height,
    })
    if info["ads_in"] != info["ads_clean"] + info["ads_rejected"]:
        raise RuntimeError(f"ad rows lost in validation: {info}")
    if info["interactions_in"] != info["interactions_clean"] + info["interactions_rejected"]:
        raise RuntimeError(f"interaction rows lost in validation: {info}")
    return IngestionResult(ads.clean, rejected_ads, inter.clean, rejected_inter, info)
