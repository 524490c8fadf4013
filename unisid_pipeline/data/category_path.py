"""Normalise `category_path` to the raw_ads form: level names, coarse to fine, joined by `CATEGORY_SEP` (" > ").

Accepted values:
- a string whose levels are joined by a separator (`IngestionConfig.category_sep`, default " > ");
  whitespace around each level is dropped, so "Beauty>Makeup" with separator ">" becomes "Beauty > Makeup";
- a list of level names: a Parquet List[Utf8] column, or a JSON array of strings. JSONL arrays reach
  validation as JSON text, so a string value that parses as a JSON array is read as a list too.

An empty or whitespace-only string, an empty list and null mean "no path" (null). Malformed paths
get an error message (null when the value is fine): an empty level ("A >  > C", a leading or trailing
separator), a level holding the separator's mark without its spaces ("A > > C" or "A>B" with
separator " > "), a null or non-string list element, a list of lists, and a level that contains
" > " (it would become two levels in raw_ads).
"""
from __future__ import annotations

import json

import polars as pl

from unisid_pipeline.data.schema import CATEGORY_SEP

FIELD = "category_path"
_LIST_EXAMPLE = 'e.g. ["Beauty", "Makeup", "Nails"]'


def _parse_json_list(text: str) -> tuple[list[str] | None, str | None] | None:
    """(levels, error) for JSON array text; None when the text is not a JSON array (then it is a plain path)."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(value, list):
        return None
    if any(isinstance(v, (list, dict)) for v in value):
        return None, (f"{FIELD} is a list of lists (or objects); give one path as a flat list of level names, "
                      f"{_LIST_EXAMPLE} (pick one path per ad)")
    bad = [i for i, v in enumerate(value) if not isinstance(v, str)]
    if bad:
        return None, (f"{FIELD} list element {bad[0]} ({json.dumps(value[bad[0]])}) is not a string; "
                      f"give the level names as strings, {_LIST_EXAMPLE}")
    return value, None


def _from_json_text(values: pl.Series) -> pl.DataFrame:
    """Rows of `values` (Utf8) that are JSON arrays: `__i` (row), `__levels` (List[Utf8]), `__err` (Utf8)."""
    stripped = values.str.strip_chars()
    candidates = pl.DataFrame({"__v": stripped}).with_row_index("__i").filter(
        pl.col("__v").str.starts_with("[") & pl.col("__v").str.ends_with("]"))
    rows = []
    for i, text in candidates.iter_rows():
        parsed = _parse_json_list(text)
        if parsed is not None:
            rows.append({"__i": i, "__levels": parsed[0], "__err": parsed[1]})
    schema = {"__i": pl.UInt32, "__levels": pl.List(pl.Utf8), "__err": pl.Utf8}
    return pl.DataFrame(rows, schema=schema) if rows else pl.DataFrame(schema=schema)


def _list_errors(levels: pl.Expr, shown: pl.Expr) -> pl.Expr:
    """Error for a List[Utf8] of levels (null when fine); `shown` is the value as the message quotes it."""
    el = pl.element()
    return (
        pl.when(levels.list.eval(el.is_null()).list.any())
        .then(pl.format(f"{FIELD} {{}} has a null level; give every level a name, {_LIST_EXAMPLE}", shown))
        .when(levels.list.eval(el.str.strip_chars() == "").list.any())
        .then(pl.format(f"{FIELD} {{}} has an empty level; remove it or give it a name", shown))
        .when(levels.list.eval(el.str.contains(CATEGORY_SEP, literal=True)).list.any())
        .then(pl.format(f"{FIELD} {{}} has a level containing {CATEGORY_SEP!r}, which separates levels in raw_ads; "
                        "rename that level or split it into two levels", shown))
    )


def normalise_category_path(values: pl.Series, sep: str = CATEGORY_SEP) -> tuple[pl.Series, pl.Series]:
    """(category_path Utf8 joined by " > ", error Utf8) for each value; see the module docstring.

    Columns of other types (numbers, ...) come back unchanged with no errors: validation casts them
    to text as before.
    """
    if not sep:
        raise ValueError("category_sep must be a non-empty string, e.g. ' > '")
    n, dtype = len(values), values.dtype
    no_errors = pl.Series(FIELD, [None] * n, dtype=pl.Utf8)
    if dtype == pl.Null:
        return values.cast(pl.Utf8), no_errors
    if isinstance(dtype, pl.Array):
        values, dtype = values.cast(pl.List(dtype.inner)), pl.List(dtype.inner)
    if dtype == pl.Utf8:
        # Most paths are already in the stored form ("A > B > C"): only the others take the slow way.
        done = _already_joined(values) if sep == CATEGORY_SEP else pl.Series([False] * n)
        todo = (~done).arg_true()
        if todo.len() == 0:
            return values.alias(FIELD), no_errors
        sub = values.gather(todo)
        path, err = _joined(_string_levels(pl.DataFrame({"__v": sub}), sub, sep))
        return values.clone().scatter(todo, path).alias(FIELD), no_errors.clone().scatter(todo, err)
    if not isinstance(dtype, pl.List):
        return values, no_errors
    frame = pl.DataFrame({"__v": values})
    if dtype.inner not in (pl.Utf8, pl.Null):
        kind = "a list of lists" if isinstance(dtype.inner, (pl.List, pl.Array)) else f"a list of {dtype.inner}"
        err = frame.select(pl.when(pl.col("__v").is_not_null()).then(pl.lit(
            f"{FIELD} is {kind}; give one path as a flat list of level names (strings), {_LIST_EXAMPLE}")))
        return pl.Series(FIELD, [None] * n, dtype=pl.Utf8), err.to_series().alias(FIELD)
    frame = frame.select(pl.col("__v").cast(pl.List(pl.Utf8)).alias("__L"))
    shown = pl.lit("[") + pl.col("__L").list.join(", ").str.slice(0, 80) + pl.lit("]")
    return _joined(frame.with_columns(_list_errors(pl.col("__L"), shown).alias("__e")))


# The stored form: levels without ">" and without surrounding whitespace, joined by " > ".
_LEVEL = r"[^\s>](?:[^>]*[^\s>])?"
_JOINED = rf"^{_LEVEL}(?: > {_LEVEL})*$"


def _already_joined(values: pl.Series) -> pl.Series:
    """True where the value is null or already a well-formed " > "-joined path (and not JSON array text)."""
    json_like = values.str.starts_with("[") & values.str.ends_with("]")
    return (values.str.contains(_JOINED) & ~json_like).fill_null(True)


def _joined(frame: pl.DataFrame) -> tuple[pl.Series, pl.Series]:
    """(path, error) from `__L` (levels) and `__e` (error): levels stripped and joined by " > " where fine."""
    out = frame.select(
        pl.when(pl.col("__e").is_null() & (pl.col("__L").list.len() > 0))
        .then(pl.col("__L").list.eval(pl.element().str.strip_chars()).list.join(CATEGORY_SEP)).alias(FIELD),
        pl.col("__e").alias(FIELD + "_error"),
    )
    return out[FIELD], out[FIELD + "_error"].alias(FIELD)


def _string_levels(frame: pl.DataFrame, values: pl.Series, sep: str) -> pl.DataFrame:
    """`__L` (List[Utf8] levels, null for no path) and `__e` (error) for a Utf8 column `__v`."""
    json_rows = _from_json_text(values)
    frame = frame.with_row_index("__i").join(json_rows, on="__i", how="left", maintain_order="left")
    frame = frame.with_columns(
        (pl.col("__levels").is_not_null() | pl.col("__err").is_not_null()).alias("__json"),
        (pl.col("__v").str.strip_chars() == "").alias("__blank"),
        pl.col("__v").str.split(sep).alias("__split"),
    ).with_columns(
        pl.when(pl.col("__json")).then(pl.col("__levels")).when(~pl.col("__blank")).then(pl.col("__split")).alias("__L"),
    )
    shown = pl.lit("'") + pl.col("__v").str.slice(0, 80) + pl.lit("'")
    errors = [pl.col("__err"), _list_errors(pl.col("__L"), shown)]
    token = sep.strip()
    if token and token != sep:
        # With sep " > ", a level holding ">" is a doubled separator ("A > > C" splits into "A", "> C") or a
        # file that joins levels another way ("A>B"): either way the levels would come out wrong.
        stray = pl.col("__split").list.eval(pl.element().str.contains(token, literal=True)).list.any()
        errors.append(pl.when(~pl.col("__json") & ~pl.col("__blank") & stray).then(pl.format(
            f"{FIELD} {{}} has a level containing {token!r} (a doubled separator, or a file that joins levels "
            f"another way?); remove the stray {token!r}", shown)))
    hint = f" (levels are read as joined by {sep!r}: set category_sep if the file uses another)"
    return frame.with_columns(pl.coalesce(errors).alias("__e")).select(
        pl.col("__L"),
        pl.when(~pl.col("__json") & pl.col("__e").is_not_null()).then(pl.col("__e") + pl.lit(hint))
        .otherwise(pl.col("__e")).alias("__e"),
    )
