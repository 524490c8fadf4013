"""Read `item_meta.jsonl` of the Amazon Beauty folder: the category path and brand of every item.

One JSON object per line: `item_id` (the P5 id of sequential_data.txt, our ad_id), `asin`, `title`,
`brand`, `categories` (a list of category lists, root first, e.g. [["Beauty", "Makeup", "Nails"]]),
`price`, `description`. Only item_id, asin, brand and categories are read.

- category_path: the first list whose root is "Beauty" (a few items also carry a "Clothing, Shoes &
  Jewelry" path), without that root, levels joined by " > "; an item with no Beauty list keeps its
  first list as it is. HTML entities are unescaped. No list, or only the root, gives null.
- brand: HTML entities unescaped (`L&#39;Oreal Paris` -> `L'Oreal Paris`; also the few brands
  escaped twice, `Kirk&amp;#39;s Soap` -> `Kirk's Soap`); empty and the literal
  "Unknown" of the source become null.

A line that cannot be used raises `InputFileError` with the file, the line, the field and the fix.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import polars as pl

from unisid_pipeline.data.readers import InputFileError
from unisid_pipeline.data.schema import CATEGORY_SEP

META_FILE = "item_meta.jsonl"
ROOT = "Beauty"
META_COLUMNS = {"_meta_line": pl.Int64, "ad_id": pl.Int64, "asin": pl.Utf8, "category_path": pl.Utf8,
                "brand": pl.Utf8, "brand_unknown": pl.Boolean, "n_category_lists": pl.Int64}
_EXAMPLE = ('{"item_id": 1, "asin": "B004756YJA", "brand": "OPI", '
            '"categories": [["Beauty", "Makeup", "Nails", "Nail Polish"]]}')


def _unescape(text: str) -> str:
    """HTML entities unescaped until none is left: 4 brands of the source are escaped twice ("Kirk&amp;#39;s Soap")."""
    for _ in range(3):
        plain = html.unescape(text)
        if plain == text:
            break
        text = plain
    return text.strip()


def _category_path(categories, path: Path, line: int) -> str | None:
    def bad(problem: str) -> InputFileError:
        return InputFileError(path, line, f"field 'categories' {problem}",
                              f"give a list of category lists, root first, e.g. {_EXAMPLE}")

    if categories is None:
        return None
    if not isinstance(categories, list):
        raise bad(f"is {type(categories).__name__}, not a list")
    lists = []
    for cats in categories:
        if not isinstance(cats, list):
            raise bad(f"holds {json.dumps(cats)[:60]}, not a list (a flat list must be wrapped: [[...]])")
        if not all(isinstance(c, str) for c in cats):
            raise bad(f"has a non-string level in {json.dumps(cats)[:80]}")
        levels = [_unescape(c) for c in cats]
        if any(not c for c in levels):
            raise bad(f"has an empty level in {json.dumps(cats)[:80]}")
        if any(CATEGORY_SEP in c for c in levels):
            raise bad(f"has a level containing {CATEGORY_SEP!r} (it separates levels in category_path) "
                      f"in {json.dumps(cats)[:80]}")
        if levels:
            lists.append(levels)
    if not lists:
        return None
    chosen = next((c[1:] for c in lists if c[0] == ROOT), lists[0])
    return CATEGORY_SEP.join(chosen) if chosen else None


def _brand(brand, path: Path, line: int) -> str | None:
    if brand is None:
        return None
    if not isinstance(brand, str):
        raise InputFileError(path, line, f"field 'brand' is {type(brand).__name__}, not a string",
                             "give the brand as a string, or null when unknown")
    brand = _unescape(brand)
    return None if brand == "" or brand.casefold() == "unknown" else brand


def read_item_meta(path: str | Path) -> pl.DataFrame:
    """One row per item: `_meta_line`, `ad_id`, `asin`, `category_path`, `brand`, `brand_unknown` (the source
    said "Unknown"), `n_category_lists`."""
    path = Path(path)
    rows: list[dict] = []
    first_line: dict[int, int] = {}
    with open(path, "rb") as fh:
        for line, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise InputFileError(path, line, f"non-UTF-8 bytes at byte {exc.start}", "save the file as UTF-8") from exc
            except json.JSONDecodeError as exc:
                raise InputFileError(path, line, f"invalid JSON ({exc.msg} at column {exc.colno})",
                                     f"each line must be one JSON object, e.g. {_EXAMPLE}") from exc
            if not isinstance(obj, dict):
                raise InputFileError(path, line, f"expected a JSON object, got {type(obj).__name__}",
                                     f"each line must be one JSON object, e.g. {_EXAMPLE}")
            item_id = obj.get("item_id")
            if isinstance(item_id, bool) or not isinstance(item_id, int):
                raise InputFileError(path, line, f"field 'item_id' is {json.dumps(item_id)[:40]}, not an integer",
                                     "give every line the item's P5 id (as in sequential_data.txt) as an integer")
            if item_id in first_line:
                raise InputFileError(path, line, f"field 'item_id' {item_id} repeats line {first_line[item_id]}",
                                     "keep one line per item")
            first_line[item_id] = line
            asin = obj.get("asin")
            if asin is not None and not isinstance(asin, str):
                raise InputFileError(path, line, f"field 'asin' is {type(asin).__name__}, not a string",
                                     "give the ASIN as a string, or leave it out")
            categories, brand = obj.get("categories"), obj.get("brand")
            rows.append({
                "_meta_line": line, "ad_id": item_id, "asin": asin,
                "category_path": _category_path(categories, path, line), "brand": _brand(brand, path, line),
                "brand_unknown": isinstance(brand, str) and _unescape(brand).casefold() == "unknown",
                "n_category_lists": len(categories) if isinstance(categories, list) else 0,
            })
    if not rows:
        raise InputFileError(path, None, "no JSON lines found", f"write one JSON object per item, e.g. {_EXAMPLE}")
    return pl.DataFrame(rows, schema=META_COLUMNS, orient="row")


def join_item_meta(items: pl.DataFrame, path: Path) -> tuple[pl.DataFrame, dict]:
    """Add `category_path` and `brand` to `items` (ad_id, asin from datamaps.json); return it and the coverage.

    An item_id that is not in the item set, or whose asin differs from datamaps.json, raises (the file
    would describe other items); an item without a line keeps null path and brand and is counted.
    """
    meta = read_item_meta(path)
    joined = meta.join(items.select("ad_id", pl.col("asin").alias("__asin")), on="ad_id", how="left")
    unknown = joined.filter(pl.col("__asin").is_null())
    if unknown.height:
        first = unknown.row(0, named=True)
        raise InputFileError(path, first["_meta_line"],
                             f"item_id {first['ad_id']} is not in datamaps.json's id2item ({unknown.height} such "
                             f"line(s), e.g. item_ids {unknown['ad_id'].head(5).to_list()})",
                             "use the item_meta.jsonl made for this item set (item_id = P5 id of sequential_data.txt)")
    clash = joined.filter(pl.col("asin").is_not_null() & (pl.col("asin") != pl.col("__asin")))
    if clash.height:
        first = clash.row(0, named=True)
        raise InputFileError(path, first["_meta_line"],
                             f"item_id {first['ad_id']} has asin {first['asin']} here but {first['__asin']} in "
                             f"datamaps.json ({clash.height} such line(s)): the item ids are not P5's",
                             "use the item_meta.jsonl made for this item set (item_id = P5 id of sequential_data.txt)")
    out = items.join(meta.select("ad_id", "category_path", "brand"), on="ad_id", how="left", maintain_order="left")
    missing = items.join(meta.select("ad_id"), on="ad_id", how="anti").sort("ad_id")
    info = {
        "category_path": f"{META_FILE}: the first category list whose root is {ROOT!r}, root dropped",
        "n_category_path": int(out["category_path"].is_not_null().sum()),
        "n_brand": int(out["brand"].is_not_null().sum()),
        "n_brand_unknown_as_null": int(meta["brand_unknown"].sum()),
        "n_multiple_category_lists": int((meta["n_category_lists"] > 1).sum()),
        "n_items_without_meta": missing.height,
        "items_without_meta_ad_ids": missing["ad_id"].head(20).to_list(),
    }
    return out, info
