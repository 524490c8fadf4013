"""Input faults found by an outside probe (issue #31): each one refused or rejected, naming file, line, field and fix.

Nothing is silently dropped or changed: a whole file that cannot be used raises `InputFileError`; a bad row
goes to rejected_ads / rejected_interactions with (source, line, field, reason, raw).
"""
import json
import os
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from unisid_pipeline.data.ingest import IngestionConfig, ingest
from unisid_pipeline.data.readers import InputFileError, read_rows
from unisid_pipeline.data.schema import AD_REQUIRED

CLICKS = "user_id,ad_id,timestamp\n1,1,10\n1,2,20\n"


def _files(tmp_path, ads_name, ads, clicks=CLICKS, clicks_name="clicks.csv"):
    ads_path, clicks_path = tmp_path / ads_name, tmp_path / clicks_name
    for path, data in ((ads_path, ads), (clicks_path, clicks)):
        if isinstance(data, pa.Table):
            pq.write_table(data, path)
        elif isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data)
    return ads_path, clicks_path


def run(tmp_path, ads_name, ads, clicks=CLICKS, clicks_name="clicks.csv", **cfg):
    ads_path, clicks_path = _files(tmp_path, ads_name, ads, clicks, clicks_name)
    res = ingest(IngestionConfig(source="files", ads_path=str(ads_path), interactions_path=str(clicks_path), **cfg))
    assert res.info["ads_in"] == res.raw_ads.height + res.rejected_ads.height + res.info.get("ads_upserted", 0)
    assert res.info["interactions_in"] == res.ad_interactions.height + res.rejected_interactions.height
    return res


def rejects(frame: pl.DataFrame) -> list[tuple]:
    return [(Path(r["source"]).name, r["line"], r["field"], r["reason"]) for r in frame.to_dicts()]


# 1. Reserved internal column names ----------------------------------------------------------------------------

@pytest.mark.parametrize("column", ["_line", "__first", "__err_title"])
@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_reserved_column_names_refuse_the_file(tmp_path, fmt, column):
    # Bug fixed: a user column `_line` overwrote the line counter and let duplicate ad_ids into raw_ads.
    rows = [{"ad_id": 1, "title": "a", column: 5}, {"ad_id": 1, "title": "b", column: 6}]
    path = tmp_path / f"ads.{fmt}"
    if fmt == "csv":
        path.write_text(f"ad_id,title,{column}\n1,a,5\n1,b,6\n")
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(InputFileError) as err:
        read_rows(path, AD_REQUIRED)
    msg = str(err.value)
    assert str(path) in msg and repr(column) in msg and "reserved" in msg and "rename" in msg
    if fmt != "parquet":
        assert err.value.line == 1


# 2a. Repeated JSON keys ----------------------------------------------------------------------------------------

def test_json_object_with_a_repeated_key_is_rejected(tmp_path):
    res = run(tmp_path, "ads.jsonl", '{"ad_id":1,"title":"a","title":"b"}\n{"ad_id":2,"title":"ok"}\n'
              '{"ad_id":3,"title":"n","image_features":{"x":1,"x":2}}\n')
    assert res.raw_ads["ad_id"].to_list() == [2]
    got = rejects(res.rejected_ads)
    assert got[0][:3] == ("ads.jsonl", 1, "title") and "duplicate key 'title'" in got[0][3]
    assert got[1][:3] == ("ads.jsonl", 3, "image_features") and "duplicate key 'x'" in got[1][3]
    assert res.rejected_ads["raw"][0] == '{"ad_id":1,"title":"a","title":"b"}'  # the line as written


# 2b. Non-text values in text fields ----------------------------------------------------------------------------

