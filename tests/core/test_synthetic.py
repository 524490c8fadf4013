import numpy as np
import polars as pl
import pytest

from unisid_pipeline.data.schema import AD_COLUMNS, INTERACTION_COLUMNS, category_levels
from unisid_pipeline.data.synthetic import SyntheticWorldConfig, generate_world

SMALL = SyntheticWorldConfig(n_ads=300, n_users=200, n_advertisers=20, seed=3)


def test_same_seed_same_world_and_different_seed_differs():
    a, b = generate_world(SMALL), generate_world(SMALL)
    assert a.ads.equals(b.ads) and a.interactions.equals(b.interactions)
    c = generate_world(SyntheticWorldConfig(n_ads=300, n_users=200, n_advertisers=20, seed=4))
    assert not a.ads.equals(c.ads)


def test_tables_follow_the_documented_schema():
    w = generate_world(SMALL)
    assert dict(w.ads.schema) == AD_COLUMNS
    assert dict(w.interactions.schema) == INTERACTION_COLUMNS
    assert w.ads["ad_id"].is_unique().all()
    assert w.ads["title"].str.len_chars().min() > 0
    assert set(w.interactions["ad_id"].unique()) <= set(w.ads["ad_id"])
    lengths = w.interactions.group_by("user_id").len()["len"]
    assert lengths.min() >= SMALL.min_seq_len and lengths.max() <= SMALL.max_seq_len
    # timestamps strictly increase within each user
    assert w.interactions.filter(pl.col("timestamp") <= pl.col("timestamp").shift(1).over("user_id")).height == 0


def test_text_and_image_features_carry_the_category():
    w = generate_world(SMALL)
    leaf_names = [w.taxonomy.leaves[i][2] for i in w.ad_leaf]
    assert all(name in title for name, title in zip(leaf_names, w.ads["title"].to_list()))
    img = np.stack(w.ads["image_features"].to_numpy())
    lv = category_levels(w.ads["category_path"])["level_1"].to_numpy()
    # within-vertical spread is well below between-vertical spread
    centers = {v: img[lv == v].mean(0) for v in np.unique(lv)}
    within = np.mean([np.linalg.norm(img[i] - centers[lv[i]]) for i in range(len(lv))])
    between = np.mean([np.linalg.norm(a - b) for a in centers.values() for b in centers.values() if a is not b])
    assert within < between


def test_clicks_follow_the_taxonomy():
    """Consecutive clicks share the sub-category far more often than chance (the signal SIDs can use)."""
    w = generate_world(SyntheticWorldConfig(n_ads=600, n_users=500, seed=1))
    leaf = dict(zip(w.ads["ad_id"].to_list(), w.ad_leaf.tolist()))
    s = w.interactions.with_columns(pl.col("ad_id").replace_strict(leaf).alias("leaf"))
    same = s.filter(pl.col("user_id") == pl.col("user_id").shift(1)).height
    stay = s.filter((pl.col("user_id") == pl.col("user_id").shift(1)) & (pl.col("leaf") == pl.col("leaf").shift(1))).height
    assert stay / same > 0.3  # p_same_leaf=0.4 plus chance; chance alone is ~1/96


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="min_seq_len"):
        SyntheticWorldConfig(min_seq_len=2)
    with pytest.raises(ValueError, match="p_same_leaf"):
        SyntheticWorldConfig(p_same_leaf=0.9, p_sibling_leaf=0.5)
    with pytest.raises(ValueError, match="n_ads"):
        SyntheticWorldConfig(n_ads=0)


def test_large_taxonomy_gets_generated_names():
    w = generate_world(SyntheticWorldConfig(n_ads=200, n_users=50, n_verticals=14, categories_per_vertical=5))
    assert w.taxonomy.generated
    assert len(w.taxonomy.leaves) == 14 * 5 * 3
