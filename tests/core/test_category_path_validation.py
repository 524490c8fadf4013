"""The files source: category_path as a list (JSONL array, Parquet List[Utf8]) or a string with a configurable
separator, normalised to " > "; malformed paths go to rejected_ads naming the field and the fix."""
import json
import random

import polars as pl
import pytest

from unisid_pipeline.data.category_path import normalise_category_path
from unisid_pipeline.data.ingest import IngestionConfig, ingest
from unisid_pipeline.data.validation import validate_ads

INTERACTIONS = "user_id,ad_id,timestamp\n1,1,1\n1,2,2\n1,3,3\n2,4,1\n2,5,2\n"


def _ingest(tmp_path, ads_name: str, ads, **cfg):
    ads_path = tmp_path / ads_name
    if isinstance(ads, pl.DataFrame):
        ads.write_parquet(ads_path)
    else:
        ads_path.write_text(ads)
    inter = tmp_path / "interactions.csv"
    inter.write_text(INTERACTIONS)
    return ingest(IngestionConfig(source="files", ads_path=str(ads_path), interactions_path=str(inter), **cfg))


def _paths(res) -> dict[int, str | None]:
    return dict(zip(res.raw_ads["ad_id"].to_list(), res.raw_ads["category_path"].to_list()))


def _rejected(res) -> dict[int, dict]:
    return {r["line"]: r for r in res.rejected_ads.to_dicts()}


def test_jsonl_arrays_and_strings_become_one_joined_path(tmp_path):
    rows = [
        {"ad_id": 1, "title": "a", "category_path": ["Beauty", "Makeup", "Nails"]},
        {"ad_id": 2, "title": "b", "category_path": "Beauty > Skin Care"},
        {"ad_id": 3, "title": "c", "category_path": []},
        {"ad_id": 4, "title": "d", "category_path": [["Beauty", "Makeup"]]},  # a list of lists
        {"ad_id": 5, "title": "e", "category_path": ["Beauty", 3]},  # a non-string element
    ]
    res = _ingest(tmp_path, "ads.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    assert _paths(res) == {1: "Beauty > Makeup > Nails", 2: "Beauty > Skin Care", 3: None}
    rej = _rejected(res)
    assert rej[4]["field"] == "category_path" and "list of lists" in rej[4]["reason"]
    assert "flat list of level names" in rej[4]["reason"]
    assert rej[5]["field"] == "category_path" and "list element 1 (3) is not a string" in rej[5]["reason"]
    assert json.loads(rej[4]["raw"])["category_path"] == '[["Beauty", "Makeup"]]'  # the source value, as read
    # the ads' events are rejected with them, nothing is lost
    assert set(res.rejected_interactions["line"].to_list()) == {5, 6}
    assert res.info["ads_in"] == res.info["ads_clean"] + res.info["ads_rejected"] == 5


def test_parquet_list_column(tmp_path):
    ads = pl.DataFrame({
        "ad_id": [1, 2, 3, 4, 5],
        "title": list("abcde"),
        "category_path": [["Beauty", " Makeup "], None, ["Beauty", ""], ["Beauty", None], ["A > B", "C"]],
    })
    assert ads.schema["category_path"] == pl.List(pl.Utf8)
    res = _ingest(tmp_path, "ads.parquet", ads)
    assert _paths(res) == {1: "Beauty > Makeup", 2: None}
    rej = _rejected(res)
    assert "empty level" in rej[3]["reason"] and "null level" in rej[4]["reason"]
    assert "a level containing ' > '" in rej[5]["reason"] and "split it into two levels" in rej[5]["reason"]
    assert {r["field"] for r in rej.values()} == {"category_path"}


def test_parquet_list_of_lists_and_non_strings_are_rejected(tmp_path):
    for values, kind in (([[["A", "B"]], [["C"]]], "list of lists"), ([[1, 2], [3]], "list of Int64")):
        frame = pl.DataFrame({"ad_id": [1, 2], "title": ["a", "b"], "category_path": values})
        res = validate_ads(frame, "mem")
        assert res.clean.height == 0 and res.rejected["reason"].str.contains(kind).all()


def test_string_paths_with_a_configured_separator(tmp_path):
    csv = ("ad_id,title,category_path\n"
           "1,a,Beauty/Makeup/Nails\n"
           "2,b, Beauty / Skin Care \n"
           "3,c,\n"
           "4,d,Beauty//Nails\n"
           "5,e,Beauty/Makeup/\n")
    res = _ingest(tmp_path, "ads.csv", csv, category_sep="/")
    assert _paths(res) == {1: "Beauty > Makeup > Nails", 2: "Beauty > Skin Care", 3: None}
    rej = _rejected(res)
    assert sorted(rej) == [5, 6]  # CSV lines of ads 4 and 5
    for r in rej.values():
        assert r["field"] == "category_path" and "empty level" in r["reason"]
        assert "levels are read as joined by '/'" in r["reason"] and "category_sep" in r["reason"]


def test_default_separator_rejects_empty_levels_and_other_separators(tmp_path):
    csv = ("ad_id,title,category_path\n"
           "1,a,Beauty > Makeup\n"
           "2,b,A >  > C\n"
           "3,c,A > > C\n"
           "4,d,A>B>C\n"
           "5,e,A > B > \n")
    res = _ingest(tmp_path, "ads.csv", csv)
    assert _paths(res) == {1: "Beauty > Makeup"}
    rej = _rejected(res)
    assert "'A >  > C' has an empty level" in rej[3]["reason"]
    assert "a doubled separator" in rej[4]["reason"] and "set category_sep" in rej[5]["reason"]
    assert "empty level" in rej[6]["reason"]
    # the same file read with separator ">" is fine for ad 4
    res = _ingest(tmp_path, "ads.csv", csv, category_sep=">")
    assert _paths(res)[4] == "A > B > C"


def test_category_sep_must_not_be_empty():
    with pytest.raises(ValueError, match="category_sep"):
        IngestionConfig(category_sep="")


def test_normalising_keeps_generator_paths_and_maps_blanks_to_null():
    paths, errors = normalise_category_path(pl.Series(["V > C > S", "", "  ", None, "[Sale] > Shoes", '["X", "Y"]']))
    assert paths.to_list() == ["V > C > S", None, None, None, "[Sale] > Shoes", "X > Y"]
    assert errors.null_count() == 6


def test_fast_path_for_joined_paths_agrees_with_the_full_check():
    """Paths already joined by " > " skip the split; random strings give the same result either way."""
    from unisid_pipeline.data import category_path as cp

    rng = random.Random(0)
    alphabet = ["A", "b", " ", ">", "[", "]", "\u00a0", " > ", "\t"]
    values = pl.Series(sorted({"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8))) for _ in range(20_000)}))
    fast_path, fast_err = cp.normalise_category_path(values)
    slow_path, slow_err = cp._joined(cp._string_levels(pl.DataFrame({"__v": values}), values, " > "))
    assert fast_path.to_list() == slow_path.to_list()
    assert fast_err.is_null().to_list() == slow_err.is_null().to_list()