def test_jsonl_struct_list_bool_number_in_text_fields_are_rejected(tmp_path):
    lines = [{"ad_id": 1, "title": {"en": "x"}}, {"ad_id": 2, "title": "ok", "brand": ["a"]},
             {"ad_id": 3, "title": "ok", "advertiser": True}, {"ad_id": 4, "title": 12},
             {"ad_id": 5, "title": "fine", "category_path": ["A", "B"], "image_features": [1, 2.5], "price": 3},
             {"ad_id": "6", "title": "string id", "landing_type": None}]
    res = run(tmp_path, "ads.jsonl", "".join(json.dumps(x) + "\n" for x in lines))
    assert res.raw_ads["ad_id"].to_list() == [5, 6]
    assert res.raw_ads["category_path"][0] == "A > B"
    got = rejects(res.rejected_ads)
    assert [g[1:3] for g in got] == [(1, "title"), (2, "brand"), (3, "advertiser"), (4, "title")]
    assert "a JSON object" in got[0][3] and "expected a string" in got[0][3]
    assert "a JSON array" in got[1][3] and "a JSON boolean" in got[2][3] and "a JSON number" in got[3][3]


def test_parquet_struct_list_bool_number_in_text_fields_are_rejected(tmp_path):
    table = pa.table({
        "ad_id": [1, 2],
        "title": ["a", "b"],
        "description": pa.array([{"x": 1}, None], pa.struct([("x", pa.int64())])),
        "brand": pa.array([None, ["p", "q"]], pa.list_(pa.string())),
        "industry": [True, None],
        "landing_type": [None, 7],
    })
    res = run(tmp_path, "ads.parquet", table)
    assert res.raw_ads.height == 0
    got = rejects(res.rejected_ads)
    assert [g[1:3] for g in got] == [(1, "description"), (2, "brand")]
    assert "description has type Struct" in got[0][3] and "industry has type Boolean" in got[0][3]
    assert "brand has type List" in got[1][3] and "landing_type has type Int64" in got[1][3]
    assert "expected text" in got[0][3]


def test_parquet_nested_or_scalar_values_where_the_other_belongs_are_rejected_not_a_crash(tmp_path):
    # Found by the fuzz test below: polars raised (could not cast) and the whole ingestion crashed.
    table = pa.table({"ad_id": pa.array([["1"], None], pa.list_(pa.string())), "title": ["a", "b"],
                      "image_features": pa.array([None, 3], pa.int64())})
    res = run(tmp_path, "ads.parquet", table)
    got = rejects(res.rejected_ads)
    assert [g[1:3] for g in got] == [(1, "ad_id"), (2, "ad_id")]
    assert "ad_id has type List(String), expected an integer" in got[0][3]
    assert "ad_id is missing" in got[1][3] and "image_features has type Int64, expected a list of floats" in got[1][3]


# 2c. Lone surrogates and invalid UTF-8 -------------------------------------------------------------------------

def test_jsonl_lone_surrogate_escape_rejects_its_line(tmp_path):
    res = run(tmp_path, "ads.jsonl", '{"ad_id":1,"title":"ok"}\n{"ad_id":2,"title":"bad \\ud800 x"}\n'
              '{"ad_id":3,"title":"ok","category_path":["A","\\udfff"]}\n')
    assert res.raw_ads["ad_id"].to_list() == [1]
    got = rejects(res.rejected_ads)
    assert [g[:3] for g in got] == [("ads.jsonl", 2, "title"), ("ads.jsonl", 3, "category_path")]
    assert "lone surrogate" in got[0][3] and "\\ud800" in got[0][3]


def _invalid_utf8_table(as_string: bool) -> pa.Table:
    raw = pa.array([b"ok", b"fine", b"caf\xe9", b"x"], pa.binary())
    return pa.table({"ad_id": [1, 2, 3, 4], "title": raw.view(pa.string()) if as_string else raw})


@pytest.mark.parametrize("as_string", [True, False])
def test_parquet_invalid_utf8_names_file_column_and_row(tmp_path, as_string):
    path = tmp_path / "ads.parquet"
    pq.write_table(_invalid_utf8_table(as_string), path)
    with pytest.raises(InputFileError) as err:
        read_rows(path, AD_REQUIRED)
    assert err.value.line == 3
    msg = str(err.value)
    assert str(path) in msg and "'title'" in msg and "invalid UTF-8" in msg and "UTF-8" in err.value.fix


