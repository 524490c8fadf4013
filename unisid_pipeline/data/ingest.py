"""Ingestion: read the configured source, validate, and return clean and rejected tables."""
from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import polars as pl

from unisid_pipeline.data.beauty import REQUIRED_FILES as BEAUTY_FILES
from unisid_pipeline.data.beauty import load_beauty
from unisid_pipeline.data.beauty_meta import META_FILE as BEAUTY_META_FILE
from unisid_pipeline.data.readers import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_ROWS,
    InputFileError,
    InputLimits,
    ParsedFile,
    confine,
    read_rows,
)
from unisid_pipeline.data.schema import (
    AD_COLUMNS,
    AD_REQUIRED,
    AD_TEXT_COLUMNS,
    CATEGORY_SEP,
    INTERACTION_COLUMNS,
    INTERACTION_REQUIRED,
)
from unisid_pipeline.data.synthetic import SyntheticWorldConfig, generate_world
from unisid_pipeline.data.validation import (
    DEFAULT_MAX_TEXT_CHARS,
    DUPLICATE_POLICIES,
    TIMESTAMP_UNITS,
    concat_rejected,
    validate_ad_files,
    validate_interaction_files,
)

Source = Literal["synthetic", "files", "amazon_beauty"]
SOURCES = ("synthetic", "files", "amazon_beauty")


