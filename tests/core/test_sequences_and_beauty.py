import polars as pl

from unisid_pipeline.data.ingest import IngestionConfig, ingest
from unisid_pipeline.data.sequences import build_user_sequences


def test_leave_one_out_split_and_history_cap():
    inter = pl.DataFrame({
        "user_id": [1] * 25 + [2, 2, 2] + [3, 3],
        "ad_id": list(range(100, 125)) + [7, 8, 9] + [1, 2],
        "timestamp": list(range(25, 0, -1)) + [1, 2, 3] + [1, 2],  # user 1 given in reverse time order
    })
    seqs, info = build_user_sequences(inter, max_history=20)
    assert info["n_users"] == 2 and info["n_users_too_short"] == 1
    u1 = seqs.filter(pl.col("user_id") == 1).row(0, named=True)
    items = list(range(124, 99, -1))
    assert u1["items"] == items
    assert u1["test_target"] == items[-1] and u1["valid_target"] == items[-2]
    assert u1["test_history"] == items[:-1][-20:] and len(u1["test_history"]) == 20
    assert u1["valid_history"] == items[:-2][-20:]
    assert u1["train_items"] == items[:-2]
    u2 = seqs.filter(pl.col("user_id") == 2).row(0, named=True)
    assert (u2["train_items"], u2["valid_target"], u2["test_history"], u2["test_target"]) == ([7], 8, [7, 8], 9)


def test_amazon_beauty_loads_with_the_published_counts(beauty_dir):
    res = ingest(IngestionConfig(source="amazon_beauty", beauty_dir=str(beauty_dir)))
    assert res.raw_ads.height == 12_101 and res.rejected_ads.height == 0
    assert res.ad_interactions.height == 198_502 and res.rejected_interactions.height == 0
    assert res.ad_interactions["user_id"].n_unique() == 22_363
    assert res.info["n_placeholder_titles"] == 7
    assert res.raw_ads.filter(pl.col("ad_id") == 1)["title"][0] == "OPI Nail Lacquer, Simmer and Shimmer, 0.5-Fluid Ounce"
    seqs, _ = build_user_sequences(res.ad_interactions)
    first = seqs.filter(pl.col("user_id") == 1).row(0, named=True)
    assert first["items"] == [1, 2, 3, 4, 5] and first["test_target"] == 5 and first["valid_target"] == 4