def test_parquet_binary_text_that_is_valid_utf8_is_read_as_text(tmp_path):
    path = tmp_path / "ads.parquet"
    pq.write_table(pa.table({"ad_id": [1], "title": pa.array(["Crème".encode()], pa.binary())}), path)
    assert read_rows(path, AD_REQUIRED).rows["title"].to_list() == ["Crème"]


# 2d. Datetime timestamps ---------------------------------------------------------------------------------------

def _datetime_clicks(kind: str) -> pa.Table:
    import datetime as dt

    if kind == "date":
        ts = pa.array([dt.date(2024, 1, 1), dt.date(2024, 1, 2)], pa.date32())
    else:
        ts = pa.array([dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 1, 0, 0, 5)], pa.timestamp("us"))
    return pa.table({"user_id": [1, 1], "ad_id": [1, 2], "timestamp": ts})


@pytest.mark.parametrize("kind", ["datetime", "date"])
def test_parquet_datetime_timestamps_refused_unless_converted(tmp_path, kind):
    ads = "ad_id,title\n1,a\n2,b\n"
    # Bug fixed: a Datetime column was cast to microseconds where the schema says seconds.
    with pytest.raises(InputFileError) as err:
        run(tmp_path, "ads.csv", ads, _datetime_clicks(kind), "clicks.parquet")
    msg = str(err.value)
    assert "clicks.parquet" in msg and "'timestamp'" in msg and "datetime_timestamps='epoch_seconds'" in msg
    res = run(tmp_path, "ads.csv", ads, _datetime_clicks(kind), "clicks.parquet", datetime_timestamps="epoch_seconds")
    expected = [1704067200, 1704067205] if kind == "datetime" else [1704067200, 1704153600]
    assert res.ad_interactions["timestamp"].to_list() == expected


# 2e. Timestamp unit ---------------------------------------------------------------------------------------------

ADS3 = "ad_id,title\n1,a\n2,b\n3,c\n"


def test_milliseconds_among_seconds_are_rejected(tmp_path):
    # Bug fixed: 1700000000 (s) and 1700000001000 (ms) of one user were both accepted, in the wrong order.
    clicks = "user_id,ad_id,timestamp\n1,1,1700000000\n1,2,1700000001000\n1,3,1700000002\n2,1,3\n2,2,99999999\n"
    res = run(tmp_path, "ads.csv", ADS3, clicks)
    assert res.ad_interactions.rows() == [(1, 1, 1700000000), (1, 3, 1700000002), (2, 1, 3), (2, 2, 99999999)]
    assert rejects(res.rejected_interactions) == [("clicks.csv", 3, "timestamp", (
        "timestamp 1700000001000 looks like milliseconds; timestamps must be seconds, or set timestamp_unit='ms'"))]


def test_timestamp_unit_ms_converts_and_rejects_seconds(tmp_path):
    clicks = "user_id,ad_id,timestamp\n1,1,1700000000500\n1,2,1700000000900\n1,3,1700000002\n2,1,0\n"
    res = run(tmp_path, "ads.csv", ADS3, clicks, timestamp_unit="ms")
    # 500 ms and 900 ms fall in the same second: the tie keeps file order
    assert res.ad_interactions.rows() == [(1, 1, 1700000000), (1, 2, 1700000000), (2, 1, 0)]
    got = rejects(res.rejected_interactions)
    assert got[0][1:3] == (4, "timestamp") and "looks like seconds" in got[0][3]
    with pytest.raises(ValueError, match="timestamp_unit"):
        IngestionConfig(timestamp_unit="us")


# 2f. Unknown columns ------------------------------------------------------------------------------------------

def test_unknown_columns_are_reported_with_a_suggestion(tmp_path):
    res = run(tmp_path, "ads.csv", "ad_id,title,descripton,Price,colour\n1,a,b,3,red\n")
    assert res.raw_ads.height == 1  # the run goes on
    unknown = res.info["unknown_columns"]
    assert unknown == {str(tmp_path / "ads.csv"): {"descripton": "description", "Price": "price", "colour": None}}


