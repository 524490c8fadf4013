"""Validate ad and interaction rows: bad rows are set aside with a reason, good rows all survive.

Input frames have a `_line` column (1-based line/row in the source) and columns either already
typed (Parquet, generator) or as text (CSV, JSONL). Output: a clean frame in the schema of
`unisid_pipeline.data.schema` and a rejected frame (source, line, field, reason, raw).
Everything is vectorised with polars; rows are never dropped without a reason.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Literal

import polars as pl

from unisid_pipeline.data.category_path import normalise_category_path
from unisid_pipeline.data.schema import (
    AD_COLUMNS,
    AD_REQUIRED,
    AD_TEXT_COLUMNS,
    CATEGORY_SEP,
    INTERACTION_COLUMNS,
    INTERACTION_REQUIRED,
    REJECTED_COLUMNS,
    empty_rejected,
)

DEFAULT_MAX_TEXT_CHARS = 20_000
TEXT_FIELDS = ("title", "description")
MS_THRESHOLD = 10**11  # as seconds: year 5138; as milliseconds: 1973-03-03
TIMESTAMP_UNITS = ("s", "ms")
DUPLICATE_POLICIES = ("reject", "last_wins")


@dataclass(frozen=True)
class ValidationResult:
    clean: pl.DataFrame
    rejected: pl.DataFrame
    upserted: int = 0  # ad rows replaced by a later file's row of the same ad_id (on_duplicate_ad="last_wins")

    @property
    def counts(self) -> dict[str, int]:
        return {"clean": self.clean.height, "rejected": self.rejected.height}


def _parse_vector(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except RecursionError as exc:
        raise ValueError("nested too deeply") from exc
    if not isinstance(value, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
        raise ValueError("not a list of numbers")
    if not all(math.isfinite(x) for x in value):
        raise ValueError("not finite")
    return [float(x) for x in value]


def _coerce(frame: pl.DataFrame, schema: dict[str, pl.DataType]) -> tuple[pl.DataFrame, dict[str, pl.Expr]]:
    """Cast every schema column; return the typed frame and {field: error expression} for cast columns.

    An error expression is Utf8, null when the value is fine, else a message. Missing optional
    columns are added as nulls.
    """
    typed = {}
    errors: dict[str, pl.Expr] = {}
    for name, dtype in schema.items():
        if name not in frame.columns:
            typed[name] = pl.lit(None, dtype=dtype)
            continue
        src = frame.schema[name]
        col = pl.col(name)
        if src == dtype:
            typed[name] = col
            continue
        if dtype == pl.List(pl.Float32):
            if src == pl.Utf8:
                parsed = []
                for text in frame[name].to_list():
                    try:
                        parsed.append(_parse_vector(text))
                    except (ValueError, TypeError):
                        parsed.append("__bad__")
                ok = [p if p != "__bad__" else None for p in parsed]
                bad = pl.Series([p == "__bad__" for p in parsed], dtype=pl.Boolean)
                frame = frame.with_columns(pl.Series(f"__{name}", ok, dtype=pl.List(pl.Float64)), bad.alias(f"__{name}_bad"))
                typed[name] = pl.col(f"__{name}").cast(dtype)
                errors[name] = pl.when(pl.col(f"__{name}_bad")).then(
                    pl.lit(f"{name} is not a JSON list of finite numbers (NaN and Infinity are not allowed); write it like [0.1, 0.2]"))
            elif isinstance(src, (pl.List, pl.Array)):
                cast = col.cast(dtype, strict=False)
                typed[name] = cast
                errors[name] = pl.when(col.is_not_null() & cast.is_null()).then(
                    pl.lit(f"{name} has type {src}, expected a list of floats"))
            else:  # a number, struct, date ... is not a vector (and polars cannot cast it to one)
                typed[name] = pl.lit(None, dtype=dtype)
                errors[name] = pl.when(col.is_not_null()).then(pl.lit(f"{name} has type {src}, expected a list of floats"))
            continue
        kind = "text" if dtype == pl.Utf8 else "an integer" if dtype.is_integer() else "a number"
        if src.is_nested():  # a struct or list where a scalar belongs (polars could not even cast it)
            typed[name] = pl.lit(None, dtype=dtype)
            errors[name] = pl.when(col.is_not_null()).then(pl.lit(f"{name} has type {src}, expected {kind}"))
            continue
        source_expr = col.str.strip_chars() if src == pl.Utf8 and dtype != pl.Utf8 else col
        cast = source_expr.cast(dtype, strict=False)
        if dtype == pl.Utf8:
            typed[name] = cast
            if name in AD_TEXT_COLUMNS and src not in (pl.Null, pl.Categorical, pl.Enum):
                # a number, boolean, list or struct is not text: reject it rather than turn it into text
                typed[name] = pl.lit(None, dtype=pl.Utf8)
                errors[name] = pl.when(col.is_not_null()).then(pl.lit(
                    f"{name} has type {src}, expected text; write {name} as a string"))
            continue
        typed[name] = cast
        failed = cast.is_null()
        if dtype.is_integer() and src.is_float():
            failed = failed | (cast.cast(src) != col)  # a float cast to an integer truncates: 2.5 would become 2
        not_a_number = dtype.is_numeric() and (src == pl.Boolean or src.is_temporal())
        if not_a_number:
            failed = pl.lit(True)  # true/false or a date is not a number (a cast would give 1/0 or microseconds)
        errors[name] = (
            pl.when(col.is_not_null() & failed)
            .then(pl.format(f"{name} {{}} is not {kind}", col.cast(pl.Utf8).str.slice(0, 40)))
        )
        if not_a_number:
            typed[name] = pl.lit(None, dtype=dtype)
    out = frame.select(
        pl.col("_line"),
        *[c for c in frame.columns if c != "_line" and c not in schema and not c.startswith("__")],
        *[typed[n].alias(n) for n in schema],
        *[e.alias(f"__err_{n}") for n, e in errors.items()],
    )
    return out, {n: pl.col(f"__err_{n}") for n in errors}


def _required_and_type_checks(
    required: tuple[str, ...], type_errors: dict[str, pl.Expr], what: str
) -> list[tuple[str, pl.Expr]]:
    checks = []
    for f in required:
        # A required field that failed its cast is reported as a type error, not as "missing".
        not_type_error = type_errors[f].is_null() if f in type_errors else pl.lit(True)
        checks.append((f, pl.when(pl.col(f).is_null() & not_type_error).then(pl.lit(f"{f} is missing; {what}"))))
    checks.extend(type_errors.items())
    return checks


def _raw_json(frame: pl.DataFrame) -> pl.Series:
    cols = [c for c in frame.columns if c != "_line" and not c.startswith("__")]
    if not cols:
        return pl.Series("raw", ["{}"] * frame.height, dtype=pl.Utf8)
    return frame.select(pl.struct(cols).struct.json_encode().alias("raw")).to_series()


_NO_RAW = pl.lit(None, dtype=pl.Utf8).alias("raw")  # filled by `_with_raw` once the rejected lines are known


def _with_line(rows: pl.DataFrame) -> pl.DataFrame:
    if "_line" in rows.columns:
        return rows
    return rows.with_row_index("_line", offset=1).with_columns(pl.col("_line").cast(pl.Int64))


def _with_raw(rejected: pl.DataFrame, rows: pl.DataFrame) -> pl.DataFrame:
    """Fill `raw` (the source row as JSON) for the rejected lines of one source only: valid rows, almost
    all of a large catalog, never pay for a JSON copy of themselves. Lines read as unparseable keep their raw."""
    if rejected.height == 0:
        return rejected.cast(REJECTED_COLUMNS)
    todo = rejected.filter(pl.col("raw").is_null())
    bad = rows.filter(pl.col("_line").is_in(todo["line"].implode()))
    raw = pl.DataFrame({"line": bad["_line"].cast(pl.Int64), "__raw": _raw_json(bad)})
    return rejected.join(raw, on="line", how="left", maintain_order="left").select(
        *[c for c in REJECTED_COLUMNS if c != "raw"], pl.coalesce("raw", "__raw").alias("raw")).cast(REJECTED_COLUMNS)


def _first_at(first_src: pl.Expr, first_line: pl.Expr) -> pl.Expr:
    """"line N" when the first occurrence is in the same file, else "<file> line N"."""
    return (pl.when(first_src == pl.col("__src")).then(pl.format("at line {}", first_line))
            .otherwise(pl.format("in {} line {}", first_src, first_line)))


def _split(typed: pl.DataFrame, checks: list[tuple[str, pl.Expr]], source: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Apply (field, error-expr) checks; the first failing field names the row, all reasons are kept."""
    reason = pl.concat_str([e for _, e in checks], separator="; ", ignore_nulls=True)
    field = pl.coalesce([pl.when(e.is_not_null()).then(pl.lit(f)) for f, e in checks])
    typed = typed.with_columns(reason.alias("__reason"), field.alias("__field"))
    bad_mask = pl.col("__field").is_not_null()
    rejected = typed.filter(bad_mask).select(
        pl.lit(source).alias("source"), pl.col("_line").alias("line"), pl.col("__field").alias("field"),
        pl.col("__reason").alias("reason"), _NO_RAW,
    ).cast(REJECTED_COLUMNS)
    clean = typed.filter(~bad_mask)
    return clean, rejected


