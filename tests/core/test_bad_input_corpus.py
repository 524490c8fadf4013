"""The bad-input corpus (tests/data/bad/): one test per file, asserting the exact rejects or the file error.

Each reject is (line, field, reason): the line in the source file, the field that failed, and the
reason text a user reads in `rejected_ads` / `rejected_interactions`.
"""
import json
from pathlib import Path

import polars as pl
import pytest

from unisid_pipeline.data.ingest import IngestionConfig, ingest
from unisid_pipeline.data.readers import InputFileError, read_rows
from unisid_pipeline.data.schema import AD_REQUIRED, INTERACTION_REQUIRED, REJECTED_COLUMNS
from unisid_pipeline.data.validation import DEFAULT_MAX_TEXT_CHARS, validate_ads, validate_interactions

BAD = Path(__file__).resolve().parent.parent / "data" / "bad"

MISSING = "is missing; every ad needs an integer ad_id and a non-empty title"
FIELD_COUNT = "expected {} fields, got {}; quote fields that contain the delimiter"
NON_UTF8 = "non-UTF-8 bytes in field(s) {}; re-save the file as UTF-8"
PRICE = "price {} is negative or not a finite number; use a price >= 0 or leave it empty"
VECTOR = "image_features is not a JSON list of finite numbers (NaN and Infinity are not allowed); write it like [0.1, 0.2]"


def ads_of(name: str, **kw):
    """(clean ads, [(line, field, reason)] of parse + validation rejects) of one corpus file."""
    parsed = read_rows(BAD / name, AD_REQUIRED)
    res = validate_ads(parsed.rows, parsed.source, **kw)
    rejected = pl.concat([parsed.rejected, res.rejected]).sort("line")
    assert dict(rejected.schema) == REJECTED_COLUMNS
    assert set(rejected["source"]) <= {str(BAD / name)}
    n_in = parsed.rows.height + parsed.rejected.height
    assert res.clean.height + rejected.height == n_in  # nothing lost
    return res.clean, [(r["line"], r["field"], r["reason"]) for r in rejected.to_dicts()], rejected


def test_malformed_csv_lines():
    clean, rejects, rejected = ads_of("ads_malformed.csv")
    assert clean["ad_id"].to_list() == [1, 4, 5, 7]
    assert clean["title"].to_list() == ["Good lipstick", "Quoted, comma", "Multi\nline title", "Last good"]
    assert rejects == [
        (3, "*", FIELD_COUNT.format(4, 5)),
        (4, "*", FIELD_COUNT.format(4, 2)),
        (9, "*", "CSV quoting error (',' expected after '\"'); a field with a quote must be wholly quoted and "
                 "inner quotes doubled (\"\")"),
    ]
    assert rejected["raw"].to_list()[2] == '6,"Closed"junk,after quote,1'  # the line as written


def test_unterminated_quote_rejects_its_line_and_keeps_the_rest():
    # Bug fixed: Python's lenient csv mode read the rest of the file into one title field.
    clean, rejects, _ = ads_of("ads_unterminated_quote.csv")
    assert clean["ad_id"].to_list() == [1, 3, 4]
    assert clean["title"].to_list() == ["Good", "Still read", "Also read"]
    assert rejects == [(3, "*", "unterminated quoted field (a quote opens on this line and does not close on it); "
                                "close the quote or double it (\"\")")]


def test_malformed_jsonl_lines():
    clean, rejects, _ = ads_of("ads_malformed.jsonl")
    assert clean["ad_id"].to_list() == [1, 5]
    assert rejects == [
        (2, "*", "invalid JSON (Expecting ',' delimiter at column 31); each line must be one JSON object"),
        (3, "*", "expected a JSON object, got list"),
        (4, "*", "expected a JSON object, got str"),
        (5, "*", "invalid JSON (Extra data at column 35); each line must be one JSON object"),
    ]


def test_deeply_nested_json_is_a_reject_not_a_crash(tmp_path):
    # Bug fixed: json.loads raised RecursionError, which escaped the reader and the vector parser.
    path = tmp_path / "deep.jsonl"
    deep = "[" * 100_000
    path.write_text(json.dumps({"ad_id": 1, "title": "ok"}) + "\n" + deep + "\n"
                    + json.dumps({"ad_id": 2, "title": "vec", "image_features": deep}) + "\n")
    parsed = read_rows(path, AD_REQUIRED)
    res = validate_ads(parsed.rows, parsed.source)
    assert res.clean["ad_id"].to_list() == [1]
    assert parsed.rejected.select("line", "field").rows() == [(2, "*")]
    assert "nested too deeply" in parsed.rejected["reason"][0]
    assert res.rejected.select("line", "field", "reason").rows() == [(3, "image_features", VECTOR)]