# 3. A .json file holding one array ------------------------------------------------------------------------------

def test_json_array_file_is_read_as_records(tmp_path):
    # Bug fixed: the whole array was one rejected "line" and raw_ads came out empty.
    data = json.dumps([{"ad_id": 1, "title": "a"}, {"ad_id": 2, "title": "b"}, [1, 2], {"ad_id": 3, "title": 5}],
                      indent=2)
    res = run(tmp_path, "ads.json", "  \n" + data)
    assert res.raw_ads["ad_id"].to_list() == [1, 2]
    got = rejects(res.rejected_ads)
    assert [g[:3] for g in got] == [("ads.json", 3, "*"), ("ads.json", 4, "title")]
    assert "array element 3" in got[0][3] and "expected a JSON object, got list" in got[0][3]
    assert "array element 4" in got[1][3]


def test_json_array_that_is_not_valid_json_fails_the_file(tmp_path):
    path = tmp_path / "ads.json"
    path.write_text('[{"ad_id": 1, "title": "a"},\n {"ad_id": 2\n')
    with pytest.raises(InputFileError) as err:
        read_rows(path, AD_REQUIRED)
    assert err.value.line == 3 and "JSON array" in str(err.value)


# 4. Resource limits ---------------------------------------------------------------------------------------------

def test_parquet_expanding_past_the_row_limit_is_refused_before_reading(tmp_path):
    # Bug fixed: a few-KB Parquet file expanding to 30M rows aborted the process (out of memory).
    path = tmp_path / "ads.parquet"
    group = pa.table({"ad_id": pa.array([1] * 1_000_000, pa.int64()), "title": pa.array(["x"] * 1_000_000)})
    with pq.ParquetWriter(path, group.schema, compression="zstd") as writer:
        for _ in range(30):
            writer.write_table(group)
    assert path.stat().st_size < 2_000_000
    with pytest.raises(InputFileError) as err:
        read_rows(path, AD_REQUIRED)
    msg = str(err.value)
    assert "30,000,000 rows" in msg and "max_input_rows" in msg and "20,000,000" in msg


def test_input_byte_limit_counts_parquet_uncompressed_size_and_text_file_size(tmp_path):
    pq_path = tmp_path / "ads.parquet"
    pq.write_table(pa.table({"ad_id": list(range(1000)), "title": ["same title"] * 1000}), pq_path)
    with pytest.raises(InputFileError, match="max_input_bytes"):
        run(tmp_path, "ads.parquet", pq.read_table(pq_path), max_input_bytes=1000)
    with pytest.raises(InputFileError, match="uncompressed") as err:
        run(tmp_path, "ads.parquet", pq.read_table(pq_path), max_input_bytes=1000)
    assert "raise max_input_bytes" in err.value.fix
    with pytest.raises(InputFileError, match="max_input_bytes"):
        run(tmp_path, "ads.csv", "ad_id,title\n" + "".join(f"{i},t\n" for i in range(100)), max_input_bytes=100)
    with pytest.raises(InputFileError, match="max_input_rows"):
        run(tmp_path, "ads.csv", "ad_id,title\n" + "".join(f"{i},t\n" for i in range(100)), max_input_rows=50)
    res = run(tmp_path, "ads.csv", "ad_id,title\n" + "".join(f"{i},t\n" for i in range(1, 3)), max_input_rows=50)
    assert res.raw_ads.height == 2


# 5. Several files ------------------------------------------------------------------------------------------------

def _multi(tmp_path, ads: dict[str, str], clicks: dict[str, str], **cfg):
    for name, text in {**ads, **clicks}.items():
        (tmp_path / name).write_text(text)
    res = ingest(IngestionConfig(source="files", ads_path=[str(tmp_path / n) for n in ads],
                                 interactions_path=[str(tmp_path / n) for n in clicks], **cfg))
    assert res.info["ads_in"] == res.raw_ads.height + res.rejected_ads.height + res.info["ads_upserted"]
    assert res.info["interactions_in"] == res.ad_interactions.height + res.rejected_interactions.height
    return res