def validate_ads(
    rows: pl.DataFrame,
    source: str,
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
    category_sep: str = CATEGORY_SEP,
) -> ValidationResult:
    """Validate ad rows (with `_line`) of one source; see `validate_ad_files`."""
    return validate_ad_files([(rows, source)], max_text_chars=max_text_chars, category_sep=category_sep)


def _check_ads(rows: pl.DataFrame, source: str, max_text_chars: int, category_sep: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(clean rows typed, with `_line`, ad_id unique; rejected rows without raw) of one source."""
    path_error = None
    if "category_path" in rows.columns:
        path, path_error = normalise_category_path(rows["category_path"], category_sep)
        typed, type_errors = _coerce(rows.with_columns(path.alias("category_path")), AD_COLUMNS)
        typed = typed.with_columns(path_error.alias("__path_err"))
    else:
        typed, type_errors = _coerce(rows, AD_COLUMNS)
    checks = _required_and_type_checks(AD_REQUIRED, type_errors, "every ad needs an integer ad_id and a non-empty title")
    if path_error is not None:
        checks.append(("category_path", pl.col("__path_err")))
    checks.append(("title", pl.when(pl.col("title").is_not_null() & (pl.col("title").str.strip_chars() == "")).then(
        pl.lit("title is empty (only whitespace); give every ad a non-empty title"))))
    for f in TEXT_FIELDS:
        n_chars = pl.col(f).str.len_chars()
        checks.append((f, pl.when(n_chars > max_text_chars).then(
            pl.format(f"{f} has {{}} characters (limit {max_text_chars}); shorten it or raise max_text_chars", n_chars))))
    checks.append(("price", pl.when(~pl.col("price").is_finite() | (pl.col("price") < 0)).then(
        pl.format("price {} is negative or not a finite number; use a price >= 0 or leave it empty", pl.col("price")))))
    checks.append(("image_features", pl.when(
        pl.col("image_features").list.eval(~pl.element().is_finite().fill_null(False)).list.any()).then(
        pl.lit("image_features has NaN, infinite or missing values; every value must be a finite number"))))
    lengths = typed.select(pl.col("image_features").list.len()).to_series().drop_nulls()
    if lengths.len():
        expected = int(lengths.mode().sort()[-1])
        checks.append(("image_features", pl.when(pl.col("image_features").list.len() != expected).then(
            pl.format(f"image_features has {{}} values, expected {expected} (the length of most ads)",
                      pl.col("image_features").list.len()))))
    clean, rejected = _split(typed, checks, source)

    # Duplicate ids among otherwise-valid rows: keep the first by line.
    clean = clean.sort("_line").with_columns(pl.col("_line").first().over("ad_id").alias("__first"))
    dup = clean.filter(pl.col("_line") != pl.col("__first"))
    rejected = pl.concat([rejected, dup.select(
        pl.lit(source).alias("source"), pl.col("_line").alias("line"), pl.lit("ad_id").alias("field"),
        pl.format("duplicate ad_id {} (first at line {}); ad ids must be unique: drop or renumber the repeat",
                  pl.col("ad_id"), pl.col("__first")).alias("reason"),
        _NO_RAW,
    ).cast(REJECTED_COLUMNS)])
    clean = clean.filter(pl.col("_line") == pl.col("__first"))
    return clean.select("_line", *AD_COLUMNS).cast(AD_COLUMNS), rejected


def _union(cleans: list[pl.DataFrame], sources: list[str]) -> pl.DataFrame:
    """The clean rows of all sources, in source then line order, with `__file` (index), `__src` and `__seq`."""
    return pl.concat([c.with_columns(pl.lit(i, pl.Int64).alias("__file"), pl.lit(s).alias("__src"))
                      for i, (c, s) in enumerate(zip(cleans, sources))]).with_row_index("__seq")


def _per_source(rejects: list[pl.DataFrame], extra: pl.DataFrame, files: list[tuple[pl.DataFrame, str]]) -> pl.DataFrame:
    """Each source's rejects plus its rows of `extra` (union-level rejects with `__file`), sorted by line, with raw."""
    out = []
    for i, (rows, _) in enumerate(files):
        mine = extra.filter(pl.col("__file") == i).drop("__file").cast(REJECTED_COLUMNS)
        out.append(_with_raw(pl.concat([rejects[i].cast(REJECTED_COLUMNS), mine]).sort("line", maintain_order=True), rows))
    return concat_rejected(*out)


def validate_ad_files(
    files: list[tuple[pl.DataFrame, str]],
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
    category_sep: str = CATEGORY_SEP,
    on_duplicate: Literal["reject", "last_wins"] = "reject",
) -> ValidationResult:
    """Validate the ad rows (with `_line`) of one or more sources [(rows, source name)], read as one union.

    Checks: required fields, types (text fields must be text), empty title, text length, negative price,
    image-vector length, malformed category path, duplicate ad_id. A repeated ad_id within a source is
    rejected (the first kept); across sources `on_duplicate` decides: "reject" keeps the first (the
    repeat is rejected naming both files and lines), "last_wins" lets the later source's row replace the
    earlier one (counted in `upserted`). `category_path` may be a list of levels or a string joined by
    `category_sep`; it comes out joined by " > " (`unisid_pipeline.data.category_path`)."""
    if on_duplicate not in DUPLICATE_POLICIES:
        raise ValueError(f"on_duplicate_ad must be one of {DUPLICATE_POLICIES}, got {on_duplicate!r}")
    files = [(_with_line(rows), source) for rows, source in files]
    checked = [_check_ads(rows, source, max_text_chars, category_sep) for rows, source in files]
    union = _union([c for c, _ in checked], [s for _, s in files])
    by_id = {"partition_by": "ad_id", "order_by": "__seq"}
    if on_duplicate == "reject":
        first = pl.col("__seq").first().over(**by_id)
        repeat = union.with_columns(pl.col("__src").first().over(**by_id).alias("__fsrc"),
                                    pl.col("_line").first().over(**by_id).alias("__fline")).filter(pl.col("__seq") != first)
        extra = repeat.select(
            pl.col("__file"), pl.col("__src").alias("source"), pl.col("_line").alias("line"), pl.lit("ad_id").alias("field"),
            pl.format("duplicate ad_id {} (first in {} line {}); ad ids must be unique across the input files: drop or "
                      "renumber the repeat, or set on_duplicate_ad='last_wins' to let later files replace earlier rows",
                      pl.col("ad_id"), pl.col("__fsrc"), pl.col("__fline")).alias("reason"), _NO_RAW)
        clean, upserted = union.filter(pl.col("__seq") == first), 0
    else:
        last = pl.col("__seq").last().over(**by_id)
        clean = union.filter(pl.col("__seq") == last)
        upserted = union.height - clean.height
        extra = pl.DataFrame(schema={"__file": pl.Int64, **REJECTED_COLUMNS})
    rejected = _per_source([r for _, r in checked], extra, files)
    return ValidationResult(clean.sort("__seq").select(list(AD_COLUMNS)).cast(AD_COLUMNS), rejected, upserted)


def validate_interactions(
    rows: pl.DataFrame,
    source: str,
    known_ad_ids: pl.Series,
    timestamp_order: Literal["reject", "sort"] = "reject",
    timestamp_unit: Literal["s", "ms"] = "s",
) -> ValidationResult:
    """Validate the interaction rows of one source; see `validate_interaction_files`."""
    return validate_interaction_files([(rows, source)], known_ad_ids, timestamp_order, timestamp_unit)


def _check_interactions(rows: pl.DataFrame, source: str, known_ad_ids: pl.Series,
                        timestamp_unit: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(clean rows typed, with `_line`; rejected rows without raw) of one source: row-level checks only."""
    typed, type_errors = _coerce(rows, INTERACTION_COLUMNS)
    checks = _required_and_type_checks(
        INTERACTION_REQUIRED, type_errors, "every interaction needs an integer user_id, ad_id and timestamp")
    ts = pl.col("timestamp")
    checks.append(("timestamp", pl.when(ts < 0).then(pl.format("timestamp {} is negative", ts))))
    if timestamp_unit == "s":
        checks.append(("timestamp", pl.when(ts >= MS_THRESHOLD).then(pl.format(
            "timestamp {} looks like milliseconds; timestamps must be seconds, or set timestamp_unit='ms'", ts))))
    else:
        checks.append(("timestamp", pl.when((ts > 0) & (ts < MS_THRESHOLD)).then(pl.format(
            "timestamp {} looks like seconds; with timestamp_unit='ms' timestamps must be milliseconds "
            "(or set timestamp_unit='s')", ts))))
    known = known_ad_ids.cast(pl.Int64).unique()
    checks.append(("ad_id", pl.when(pl.col("ad_id").is_not_null() & ~pl.col("ad_id").is_in(known.implode())).then(
        pl.format("ad_id {} is not in raw_ads (unknown ad, or the ad was rejected: see rejected_ads)", pl.col("ad_id")))))
    clean, rejected = _split(typed, checks, source)
    return clean.sort("_line").select("_line", *INTERACTION_COLUMNS).cast(INTERACTION_COLUMNS), rejected


def validate_interaction_files(
    files: list[tuple[pl.DataFrame, str]],
    known_ad_ids: pl.Series,
    timestamp_order: Literal["reject", "sort"] = "reject",
    timestamp_unit: Literal["s", "ms"] = "s",
) -> ValidationResult:
    """Validate the interaction rows of one or more sources [(rows, source name)], read as one union in order.

    Checks: required fields, types, negative timestamps, timestamps in the wrong unit (>= 1e11 with
    timestamp_unit="s": milliseconds; positive < 1e11 with "ms": seconds), unknown ad ids, exact
    duplicates (also across sources), and (with timestamp_order="reject") events that go back in time
    for their user in file order (files in the given order). Timestamps come out in seconds ("ms" ones
    divided by 1000, ties kept in file order)."""
    if timestamp_order not in ("reject", "sort"):
        raise ValueError(f"timestamp_order must be 'reject' or 'sort', got {timestamp_order!r}")
    if timestamp_unit not in TIMESTAMP_UNITS:
        raise ValueError(f"timestamp_unit must be one of {TIMESTAMP_UNITS}, got {timestamp_unit!r}")
    files = [(_with_line(rows), source) for rows, source in files]
    checked = [_check_interactions(rows, source, known_ad_ids, timestamp_unit) for rows, source in files]
    clean = _union([c for c, _ in checked], [s for _, s in files])
    extra = []
    # Exact duplicates (same user, ad and time), also across files: keep the first.
    event = {"partition_by": ["user_id", "ad_id", "timestamp"], "order_by": "__seq"}
    clean = clean.with_columns(pl.col("__seq").first().over(**event).alias("__first"),
                               pl.col("__src").first().over(**event).alias("__fsrc"),
                               pl.col("_line").first().over(**event).alias("__fline"))
    dup = clean.filter(pl.col("__seq") != pl.col("__first"))
    extra.append(dup.select(
        pl.col("__file"), pl.col("__src").alias("source"), pl.col("_line").alias("line"), pl.lit("*").alias("field"),
        pl.format("duplicate event (user {}, ad {}, timestamp {}; first {})", pl.col("user_id"),
                  pl.col("ad_id"), pl.col("timestamp"), _first_at(pl.col("__fsrc"), pl.col("__fline"))).alias("reason"),
        _NO_RAW,
    ))
    clean = clean.filter(pl.col("__seq") == pl.col("__first"))
    if timestamp_order == "reject":
        prev_max = pl.col("timestamp").cum_max().shift(1).over("user_id", order_by="__seq")
        clean = clean.with_columns(prev_max.alias("__prev"))
        going_back = pl.col("__prev").is_not_null() & (pl.col("timestamp") < pl.col("__prev"))
        extra.append(clean.filter(going_back).select(
            pl.col("__file"), pl.col("__src").alias("source"), pl.col("_line").alias("line"),
            pl.lit("timestamp").alias("field"),
            pl.format("timestamp {} is earlier than a previous event ({}) of user {}; sort events by time per user, "
                      "or set timestamp_order='sort'", pl.col("timestamp"), pl.col("__prev"), pl.col("user_id")).alias("reason"),
            _NO_RAW,
        ))
        # A rejected row is below the running max, so it never raises it: later rows are judged
        # against accepted rows only.
        clean = clean.filter(~going_back)
    if timestamp_unit == "ms":
        clean = clean.with_columns(pl.col("timestamp") // 1000)
    extra_frame = pl.concat([e.cast({"__file": pl.Int64, **REJECTED_COLUMNS}) for e in extra])
    rejected = _per_source([r for _, r in checked], extra_frame, files)
    clean = clean.sort(["user_id", "timestamp", "__seq"]).select(list(INTERACTION_COLUMNS)).cast(INTERACTION_COLUMNS)
    return ValidationResult(clean=clean, rejected=rejected)


def concat_rejected(*frames: pl.DataFrame) -> pl.DataFrame:
    frames = tuple(f for f in frames if f is not None and f.height)
    return pl.concat([f.cast(REJECTED_COLUMNS) for f in frames]) if frames else empty_rejected()