def test_wrong_types_csv():
    clean, rejects, _ = ads_of("ads_wrong_types.csv")
    assert clean.select("ad_id", "price").rows() == [(1, 9.5), (11, None)]
    assert clean["image_features"].to_list() == [pytest.approx([0.1, 0.2]), pytest.approx([0.5, 0.6])]
    assert rejects == [
        (3, "ad_id", "ad_id abc is not an integer"),
        (4, "ad_id", "ad_id 2.5 is not an integer"),
        (5, "price", "price cheap is not a number"),
        (6, "image_features", VECTOR),
        (7, "image_features", "image_features has 1 values, expected 2 (the length of most ads)"),
        (8, "image_features", VECTOR),
        (9, "price", PRICE.format(-2.0)),
        (10, "price", PRICE.format("NaN")),
        (11, "price", PRICE.format("inf")),  # bug fixed: an infinite price was accepted
        (12, "image_features", VECTOR),  # bug fixed: NaN in a vector was accepted
    ]


def test_typed_parquet_floats_ids_and_non_finite_values():
    # Bug fixed: a Float64 ad_id 2.5 was cast (truncated) to 2 and accepted as ad 2.
    clean, rejects, _ = ads_of("ads_float_ids.parquet")
    assert clean.select("ad_id", "title").rows() == [(1, "Integral float id"), (7, "Good")]
    assert rejects == [
        (2, "ad_id", "ad_id 2.5 is not an integer"),
        (3, "price", PRICE.format("NaN")),
        (4, "ad_id", f"ad_id {MISSING}"),
        (5, "price", PRICE.format("inf")),
        (6, "image_features", "image_features has NaN, infinite or missing values; every value must be a finite number"),
    ]


def test_boolean_ids_are_not_numbers():
    rows = pl.DataFrame({"ad_id": [True, False], "title": ["a", "b"]})
    res = validate_ads(rows, "mem")
    assert res.clean.height == 0
    assert res.rejected.select("line", "field", "reason").rows() == [
        (1, "ad_id", "ad_id true is not an integer"), (2, "ad_id", "ad_id false is not an integer")]


def test_missing_required_fields():
    clean, rejects, _ = ads_of("ads_missing_required.csv")
    assert clean["ad_id"].to_list() == [1, 4]
    assert rejects == [
        (3, "ad_id", f"ad_id {MISSING}"),
        (4, "title", f"title {MISSING}"),
        (5, "title", "title is empty (only whitespace); give every ad a non-empty title"),
    ]


def test_missing_required_column_fails_the_file():
    with pytest.raises(InputFileError) as err:
        read_rows(BAD / "ads_missing_column.csv", AD_REQUIRED)
    assert str(err.value) == (
        f"{BAD / 'ads_missing_column.csv'}, line 1: required column(s) ['ad_id', 'title'] missing (found ['id', "
        "'name']). Fix: add the column(s) ['ad_id', 'title']; see the schema in unisid_pipeline/data/schema.py")
    with pytest.raises(InputFileError) as err:
        read_rows(BAD / "interactions_missing_column.jsonl", INTERACTION_REQUIRED)
    assert str(err.value) == (
        f"{BAD / 'interactions_missing_column.jsonl'}: required column(s) ['timestamp'] missing (found ['user_id', "
        "'ad_id']). Fix: add the column(s) ['timestamp']; see the schema in unisid_pipeline/data/schema.py")


def test_duplicate_ids_keep_the_first():
    clean, rejects, _ = ads_of("ads_duplicate_ids.csv")
    assert clean.select("ad_id", "title").rows() == [(1, "First"), (2, "Second"), (3, "Third")]
    dup = "duplicate ad_id {} (first at line {}); ad ids must be unique: drop or renumber the repeat"
    assert rejects == [(4, "ad_id", dup.format(1, 2)), (6, "ad_id", dup.format(2, 3)), (7, "ad_id", dup.format(1, 2))]


def test_empty_text_fields():
    clean, rejects, _ = ads_of("ads_empty_text.jsonl")
    assert clean.select("ad_id", "title", "description").rows() == [(2, "Has title", "")]  # empty description is fine
    empty = "title is empty (only whitespace); give every ad a non-empty title"
    assert rejects == [(1, "title", empty), (3, "title", f"title {MISSING}"), (4, "title", empty)]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_one_megabyte_text_fields(tmp_path, fmt):
    """1 MB title/description: rejected over the default limit with the size and the fix; kept whole under a raised one."""
    big = "ü" * 1_000_000
    rows = [{"ad_id": 1, "title": big, "description": "d"}, {"ad_id": 2, "title": "ok", "description": big},
            {"ad_id": 3, "title": "small", "description": "d"}]
    path = tmp_path / f"big.{fmt}"
    if fmt == "csv":
        pl.DataFrame(rows).write_csv(path)
    else:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert path.stat().st_size > 4_000_000
    parsed = read_rows(path, AD_REQUIRED)
    res = validate_ads(parsed.rows, parsed.source)
    assert res.clean["ad_id"].to_list() == [3]
    limit = DEFAULT_MAX_TEXT_CHARS
    line = {"csv": (2, 3), "jsonl": (1, 2)}[fmt]
    assert res.rejected.select("line", "field", "reason").rows() == [
        (line[0], "title", f"title has 1000000 characters (limit {limit}); shorten it or raise max_text_chars"),
        (line[1], "description", f"description has 1000000 characters (limit {limit}); shorten it or raise max_text_chars"),
    ]
    roomy = validate_ads(parsed.rows, parsed.source, max_text_chars=2_000_000)
    assert roomy.rejected.height == 0
    assert roomy.clean["title"][0] == big and roomy.clean["description"][1] == big