DELTAS = {"ads_1.csv": "ad_id,title\n1,one\n2,two\n", "ads_2.jsonl": '{"ad_id": 2, "title": "two v2"}\n{"ad_id": 3, '
          '"title": "three"}\n{"ad_id": 3, "title": "three again"}\n'}


def test_several_ads_files_are_one_union_repeats_rejected_naming_both_files(tmp_path):
    # Bug fixed: raw_ads held only the last file.
    res = _multi(tmp_path, DELTAS, {"clicks.csv": CLICKS})
    assert res.raw_ads.select("ad_id", "title").rows() == [(1, "one"), (2, "two"), (3, "three")]
    got = rejects(res.rejected_ads)
    assert [g[:3] for g in got] == [("ads_2.jsonl", 1, "ad_id"), ("ads_2.jsonl", 3, "ad_id")]
    assert f"duplicate ad_id 2 (first in {tmp_path / 'ads_1.csv'} line 3)" in got[0][3] and "last_wins" in got[0][3]
    assert "duplicate ad_id 3 (first at line 2)" in got[1][3]
    assert res.rejected_ads["raw"][0] == '{"ad_id":"2","title":"two v2"}'
    assert res.info["ads_upserted"] == 0


def test_last_wins_lets_a_later_file_replace_earlier_rows(tmp_path):
    res = _multi(tmp_path, DELTAS, {"clicks.csv": CLICKS}, on_duplicate_ad="last_wins")
    assert res.raw_ads.select("ad_id", "title").rows() == [(1, "one"), (2, "two v2"), (3, "three")]
    assert res.info["ads_upserted"] == 1
    assert [g[:3] for g in rejects(res.rejected_ads)] == [("ads_2.jsonl", 3, "ad_id")]  # within a file: as before
    with pytest.raises(ValueError, match="on_duplicate_ad"):
        IngestionConfig(on_duplicate_ad="first")


def test_interactions_of_several_files_are_unioned_and_a_single_path_still_works(tmp_path):
    clicks = {"clicks_1.csv": "user_id,ad_id,timestamp\n1,1,10\n2,1,5\n",
              "clicks_2.csv": "user_id,ad_id,timestamp\n1,2,20\n2,1,5\n1,1,15\n"}
    res = _multi(tmp_path, {"ads.csv": "ad_id,title\n1,a\n2,b\n"}, clicks)
    assert res.ad_interactions.rows() == [(1, 1, 10), (1, 2, 20), (2, 1, 5)]
    got = rejects(res.rejected_interactions)
    assert [g[:3] for g in got] == [("clicks_2.csv", 3, "*"), ("clicks_2.csv", 4, "timestamp")]
    assert f"first in {tmp_path / 'clicks_1.csv'} line 3" in got[0][3]
    single = IngestionConfig(source="files", ads_path=str(tmp_path / "ads.csv"), interactions_path=str(tmp_path / "clicks_1.csv"))
    assert ingest(single).ad_interactions.height == 2
    with pytest.raises(ValueError, match="twice"):
        IngestionConfig(source="files", ads_path=["a.csv", "a.csv"], interactions_path="c.csv")


# 6. Input paths confined to allowed roots --------------------------------------------------------------------------

@pytest.fixture
def inbox(tmp_path):
    """tmp_path/in holding an ads and a clicks file; tmp_path/secret.csv outside it."""
    root = tmp_path / "in"
    root.mkdir()
    (root / "ads.csv").write_text("ad_id,title\n1,a\n2,b\n")
    (root / "clicks.csv").write_text(CLICKS)
    (tmp_path / "secret.csv").write_text("ad_id,title\nroot:x:0:0,secret\n")
    return root


def _cfg(root, ads, **kw):
    return IngestionConfig(source="files", ads_path=str(ads), interactions_path=str(root / "clicks.csv"), **kw)


