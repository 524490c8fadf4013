"""Read the Amazon Beauty 2014 5-core layout (P5 / S3-Rec split) into the ad and interaction schemas.

Files (see the dataset's README): `sequential_data.txt` (user item item ..., chronological),
`datamaps.json` (id2item: item id -> ASIN), `item_id_to_int.json` (ASIN -> global_product_id),
`products_lookup.csv` (global_product_id -> name, the title) and, when present, `item_meta.jsonl`
(item id -> category path and brand; read by `beauty_meta`: the first "Beauty" category list
without its root, e.g. "Makeup > Nails > Nail Polish", and the brand with HTML entities unescaped,
"Unknown" as null). Without item_meta.jsonl the items have titles only and `info["category_path"]`
says so. There is no price or description. Sequences carry no timestamps, so `timestamp` is the
position of the item in the user's sequence (0, 1, 2, ...), which keeps the order exactly.

The 7 items whose title is empty keep a placeholder title "Amazon product <ASIN>" so the standard
item set (12,101 items) and the published protocol stay intact; `load_beauty` reports how many.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from unisid_pipeline.data.beauty_meta import META_FILE, join_item_meta
from unisid_pipeline.data.readers import InputFileError

REQUIRED_FILES = ("sequential_data.txt", "datamaps.json", "item_id_to_int.json", "products_lookup.csv")


@dataclass(frozen=True)
class BeautyData:
    ads: pl.DataFrame  # `_line` + raw_ads columns (title; category_path and brand when item_meta.jsonl exists)
    interactions: pl.DataFrame  # `_line` + ad_interactions columns
    info: dict


def load_beauty(directory: str | Path) -> BeautyData:
    directory = Path(directory)
    if not directory.is_dir():
        raise InputFileError(directory, None, "Amazon Beauty folder not found",
                             "set beauty_dir to the folder holding sequential_data.txt (e.g. ../shared/data/amazon-beauty-2014)")
    missing = [f for f in REQUIRED_FILES if not (directory / f).exists()]
    if missing:
        raise InputFileError(directory, None, f"missing file(s) {missing}", f"the folder must hold {list(REQUIRED_FILES)}")
    try:
        datamaps = json.loads((directory / "datamaps.json").read_text(encoding="utf-8"))
        id2item: dict[str, str] = datamaps["id2item"]
    except (json.JSONDecodeError, KeyError) as exc:
        raise InputFileError(directory / "datamaps.json", None, f"cannot read id2item ({exc})",
                             "use the P5 datamaps.json with an 'id2item' object") from exc
    asin_to_gid: dict[str, int] = json.loads((directory / "item_id_to_int.json").read_text(encoding="utf-8"))
    names = pl.read_csv(directory / "products_lookup.csv", columns=["global_product_id", "name"],
                        schema_overrides={"global_product_id": pl.Int64, "name": pl.Utf8})
    items = pl.DataFrame({
        "ad_id": [int(k) for k in id2item],
        "asin": list(id2item.values()),
    }).with_columns(pl.col("asin").replace_strict(asin_to_gid, default=None, return_dtype=pl.Int64).alias("global_product_id"))
    items = items.join(names, on="global_product_id", how="left").sort("ad_id")
    empty = items.filter(pl.col("name").is_null() | (pl.col("name").str.strip_chars() == ""))
    items = items.with_columns(
        pl.when(pl.col("name").is_null() | (pl.col("name").str.strip_chars() == ""))
        .then(pl.lit("Amazon product ") + pl.col("asin"))
        .otherwise(pl.col("name")).alias("title")
    )
    meta_path = directory / META_FILE
    if meta_path.exists():
        items, meta_info = join_item_meta(items, meta_path)
        attributes = [pl.col("category_path"), pl.col("brand")]
    else:
        meta_info = {"category_path": f"absent ({META_FILE} not found: titles only); derive a hierarchy for SID quality",
                     "brand": f"absent ({META_FILE} not found)"}
        attributes = []
    ads = items.select(
        pl.col("ad_id").rank("ordinal").cast(pl.Int64).alias("_line"),
        pl.col("ad_id").cast(pl.Int64),
        pl.col("title"),
        *attributes,
    )

    users: list[np.ndarray] = []
    ids: list[np.ndarray] = []
    pos: list[np.ndarray] = []
    lines: list[np.ndarray] = []
    with open(directory / "sequential_data.txt", encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            parts = line.split()
            if not parts:
                continue
            try:
                vals = np.asarray([int(p) for p in parts], dtype=np.int64)
            except ValueError as exc:
                raise InputFileError(directory / "sequential_data.txt", line_no, f"non-integer token ({exc})",
                                     "each line must be 'user_id item_id item_id ...'") from exc
            seq = vals[1:]
            users.append(np.full(len(seq), vals[0]))
            ids.append(seq)
            pos.append(np.arange(len(seq), dtype=np.int64))
            lines.append(np.full(len(seq), line_no))
    interactions = pl.DataFrame({
        "_line": np.concatenate(lines), "user_id": np.concatenate(users),
        "ad_id": np.concatenate(ids), "timestamp": np.concatenate(pos),
    })
    info = {
        "source": "amazon_beauty",
        "directory": str(directory.resolve()),
        "n_items": ads.height,
        "n_users": len(users),
        "n_interactions": interactions.height,
        "n_placeholder_titles": empty.height,
        "placeholder_title_ad_ids": empty["ad_id"].to_list(),
        "timestamp": "position in the user's sequence (the data has no clock)",
        **meta_info,
    }
    return BeautyData(ads=ads, interactions=interactions, info=info)