@dataclass(frozen=True)
class IngestionConfig:
    """Where the ads and interactions come from, and how strictly they are validated."""

    source: Source = "synthetic"
    synthetic: SyntheticWorldConfig = field(default_factory=SyntheticWorldConfig)
    ads_path: str | tuple[str, ...] = ""
    """source="files": a .csv/.tsv/.jsonl/.json/.parquet file with the raw_ads schema, or a list of such files read as one union (see on_duplicate_ad)"""
    interactions_path: str | tuple[str, ...] = ""
    """source="files": a file with the ad_interactions schema, or a list of files read as one union in the given order"""
    on_duplicate_ad: Literal["reject", "last_wins"] = "reject"
    """an ad_id repeated across the ads files: "reject" the repeat (the first is kept) or "last_wins" (a later file's row replaces the earlier one)"""
    category_sep: str = CATEGORY_SEP  # source="files": separator of string category paths (lists need none)
    beauty_dir: str = ""  # source="amazon_beauty": folder with sequential_data.txt etc.
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS
    timestamp_order: Literal["reject", "sort"] = "reject"
    timestamp_unit: Literal["s", "ms"] = "s"
    """unit of the timestamps in the files: "s" (a value >= 1e11 is rejected as milliseconds) or "ms" (divided by 1000; a positive value < 1e11 is rejected as seconds)"""
    datetime_timestamps: Literal["reject", "epoch_seconds"] = "reject"
    """a Parquet Datetime/Date timestamp column: "reject" the file (the schema stores integer seconds) or convert it to "epoch_seconds" (UTC)"""
    max_input_rows: int = DEFAULT_MAX_ROWS
    """an input file with more rows is refused before it is read (Parquet: from its metadata)"""
    max_input_bytes: int = DEFAULT_MAX_BYTES
    """an input file larger than this is refused before it is read (Parquet: its uncompressed size; text: the file size)"""
    allowed_roots: tuple[str, ...] = ()
    """source="files" / "amazon_beauty": folders the input files must lie in (resolved path); empty = the working directory and $UNISID_INPUT_ROOTS (os.pathsep-separated)"""
    follow_symlinks: bool = False
    """source="files" / "amazon_beauty": read an input file reached through a symbolic link (its target must still lie in allowed_roots)"""

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed_roots", tuple(self.allowed_roots))
        for name in ("ads_path", "interactions_path"):
            value = getattr(self, name)
            if not isinstance(value, str):
                value = tuple(value)
                if not all(isinstance(v, str) and v for v in value):
                    raise ValueError(f"IngestionConfig.{name} must be a path or a list of non-empty paths, got {value!r}")
                repeated = sorted({v for v in value if value.count(v) > 1})
                if repeated:
                    raise ValueError(f"IngestionConfig.{name} lists {repeated} twice; list each file once")
                object.__setattr__(self, name, value)
        if self.on_duplicate_ad not in DUPLICATE_POLICIES:
            raise ValueError(f"IngestionConfig.on_duplicate_ad must be one of {DUPLICATE_POLICIES}, got {self.on_duplicate_ad!r}")
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
        if self.timestamp_unit not in TIMESTAMP_UNITS:
            raise ValueError(f"IngestionConfig.timestamp_unit must be one of {TIMESTAMP_UNITS}, got {self.timestamp_unit!r}")
        if self.datetime_timestamps not in ("reject", "epoch_seconds"):
            raise ValueError("IngestionConfig.datetime_timestamps must be 'reject' or 'epoch_seconds', "
                             f"got {self.datetime_timestamps!r}")
        for name in ("max_input_rows", "max_input_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"IngestionConfig.{name} must be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def ads_files(self) -> tuple[str, ...]:
        return (self.ads_path,) if isinstance(self.ads_path, str) else self.ads_path

    @property
    def interactions_files(self) -> tuple[str, ...]:
        return (self.interactions_path,) if isinstance(self.interactions_path, str) else self.interactions_path


@dataclass(frozen=True)
class IngestionResult:
    raw_ads: pl.DataFrame
    rejected_ads: pl.DataFrame
    ad_interactions: pl.DataFrame
    rejected_interactions: pl.DataFrame
    info: dict


def unknown_columns(frame: pl.DataFrame, schema: dict) -> dict[str, str | None]:
    """{column not in the schema: the closest schema column (a likely misspelling) or None}."""
    names = list(schema)
    lower = {n.lower(): n for n in names}
    out = {}
    for c in frame.columns:
        if c != "_line" and c not in schema:
            close = difflib.get_close_matches(c.lower(), list(lower), n=1, cutoff=0.75)
            out[c] = lower[close[0]] if close else None
    return out


def _epoch_seconds(parsed: ParsedFile, mode: str) -> pl.DataFrame:
    """Interaction rows with a Datetime/Date `timestamp` column refused, or converted to epoch seconds."""
    rows = parsed.rows
    dtype = rows.schema.get("timestamp")
    if dtype is None or not (dtype == pl.Date or isinstance(dtype, pl.Datetime)):
        return rows
    if mode != "epoch_seconds":
        raise InputFileError(parsed.source, None, f"column 'timestamp' is a {dtype} column; the schema stores integer "
                             "seconds, and a cast would give days or microseconds",
                             "write the timestamps as integer epoch seconds, or set "
                             "datetime_timestamps='epoch_seconds' to convert them (UTC)")
    return rows.with_columns(pl.col("timestamp").dt.epoch("s"))


def _read_files(config: IngestionConfig, info: dict):
    """(ads files, interactions files) read and parsed; unknown columns recorded in info."""
    limits = InputLimits(max_rows=config.max_input_rows, max_bytes=config.max_input_bytes)
    for path in config.ads_files + config.interactions_files:
        confine(path, config.allowed_roots, config.follow_symlinks)
    ads = [read_rows(p, AD_REQUIRED, text_fields=AD_TEXT_COLUMNS, limits=limits) for p in config.ads_files]
    inter = [read_rows(p, INTERACTION_REQUIRED, limits=limits) for p in config.interactions_files]
    unknown = {}
    for files, schema in ((ads, AD_COLUMNS), (inter, INTERACTION_COLUMNS)):
        for f in files:
            cols = unknown_columns(f.rows, schema)
            if cols:
                unknown[f.source] = cols
    info["unknown_columns"] = unknown
    return ads, [(_epoch_seconds(f, config.datetime_timestamps), f) for f in inter]


def ingest(config: IngestionConfig) -> IngestionResult:
    info: dict = {"source": config.source}
    parse_rej_ads = parse_rej_inter = None
    if config.source == "synthetic":
        world = generate_world(config.synthetic)
        src = f"synthetic(seed={config.synthetic.seed})"
        ads_files, inter_files = [(world.ads, src)], [(world.interactions, src)]
        info["taxonomy_leaves"] = len(world.taxonomy.leaves)
        info["taxonomy_generated_names"] = world.taxonomy.generated
    elif config.source == "amazon_beauty":
        for name in (*BEAUTY_FILES, BEAUTY_META_FILE):  # the folder's files, under the roots as for source="files"
            confine(Path(config.beauty_dir) / name, config.allowed_roots, config.follow_symlinks)
        data = load_beauty(config.beauty_dir)
        ads_files = [(data.ads, str(Path(config.beauty_dir) / "products_lookup.csv"))]
        inter_files = [(data.interactions, str(Path(config.beauty_dir) / "sequential_data.txt"))]
        info.update(data.info)
    else:
        ads, inter = _read_files(config, info)
        ads_files = [(f.rows, f.source) for f in ads]
        inter_files = [(rows, f.source) for rows, f in inter]
        parse_rej_ads = concat_rejected(*[f.rejected for f in ads])
        parse_rej_inter = concat_rejected(*[f.rejected for _, f in inter])
    # Only user files use the configured separator; the generator and the Beauty reader join levels by " > ".
    sep = config.category_sep if config.source == "files" else CATEGORY_SEP
    ads = validate_ad_files(ads_files, max_text_chars=config.max_text_chars, category_sep=sep,
                            on_duplicate=config.on_duplicate_ad)
    inter = validate_interaction_files(inter_files, ads.clean["ad_id"], timestamp_order=config.timestamp_order,
                                       timestamp_unit=config.timestamp_unit)
    rejected_ads = concat_rejected(parse_rej_ads, ads.rejected)
    rejected_inter = concat_rejected(parse_rej_inter, inter.rejected)
    n_in_ads = sum(rows.height for rows, _ in ads_files) + (parse_rej_ads.height if parse_rej_ads is not None else 0)
    n_in_inter = sum(rows.height for rows, _ in inter_files) + (parse_rej_inter.height if parse_rej_inter is not None else 0)
    info.update({
        "ads_source": ", ".join(s for _, s in ads_files),
        "interactions_source": ", ".join(s for _, s in inter_files),
        "ads_in": n_in_ads,
        "ads_clean": ads.clean.height,
        "ads_rejected": rejected_ads.height,
        "ads_upserted": ads.upserted,
        "interactions_in": n_in_inter,
        "interactions_clean": inter.clean.height,
        "interactions_rejected": rejected_inter.height,
    })
    if info["ads_in"] != info["ads_clean"] + info["ads_rejected"] + info["ads_upserted"]:
        raise RuntimeError(f"ad rows lost in validation: {info}")
    if info["interactions_in"] != info["interactions_clean"] + info["interactions_rejected"]:
        raise RuntimeError(f"interaction rows lost in validation: {info}")
    return IngestionResult(ads.clean, rejected_ads, inter.clean, rejected_inter, info)