def test_paths_outside_the_allowed_roots_are_refused(inbox, monkeypatch):
    # Bug fixed: `..` paths were followed, so any readable file ended up in rejected rows and logs.
    assert ingest(_cfg(inbox, inbox / "ads.csv", allowed_roots=(str(inbox),))).raw_ads.height == 2
    escape = inbox / ".." / "secret.csv"
    with pytest.raises(InputFileError) as err:
        ingest(_cfg(inbox, escape, allowed_roots=(str(inbox),)))
    assert str(escape) in str(err.value) and "outside the allowed input folders" in str(err.value)
    assert "allowed_roots" in err.value.fix and "UNISID_INPUT_ROOTS" in err.value.fix
    # default roots: the working directory and $UNISID_INPUT_ROOTS
    monkeypatch.setenv("UNISID_INPUT_ROOTS", os.pathsep.join(["/nonexistent", str(inbox)]))
    assert ingest(_cfg(inbox, inbox / "ads.csv")).raw_ads.height == 2
    with pytest.raises(InputFileError, match="outside the allowed input folders"):
        ingest(_cfg(inbox, escape))
    monkeypatch.delenv("UNISID_INPUT_ROOTS")
    monkeypatch.chdir(inbox)
    assert ingest(_cfg(inbox, "ads.csv")).raw_ads.height == 2
    with pytest.raises(InputFileError, match="outside the allowed input folders"):
        ingest(_cfg(inbox, "../secret.csv"))


def test_symlinked_inputs_are_refused_unless_follow_symlinks(inbox, tmp_path):
    (inbox / "link.csv").symlink_to(inbox / "ads.csv")
    (inbox / "sub").mkdir()
    (inbox / "sub" / "ads.csv").write_text("ad_id,title\n1,a\n")
    (inbox / "linkdir").symlink_to(inbox / "sub")
    (inbox / "outside.csv").symlink_to(tmp_path / "secret.csv")
    roots = (str(inbox),)
    for path in (inbox / "link.csv", inbox / "linkdir" / "ads.csv"):
        with pytest.raises(InputFileError) as err:
            ingest(_cfg(inbox, path, allowed_roots=roots))
        assert "symbolic link" in str(err.value) and "follow_symlinks" in err.value.fix
        assert ingest(_cfg(inbox, path, allowed_roots=roots, follow_symlinks=True)).raw_ads.height >= 1
    with pytest.raises(InputFileError, match="outside the allowed input folders"):  # a link out of the roots
        ingest(_cfg(inbox, inbox / "outside.csv", allowed_roots=roots, follow_symlinks=True))



def test_amazon_beauty_paths_are_confined_like_files(tmp_path, monkeypatch):
    """Bug fixed: source=amazon_beauty read beauty_dir from anywhere, through any symbolic link. Its files now go
    through the same `confine` as source=files: allowed_roots / $UNISID_INPUT_ROOTS, follow_symlinks."""
    import shutil

    from test_beauty_meta import _folder

    def beauty(folder, **kw):
        return ingest(IngestionConfig(source="amazon_beauty", beauty_dir=str(folder), **kw))

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    folder = _folder(tmp_path, None)  # tmp_path/beauty: beside inbox, not in it
    n_items = beauty(folder, allowed_roots=(str(tmp_path),)).raw_ads.height  # under the roots: read as before
    assert n_items == 4
    for outside in (folder, inbox / ".." / "beauty"):
        with pytest.raises(InputFileError) as err:
            beauty(outside, allowed_roots=(str(inbox),))
        assert str(outside) in str(err.value) and "outside the allowed input folders" in str(err.value)
        assert "allowed_roots" in err.value.fix and "UNISID_INPUT_ROOTS" in err.value.fix
    monkeypatch.setenv("UNISID_INPUT_ROOTS", str(inbox))  # default roots: the working directory and the env
    monkeypatch.chdir(inbox)
    with pytest.raises(InputFileError, match="outside the allowed input folders"):
        beauty(folder)
    # a symlinked folder, or one file of the folder a symbolic link: refused unless follow_symlinks
    (inbox / "beauty_link").symlink_to(folder)
    shutil.copytree(folder, inbox / "beauty_copy")
    (inbox / "beauty_copy" / "sequential_data.txt").unlink()
    (inbox / "beauty_copy" / "sequential_data.txt").symlink_to(folder / "sequential_data.txt")
    roots = (str(tmp_path),)
    for linked in (inbox / "beauty_link", inbox / "beauty_copy"):
        with pytest.raises(InputFileError) as err:
            beauty(linked, allowed_roots=roots)
        assert "symbolic link" in str(err.value) and "follow_symlinks" in err.value.fix
        assert beauty(linked, allowed_roots=roots, follow_symlinks=True).raw_ads.height == n_items
    with pytest.raises(InputFileError, match="outside the allowed input folders"):  # a link out of the roots
        beauty(inbox / "beauty_link", allowed_roots=(str(inbox),), follow_symlinks=True)