def test_non_utf8_csv_bytes():
    clean, rejects, rejected = ads_of("ads_non_utf8.csv")
    assert clean.select("ad_id", "title").rows() == [(1, "Café latte"), (5, "Last")]
    assert rejects == [
        (3, "title", NON_UTF8.format(["title"])),
        (4, "title", NON_UTF8.format(["title"])),
        (5, "description", NON_UTF8.format(["description"])),
    ]
    assert rejected["raw"][0] == "2,Caf\ufffd latin-1,bad"  # undecodable bytes shown as U+FFFD


def test_non_utf8_jsonl_bytes():
    clean, rejects, _ = ads_of("ads_non_utf8.jsonl")
    assert clean.select("ad_id", "title").rows() == [(1, "Café"), (3, "ok")]
    assert rejects == [(2, "*", "non-UTF-8 bytes at byte 26; re-save the file as UTF-8")]


def test_non_utf8_header_fails_the_file():
    with pytest.raises(InputFileError, match=r"ads_non_utf8_header\.csv, line 1: the header has non-UTF-8 bytes\. "
                                             r"Fix: save the file as UTF-8"):
        read_rows(BAD / "ads_non_utf8_header.csv", AD_REQUIRED)


def test_interactions_unknown_ids_and_other_defects():
    ads = read_rows(BAD / "ads_catalog.csv", AD_REQUIRED)
    known = validate_ads(ads.rows, ads.source).clean["ad_id"]
    parsed = read_rows(BAD / "interactions_bad.csv", INTERACTION_REQUIRED)
    res = validate_interactions(parsed.rows, parsed.source, known)
    assert res.clean.rows() == [(1, 1, 10), (1, 2, 20), (2, 3, 5), (3, 2, 40)]
    unknown = "ad_id {} is not in raw_ads (unknown ad, or the ad was rejected: see rejected_ads)"
    assert res.rejected.select("line", "field", "reason").rows() == [
        (4, "ad_id", unknown.format(99)),
        (6, "ad_id", unknown.format(-1)),
        (7, "ad_id", "ad_id is missing; every interaction needs an integer user_id, ad_id and timestamp"),
        (8, "user_id", "user_id x is not an integer"),
        (9, "timestamp", "timestamp -5 is negative"),
        (11, "*", "duplicate event (user 3, ad 2, timestamp 40; first at line 10)"),
        (12, "timestamp", "timestamp 30 is earlier than a previous event (40) of user 3; sort events by time per user, "
                          "or set timestamp_order='sort'"),
        (13, "timestamp", "timestamp 1.5 is not an integer"),
    ]
    assert res.clean.height + res.rejected.height == parsed.rows.height


def test_interactions_of_rejected_ads_are_rejected_through_ingest():
    """End to end: ads rejected in validation make their interactions unknown, and counts add up."""
    res = ingest(IngestionConfig(source="files", ads_path=str(BAD / "ads_duplicate_ids.csv"),
                                 interactions_path=str(BAD / "interactions_bad.csv")))
    assert res.info["ads_in"] == 6 and res.info["ads_clean"] == 3 and res.info["interactions_in"] == 12
    assert res.info["interactions_clean"] + res.info["interactions_rejected"] == 12


@pytest.mark.parametrize("name,message", [
    ("empty.csv", "file is empty (0 bytes). Fix: re-export the file; it must have a header (CSV) or rows"),
    ("empty.jsonl", "file is empty (0 bytes). Fix: re-export the file; it must have a header (CSV) or rows"),
    ("blank_lines.jsonl", "no JSON lines found. Fix: write one JSON object per line"),
])
def test_empty_files_fail_with_the_fix(name, message):
    with pytest.raises(InputFileError) as err:
        read_rows(BAD / name, AD_REQUIRED)
    assert str(err.value) == f"{BAD / name}: {message}"


def test_header_only_csv_gives_no_rows_and_no_rejects():
    clean, rejects, _ = ads_of("header_only.csv")
    assert clean.height == 0 and rejects == []


def test_truncated_parquet_fails_with_the_fix():
    with pytest.raises(InputFileError) as err:
        read_rows(BAD / "truncated.parquet", AD_REQUIRED)
    msg = str(err.value)
    assert msg.startswith(f"{BAD / 'truncated.parquet'}: cannot read Parquet (")
    assert msg.endswith("the file is truncated or not Parquet. Fix: re-export the file (check the writer finished and "
                        "the copy is complete)")


def test_every_corpus_file_is_covered():
    """A file added to tests/data/bad/ must get a test here."""
    source = Path(__file__).read_text()
    missing = [p.name for p in BAD.iterdir() if p.name != "README.md" and p.name not in source]
    assert not missing, missing
