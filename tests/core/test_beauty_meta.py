"""Amazon Beauty item_meta.jsonl: category path (root dropped) and brand (HTML unescaped, "Unknown" -> null)."""
import json

import polars as pl
import pytest

from unisid_pipeline.data.beauty import load_beauty
from unisid_pipeline.data.ingest import IngestionConfig, ingest
from unisid_pipeline.data.readers import InputFileError
from unisid_pipeline.hierarchy import labels_from_category_path

ASINS = {1: "A001", 2: "A002", 3: "A003", 4: "A004"}
META = [
    {"item_id": 1, "asin": "A001", "title": "t", "brand": "L&#39;Oreal Paris",
     "categories": [["Beauty", "Makeup", "Nails", "Nail Polish"]], "price": None, "description": None},
    {"item_id": 2, "asin": "A002", "title": "t", "brand": "Unknown",
     "categories": [["Clothing, Shoes & Jewelry", "Women"], ["Beauty", "Bath & Body", "Bath"]]},
    {"item_id": 3, "asin": "A003", "title": "t", "brand": "",
     "categories": [["Health & Personal Care", "Shaving"]]},
    {"item_id": 4, "asin": "A004", "title": "t", "brand": "Kirk&amp;#39;s Soap", "categories": [["Beauty"]]},
]


def _folder(tmp_path, meta_lines: list[str] | None):
    d = tmp_path / "beauty"
    d.mkdir()
    (d / "sequential_data.txt").write_text("1 1 2 3 4\r\n2 4 3 2 1\r\n")
    (d / "datamaps.json").write_text(json.dumps({"id2item": {str(k): v for k, v in ASINS.items()}}))
    (d / "item_id_to_int.json").write_text(json.dumps({v: k - 1 for k, v in ASINS.items()}))
    (d / "products_lookup.csv").write_text(",global_product_id,name\n" + "".join(
        f"{k - 1},{k - 1},Product {k} &amp; more\n" for k in ASINS))
    if meta_lines is not None:
        (d / "item_meta.jsonl").write_text("\n".join(meta_lines) + "\n")
    return d


def test_item_meta_gives_path_without_root_and_clean_brand(tmp_path):
    data = load_beauty(_folder(tmp_path, [json.dumps(m) for m in META]))
    ads = {r["ad_id"]: r for r in data.ads.to_dicts()}
    assert ads[1]["category_path"] == "Makeup > Nails > Nail Polish"  # root "Beauty" dropped
    assert ads[1]["brand"] == "L'Oreal Paris"  # HTML entity unescaped
    assert ads[2]["category_path"] == "Bath & Body > Bath"  # the first list whose root is Beauty
    assert ads[2]["brand"] is None  # the literal "Unknown"
    assert ads[3]["category_path"] == "Health & Personal Care > Shaving" and ads[3]["brand"] is None  # no Beauty list
    assert ads[4]["category_path"] is None and ads[4]["brand"] == "Kirk's Soap"  # only the root; escaped twice
    assert ads[1]["title"] == "Product 1 &amp; more"  # titles still come from products_lookup.csv, untouched
    info = data.info
    assert (info["n_category_path"], info["n_brand"], info["n_brand_unknown_as_null"]) == (3, 2, 1)
    assert info["n_items_without_meta"] == 0 and info["n_multiple_category_lists"] == 1
    assert info["category_path"].startswith("item_meta.jsonl")


def test_without_item_meta_titles_only_and_info_says_so(tmp_path):
    data = load_beauty(_folder(tmp_path, None))
    assert data.ads.columns == ["_line", "ad_id", "title"]
    assert data.info["category_path"].startswith("absent") and "item_meta.jsonl" in data.info["category_path"]


def test_items_missing_from_item_meta_are_counted(tmp_path):
    data = load_beauty(_folder(tmp_path, [json.dumps(m) for m in META[:2]]))
    assert data.info["n_items_without_meta"] == 2 and data.info["items_without_meta_ad_ids"] == [3, 4]
    assert data.ads.filter(pl.col("ad_id") >= 3)["category_path"].null_count() == 2


@pytest.mark.parametrize("line,match", [
    ("{not json", r"item_meta.jsonl, line 2: invalid JSON"),
    (json.dumps([1, 2]), "line 2: expected a JSON object"),
    (json.dumps({"item_id": "2", "categories": [["Beauty"]]}), "line 2: field 'item_id'.*not an integer"),
    (json.dumps({"item_id": 2, "categories": ["Beauty", "Makeup"]}), "line 2: field 'categories'.*not a list.*Fix"),
    (json.dumps({"item_id": 2, "categories": [["Beauty", 7]]}), "line 2: field 'categories' has a non-string level"),
    (json.dumps({"item_id": 2, "categories": [["Beauty", " "]]}), "line 2: field 'categories' has an empty level"),
    (json.dumps({"item_id": 2, "brand": 5, "categories": [["Beauty"]]}), "line 2: field 'brand'"),
    (json.dumps({"item_id": 1, "categories": [["Beauty"]]}), "line 2: field 'item_id' 1 repeats line 1"),
    (json.dumps({"item_id": 99, "categories": [["Beauty"]]}), "line 2: item_id 99 is not in datamaps.json"),
    (json.dumps({"item_id": 2, "asin": "A003", "categories": [["Beauty"]]}), "line 2: item_id 2 has asin A003 here"),
])
def test_malformed_item_meta_line_names_file_line_field_and_fix(tmp_path, line, match):
    folder = _folder(tmp_path, [json.dumps(META[0]), line])
    with pytest.raises(InputFileError, match=match) as err:
        load_beauty(folder)
    assert err.value.line == 2 and err.value.fix and err.value.path.endswith("item_meta.jsonl")


def test_real_beauty_category_levels_and_brand_coverage(beauty_dir):
    if not (beauty_dir / "item_meta.jsonl").exists():
        pytest.skip(f"item_meta.jsonl not found in {beauty_dir}")
    res = ingest(IngestionConfig(source="amazon_beauty", beauty_dir=str(beauty_dir)))
    assert res.raw_ads.height == 12_101 and res.rejected_ads.height == 0
    labels = labels_from_category_path(res.raw_ads)
    assert [labels[c].n_unique() for c in ("level_1", "level_2", "level_3")] == [6, 46, 193]
    assert labels.null_count().row(0) == (0, 0, 0, 0)
    assert not res.raw_ads["category_path"].str.starts_with("Beauty").any()
    # 10,003 non-empty brands in the source, 20 of them the literal "Unknown" -> 9,983 brands.
    assert res.info["n_category_path"] == 12_101 and res.info["n_brand"] == 9_983
    assert res.info["n_brand_unknown_as_null"] == 20
    ads = {r["ad_id"]: r for r in res.raw_ads.filter(pl.col("ad_id").is_in([1, 5])).to_dicts()}
    assert ads[1]["category_path"] == "Makeup > Nails > Nail Polish" and ads[1]["brand"] == "OPI"
    assert ads[5]["brand"] == "Dr. Scholl's"
    assert not res.raw_ads["brand"].drop_nulls().str.contains("&#|&amp;").any()
    assert res.raw_ads.filter(pl.col("ad_id") == 1)["title"][0] == "OPI Nail Lacquer, Simmer and Shimmer, 0.5-Fluid Ounce"
