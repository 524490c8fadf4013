import json

import polars as pl
import pytest

from unisid_pipeline.data.ingest import IngestionConfig, ingest
from unisid_pipeline.data.readers import InputFileError, read_rows
from unisid_pipeline.data.schema import AD_COLUMNS, REJECTED_COLUMNS
from unisid_pipeline.data.validation import validate_ads, validate_interactions

ADS_CSV = (
    b"ad_id,title,description,price,category_path\n"
    b"1,Red lipstick,Matte finish,9.5,Beauty > Makeup > Lipstick\n"  # line 2 good
    b"2,,no title,1,\n"  # line 3 empty title
    b"x,Bad id,,2,\n"  # line 4 type error
    b"1,Duplicate,,4,\n"  # line 5 duplicate id
    b'3,"Quoted, comma",ok,1,,extra\n'  # line 6 too many fields
    b"4,caf\xe9,latin-1 bytes,2,\n"  # line 7 non-UTF-8
    b"5,Negative price,,-1,\n"  # line 8 negative price
    b"6,No price,,,\n"  # line 9 good
    b'7,"Multi\nline title",desc,3,\n'  # lines 10-11 good (quoted newline)
    b"8,Last,,abc,\n"  # line 12 bad price
)


def _write(tmp_path, name, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_csv_bad_rows_rejected_with_line_field_and_reason_good_rows_kept(tmp_path):
    parsed = read_rows(_write(tmp_path, "ads.csv", ADS_CSV), ("ad_id", "title"))
    res = validate_ads(parsed.rows, parsed.source)
    rejected = pl.concat([parsed.rejected, res.rejected]).sort("line")
    assert res.clean["ad_id"].to_list() == [1, 6, 7]
    assert res.clean["title"].to_list()[2] == "Multi\nline title"
    by_line = {r["line"]: r for r in rejected.to_dicts()}
    assert sorted(by_line) == [3, 4, 5, 6, 7, 8, 12]
    assert by_line[3]["field"] == "title" and "missing" in by_line[3]["reason"]
    assert by_line[4]["field"] == "ad_id" and "not an integer" in by_line[4]["reason"]
    assert by_line[5]["field"] == "ad_id" and "duplicate ad_id 1 (first at line 2)" in by_line[5]["reason"]
    assert "expected 5 fields, got 6" in by_line[6]["reason"]
    assert "non-UTF-8" in by_line[7]["reason"]
    assert by_line[8]["field"] == "price"
    assert by_line[12]["field"] == "price" and "abc" in by_line[12]["reason"]
    # raw keeps the original values
    assert json.loads(by_line[4]["raw"])["ad_id"] == "x"
    assert dict(rejected.schema) == REJECTED_COLUMNS
    assert dict(res.clean.schema) == AD_COLUMNS


def test_jsonl_bad_lines_and_types(tmp_path):
    lines = [
        json.dumps({"ad_id": 1, "title": "A", "image_features": [0.1, 0.2]}),
        "{not json",
        json.dumps([1, 2]),
        json.dumps({"ad_id": 2, "title": "B", "image_features": [0.1]}),  # wrong vector length
        json.dumps({"ad_id": 3, "title": "C", "image_features": [0.3, 0.4], "price": "7"}),
        json.dumps({"ad_id": 4, "title": "D", "image_features": "oops"}),
    ]
    data = ("\n".join(lines) + "\n").encode() + b'{"ad_id": 5, "title": "\xff"}\n'
    parsed = read_rows(_write(tmp_path, "ads.jsonl", data), ("ad_id", "title"))
    res = validate_ads(parsed.rows, parsed.source)
    assert res.clean["ad_id"].to_list() == [1, 3]
    assert res.clean["price"].to_list() == [None, 7.0]
    reasons = {r["line"]: r["reason"] for r in pl.concat([parsed.rejected, res.rejected]).to_dicts()}
    assert "invalid JSON" in reasons[2]
    assert "expected a JSON object" in reasons[3]
    assert "expected 2" in reasons[4]
    assert "JSON list of finite numbers" in reasons[6]
    assert "non-UTF-8" in reasons[7]


def test_text_longer_than_limit_is_rejected():
    rows = pl.DataFrame({"ad_id": [1, 2], "title": ["ok", "x" * 50]})
    res = validate_ads(rows, "mem", max_text_chars=10)
    assert res.clean["ad_id"].to_list() == [1]
    assert "50 characters (limit 10)" in res.rejected["reason"][0]


def test_unreadable_files_fail_with_file_line_and_fix(tmp_path):
    empty = _write(tmp_path, "empty.csv", b"")
    with pytest.raises(InputFileError, match=r"empty\.csv: file is empty \(0 bytes\).*Fix:"):
        read_rows(empty, ("ad_id",))
    no_col = _write(tmp_path, "ads.csv", b"id,name\n1,a\n")
    with pytest.raises(InputFileError, match=r"ads\.csv, line 1: required column\(s\) \['ad_id', 'title'\] missing"):
        read_rows(no_col, ("ad_id", "title"))
    good = tmp_path / "ok.parquet"
    pl.DataFrame({"ad_id": list(range(1000)), "title": ["t"] * 1000}).write_parquet(good)
    truncated = _write(tmp_path, "bad.parquet", good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(InputFileError, match=r"bad\.parquet: cannot read Parquet.*truncated"):
        read_rows(truncated, ("ad_id",))
    with pytest.raises(InputFileError, match="unsupported file type '.xlsx'"):
        read_rows(_write(tmp_path, "ads.xlsx", b"x"), ("ad_id",))
    with pytest.raises(InputFileError, match="does not exist"):
        read_rows(tmp_path / "nope.csv", ("ad_id",))


def test_interactions_unknown_ads_duplicates_and_time_going_back():
    rows = pl.DataFrame({
        "user_id": ["1", "1", "1", "1", "2", "2", "3"],
        "ad_id": ["1", "2", "99", "3", "1", "1", "zz"],
        "timestamp": ["10", "20", "30", "15", "5", "5", "1"],
    })
    res = validate_interactions(rows, "mem", pl.Series([1, 2, 3]))
    assert res.clean.rows() == [(1, 1, 10), (1, 2, 20), (2, 1, 5)]
    reasons = {r["line"]: (r["field"], r["reason"]) for r in res.rejected.to_dicts()}
    assert reasons[3][0] == "ad_id" and "not in raw_ads" in reasons[3][1]
    assert reasons[4][0] == "timestamp" and "earlier than a previous event (20)" in reasons[4][1]
    assert "duplicate event" in reasons[6][1]
    assert reasons[7][0] == "ad_id" and "not an integer" in reasons[7][1]
    sorted_res = validate_interactions(rows, "mem", pl.Series([1, 2, 3]), timestamp_order="sort")
    assert (1, 3, 15) in sorted_res.clean.rows()
    assert sorted_res.clean.filter(pl.col("user_id") == 1)["timestamp"].to_list() == [10, 15, 20]


def test_files_source_counts_add_up(tmp_path):
    ads = _write(tmp_path, "ads.csv", ADS_CSV)
    inter = _write(tmp_path, "clicks.csv", b"user_id,ad_id,timestamp\n1,1,1\n1,6,2\n1,2,3\n2,7,1\nbad,1,1\n")
    res = ingest(IngestionConfig(source="files", ads_path=str(ads), interactions_path=str(inter)))
    assert res.info["ads_in"] == 10 == res.raw_ads.height + res.rejected_ads.height
    assert res.info["interactions_in"] == 5
    assert res.ad_interactions.height == 3  # ad 2 was rejected, "bad" user id
    assert set(res.rejected_interactions["line"].to_list()) == {4, 6}


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="source"):
        IngestionConfig(source="s3")
    with pytest.raises(ValueError, match="ads_path and interactions_path"):
        IngestionConfig(source="files")
    with pytest.raises(ValueError, match="beauty_dir"):
        IngestionConfig(source="amazon_beauty")


def test_every_rejected_row_carries_its_source_row_as_json_and_clean_rows_never_do():
    """raw is built for rejected lines only (valid rows of a 1M catalog never get a JSON copy)."""
    ads = pl.DataFrame({"ad_id": ["1", "2", "1", "x", "3"], "title": ["a", "", "dup", "b", "c"],
                        "price": ["1", "2", "3", "4", "-5"]})
    res = validate_ads(ads, "ads.csv")
    assert res.clean["ad_id"].to_list() == [1]
    expected = {i + 1: json.dumps(r, separators=(",", ":")) for i, r in enumerate(ads.to_dicts())}
    assert res.rejected["line"].to_list() == [2, 3, 4, 5]
    assert {r["line"]: json.loads(r["raw"]) for r in res.rejected.to_dicts()} == {
        line: json.loads(expected[line]) for line in (2, 3, 4, 5)}
    inter = pl.DataFrame({"user_id": [1, 1, 1, 2, 2], "ad_id": [1, 1, 9, 1, 1], "timestamp": [5, 5, 6, 9, 3]})
    res_i = validate_interactions(inter, "inter.csv", pl.Series([1]))
    reasons = {r["line"]: (r["reason"], json.loads(r["raw"])) for r in res_i.rejected.to_dicts()}
    assert sorted(reasons) == [2, 3, 5]  # duplicate event, unknown ad, back in time
    assert all(raw == inter.row(line - 1, named=True) for line, (_, raw) in reasons.items())
