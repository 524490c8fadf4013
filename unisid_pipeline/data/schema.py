"""The documented schemas of the clean tables every stage reads.

`raw_ads` (one row per ad; the tokenizers' input):

| column         | type            | required | meaning                                                     |
|----------------|-----------------|----------|-------------------------------------------------------------|
| ad_id          | Int64           | yes      | unique, stable id of the ad                                 |
| title          | Utf8            | yes      | non-empty ad title                                          |
| description    | Utf8            | no       | ad body text ("" when absent)                               |
| advertiser     | Utf8            | no       | advertiser name                                             |
| industry       | Utf8            | no       | industry / vertical                                         |
| category_path  | Utf8            | no       | category path, levels joined by " > " (coarse to fine)      |
| brand          | Utf8            | no       | brand name                                                  |
| price          | Float64         | no       | price in the ad's currency, >= 0                            |
| landing_type   | Utf8            | no       | landing page kind (web_page, app_install, lead_form, ...)   |
| image_features | List[Float32]   | no       | dense image feature vector (same length for all ads)        |

`ad_interactions` (one row per click/interaction):

| column    | type  | required | meaning                                                         |
|-----------|-------|----------|-----------------------------------------------------------------|
| user_id   | Int64 | yes      | user id                                                         |
| ad_id     | Int64 | yes      | must be an ad_id of `raw_ads`                                   |
| timestamp | Int64 | yes      | event time (seconds, or a position index when no clock exists) |

`category_path` in an input file may be a string or a list. A string has its levels joined by the
ingestion config's `category_sep` (default " > "; e.g. "/" for "Beauty/Makeup/Nails"). A list of
level names, coarse to fine, may be a JSONL array (["Beauty", "Makeup", "Nails"]) or a Parquet
List[Utf8] column. Either way raw_ads stores the levels stripped of surrounding spaces and joined
by " > ". Empty strings and empty lists mean no path (null). A malformed path goes to rejected_ads
with field `category_path`: an empty level ("A >  > C", a trailing separator), a null or non-string
list element, a list of lists, a level that contains " > ", or (separator " > ") a level holding a
bare ">": a doubled separator or a file joined another way (see `data/category_path.py`).

`rejected_ads` / `rejected_interactions` keep every row that failed validation:
`source` (file or generator), `line` (1-based line/row in the source), `field`, `reason`
(what is wrong and how to fix it), `raw` (the row as JSON text).
"""
from __future__ import annotations

import polars as pl

CATEGORY_SEP = " > "

AD_COLUMNS: dict[str, pl.DataType] = {
    "ad_id": pl.Int64,
    "title": pl.Utf8,
    "description": pl.Utf8,
    "advertiser": pl.Utf8,
    "industry": pl.Utf8,
    "category_path": pl.Utf8,
    "brand": pl.Utf8,
    "price": pl.Float64,
    "landing_type": pl.Utf8,
    "image_features": pl.List(pl.Float32),
}
AD_REQUIRED = ("ad_id", "title")
# Text columns whose value must be a string in the file (a number, boolean, list or struct is rejected, not
# turned into text). category_path may also be a list of levels (see data/category_path.py).
AD_TEXT_COLUMNS = ("title", "description", "advertiser", "industry", "brand", "landing_type")

INTERACTION_COLUMNS: dict[str, pl.DataType] = {
    "user_id": pl.Int64,
    "ad_id": pl.Int64,
    "timestamp": pl.Int64,
}
INTERACTION_REQUIRED = ("user_id", "ad_id", "timestamp")

REJECTED_COLUMNS: dict[str, pl.DataType] = {
    "source": pl.Utf8,
    "line": pl.Int64,
    "field": pl.Utf8,
    "reason": pl.Utf8,
    "raw": pl.Utf8,
}


def empty_rejected() -> pl.DataFrame:
    return pl.DataFrame(schema=REJECTED_COLUMNS)


def category_levels(category_path: pl.Series, depth: int = 3) -> pl.DataFrame:
    """Split `category_path` into columns level_1..level_depth, each the path prefix down to that depth.

    Prefixes (not bare names) so that "A > X" and "B > X" stay different at level 2.
    Missing paths give nulls; paths shorter than `depth` repeat their last prefix.
    """
    parts = category_path.str.split(CATEGORY_SEP)
    cols = {}
    for d in range(1, depth + 1):
        cols[f"level_{d}"] = parts.list.head(d).list.join(CATEGORY_SEP)
    return pl.DataFrame(cols)


def ad_text(ads: pl.DataFrame) -> pl.Series:
    """The ad's text as the encoders read it: title, then description, then attributes."""
    def col(name: str) -> pl.Expr:
        if name in ads.columns:
            return pl.col(name).cast(pl.Utf8).fill_null("")
        return pl.lit("")

    expr = pl.concat_str(
        [
            col("title"),
            pl.lit(". "),
            col("description"),
            pl.when(col("brand") != "").then(pl.lit(" Brand: ") + col("brand")).otherwise(pl.lit("")),
            pl.when(col("category_path") != "").then(pl.lit(" Category: ") + col("category_path")).otherwise(pl.lit("")),
        ]
    ).str.strip_chars()
    return ads.select(expr.alias("text")).to_series()