def test_cli_input_files_may_lie_anywhere_but_symlinks_and_fifos_are_refused(home, tmp_path, monkeypatch, capsys):
    """`unisid encode / recommend / evaluate` read the files named on the command line with ingestion's readers:
    not limited to the input roots (an explicit argument), but a file reached through a symbolic link is refused
    as in ingestion unless --follow-symlinks, and a FIFO or folder is refused. Was: any link followed."""
    from unisid_pipeline.cli import main as cli

    monkeypatch.setenv("UNISID_INPUT_ROOTS", "/nonexistent")  # the files below are under no input root
    real = tmp_path / "real"
    real.mkdir()
    (real / "clicks.csv").write_text(CLICKS)
    (real / "ads.csv").write_text(ADS3)
    (tmp_path / "link.csv").symlink_to(real / "clicks.csv")
    (tmp_path / "ads_link.csv").symlink_to(real / "ads.csv")
    (tmp_path / "linkdir").symlink_to(real)
    out = str(tmp_path / "out.parquet")

    def rows(argv):  # the valid rows the command would use (no registered model needed)
        args = cli.build_parser().parse_args(argv)
        path, kind = (args.ads, "ads") if args.command == "encode" else (args.interactions, "interactions")
        return cli._clean_rows(path, kind, Path(out), args)

    assert rows(["recommend", "--interactions", str(real / "clicks.csv"), "--out", out]).height == 2  # anywhere
    refused = [["recommend", "--interactions", str(tmp_path / "link.csv"), "--out", out],
               ["evaluate", "--interactions", str(tmp_path / "linkdir" / "clicks.csv")],
               ["encode", "--ads", str(tmp_path / "ads_link.csv"), "--out", out]]
    for argv in refused:
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert "is a symbolic link" in err and "--follow-symlinks" in err, err
        assert rows([*argv, "--follow-symlinks"]).height in (2, 3)
    os.mkfifo(tmp_path / "pipe.csv")
    for path in (tmp_path / "pipe.csv", real):
        assert cli.main(["evaluate", "--interactions", str(path)]) == 2
        err = capsys.readouterr().err
        assert "not a regular file" in err or "is a directory" in err, err

# 7. Fuzz: random malformed files never crash ingestion ---------------------------------------------------------------

import datetime as _dt  # noqa: E402
import tempfile  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
NAMES = ["ad_id", "title", "description", "brand", "price", "category_path", "image_features", "landing_type",
         "_line", "__x", "descripton", "Price", "extra"]
KINDS = ["int", "float", "str", "bool", "struct", "list_str", "list_float", "datetime", "date", "binary", "bad_utf8", "null"]


