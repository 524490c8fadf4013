import numpy as np
import polars as pl
import pytest

from unisid_pipeline.retrieval import click_pairs, retrieval_recall


def test_click_pairs_are_consecutive_distinct_training_clicks():
    seqs = pl.DataFrame({"train_items": [[1, 2, 2, 3], [5]]}, schema={"train_items": pl.List(pl.Int64)})
    assert click_pairs(seqs, 100, 0).tolist() == [[1, 2], [2, 3]]


def test_perfect_embedding_ranks_every_positive_first_and_random_is_near_chance():
    rng = np.random.default_rng(0)
    n, d = 3000, 16
    ad_ids = np.arange(100, 100 + n)
    x = rng.normal(size=(n, d)).astype(np.float32)
    # positives are near-copies of their query
    pairs = np.stack([ad_ids[:500], ad_ids[500:1000]], axis=1)
    x[500:1000] = x[:500] + 0.01 * rng.normal(size=(500, d))
    perfect = retrieval_recall(ad_ids, x, pairs, n_negatives=999, seed=1)
    assert perfect["recall@1"] == 1.0 and perfect["n_queries"] == 500
    shuffled = retrieval_recall(ad_ids, rng.normal(size=(n, d)), pairs, n_negatives=999, seed=1)
    assert shuffled["recall@20"] == pytest.approx(20 / 1000, abs=0.02)


def test_negatives_never_include_query_or_positive():
    # with 1001 ads and 999 negatives, the candidates are exactly all other ads: a duplicate of the
    # query among the negatives would tie with it and push the positive down
    n = 1001
    ad_ids = np.arange(n)
    x = np.eye(n, dtype=np.float32)
    x[1] = x[0]
    r = retrieval_recall(ad_ids, x, np.array([[0, 1]]), n_negatives=999, seed=3)
    assert r["recall@1"] == 1.0


def test_too_small_catalog_is_a_clear_error():
    with pytest.raises(ValueError, match="lower n_negatives"):
        retrieval_recall(np.arange(10), np.eye(10), np.array([[0, 1]]), n_negatives=999)