def _column(kind: str, n: int, draw) -> pa.Array:
    nulls = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    ints = draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=n, max_size=n))
    def mask(values):
        return [None if z else v for v, z in zip(values, nulls)]
    if kind == "int":
        return pa.array(mask(ints), pa.int64())
    if kind == "float":
        return pa.array(mask([draw(st.floats(allow_nan=True)) for _ in range(n)]), pa.float64())
    if kind == "str":
        return pa.array(mask([draw(st.text(max_size=8)).encode("utf-8", "replace").decode() for _ in range(n)]), pa.string())
    if kind == "bool":
        return pa.array(mask([i % 2 == 0 for i in ints]), pa.bool_())
    if kind == "struct":
        return pa.array(mask([{"a": i} for i in ints]), pa.struct([("a", pa.int64())]))
    if kind == "list_str":
        return pa.array(mask([["A", "" if i % 3 == 0 else "B"] for i in ints]), pa.list_(pa.string()))
    if kind == "list_float":
        return pa.array(mask([[float(i % 7)] * (1 + i % 2) for i in ints]), pa.list_(pa.float32()))
    if kind == "datetime":
        return pa.array(mask([_dt.datetime(2024, 1, 1) + _dt.timedelta(seconds=i % 10**6) for i in ints]), pa.timestamp("us"))
    if kind == "date":
        return pa.array(mask([_dt.date(2024, 1, 1 + i % 28) for i in ints]), pa.date32())
    if kind in ("binary", "bad_utf8"):
        values = pa.array(mask([b"ok" if kind == "binary" or i % 2 else b"\xff\xfe" for i in ints]), pa.binary())
        return values.view(pa.string()) if kind == "bad_utf8" and n % 2 else values
    return pa.nulls(n)


@st.composite
def parquet_tables(draw):
    n = draw(st.integers(0, 6))
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=6, unique=True))
    return pa.table({name: _column(draw(st.sampled_from(KINDS)), n, draw) for name in names})


def _ingest_or_file_error(ads_path: Path, clicks_path: Path):
    try:
        return ingest(IngestionConfig(source="files", ads_path=str(ads_path), interactions_path=str(clicks_path)))
    except InputFileError as exc:
        assert exc.path in (str(ads_path), str(clicks_path)) and str(ads_path.parent) in str(exc)
        return None


@FUZZ
@given(table=parquet_tables())
def test_random_malformed_parquet_is_refused_or_fully_accounted(table):
    with tempfile.TemporaryDirectory(dir=os.environ["UNISID_INPUT_ROOTS"].split(os.pathsep)[-1]) as tmp:
        ads, clicks = _files(Path(tmp), "ads.parquet", table)
        res = _ingest_or_file_error(ads, clicks)
        if res is not None:
            assert res.info["ads_in"] == table.num_rows == res.raw_ads.height + res.rejected_ads.height


SEED_FILES = {
    "ads.csv": b'ad_id,title,price,image_features\n1,"a, b",2.5,"[1, 2]"\n2,t\xc3\xa9,,\n3,"q""x",1,[3]\n',
    "ads.jsonl": b'{"ad_id": 1, "title": "a", "category_path": ["A", "B"]}\n{"ad_id": 2, "title": "\\u00e9", "price": 1}\n',
    "ads.json": b'[{"ad_id": 1, "title": "a"}, {"ad_id": 2, "title": "b", "brand": "c"}]',
}


@FUZZ
@given(name=st.sampled_from(sorted(SEED_FILES)), edits=st.lists(
    st.tuples(st.integers(0, 10**6), st.sampled_from([b"", b'"', b",", b"\n", b"{", b"[", b"\\", b"\xff", b"_line",
                                                      b"\\ud800", b'"title":1,', b"\x00", b"\r\n", b"}"])),
    min_size=1, max_size=6))
def test_random_byte_mutations_of_text_files_are_refused_or_fully_accounted(name, edits):
    data = bytearray(SEED_FILES[name])
    for pos, insert in edits:
        pos %= len(data) + 1
        data[pos:pos + (1 if insert == b"" else 0)] = insert  # b"" deletes a byte
    with tempfile.TemporaryDirectory(dir=os.environ["UNISID_INPUT_ROOTS"].split(os.pathsep)[-1]) as tmp:
        ads, clicks = _files(Path(tmp), name, bytes(data))
        res = _ingest_or_file_error(ads, clicks)
        if res is not None:
            assert res.info["ads_in"] == res.raw_ads.height + res.rejected_ads.height
            assert set(res.rejected_ads["source"]) <= {str(ads)}
