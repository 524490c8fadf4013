"""A 23k-ad catalog through the chunked (streaming) path with small chunks equals the one-shot path.

This guards the code that lets 1M-ad catalogs fit in memory (bench/bench_scale.py): summaries,
embeddings, RQ encoding and the lazy collision-resolution cost all run chunk by chunk there.
"""
import duckdb
import numpy as np
import polars as pl
import pytest

from unisid_pipeline.data.ingest import IngestionConfig, ingest
from unisid_pipeline.data.schema import ad_text
from unisid_pipeline.data.synthetic import SyntheticWorldConfig
from unisid_pipeline.embeddings import embed_texts_cached
from unisid_pipeline.hashed_encoder import HashedBowConfig, HashedBowEncoder
from unisid_pipeline.llm import SummaryCache, TemplateSummarizer, summarize_ads
from unisid_pipeline.models.rq import RQKMeansConfig, fit_rq_kmeans
from unisid_pipeline.sid import LazyRowCost, build_sid_table

N_ADS = 20_000
N_REPEATS = 3_000  # ads repeated under new ids: identical content must be summarized/encoded once


@pytest.fixture(scope="module")
def ads() -> pl.DataFrame:
    res = ingest(IngestionConfig(synthetic=SyntheticWorldConfig(n_ads=N_ADS, n_users=2_000, seed=3)))
    assert res.raw_ads.height == N_ADS and res.rejected_ads.height == 0
    repeats = res.raw_ads.head(N_REPEATS).with_columns(pl.col("ad_id") + 10_000_000)
    # interleave so repeats land in other chunks than their originals
    return pl.concat([res.raw_ads, repeats]).sample(fraction=1.0, shuffle=True, seed=0)


@pytest.fixture(scope="module")
def embeddings(ads):
    return HashedBowEncoder(HashedBowConfig(dim=64)).encode(ad_text(ads).to_list())


class Counting:
    """Wraps a summarizer or encoder; counts the rows it is asked for."""

    def __init__(self, inner, cacheable=True):
        self.inner, self.n, self.cacheable = inner, 0, cacheable
        for name in ("model_id", "backend", "prompt_version", "dim"):
            if hasattr(inner, name):
                setattr(self, name, getattr(inner, name))

    def summarize(self, rows):
        self.n += len(rows)
        return self.inner.summarize(rows)

    def encode(self, texts):
        self.n += len(texts)
        return self.inner.encode(texts)


def test_summaries_in_small_chunks_equal_one_chunk_and_the_per_row_reference(ads):
    streamed_by = Counting(TemplateSummarizer())
    cache = SummaryCache(duckdb.connect(":memory:"))
    streamed = summarize_ads(ads, streamed_by, cache, chunk_size=997)
    one_shot = summarize_ads(ads, TemplateSummarizer(), None, chunk_size=ads.height)
    assert streamed.equals(one_shot)
    assert streamed_by.n == N_ADS and len(cache) == N_ADS
    reference = [TemplateSummarizer._one(row) for row in ads.head(2000).iter_rows(named=True)]
    assert streamed["summary"].head(2000).to_list() == reference
    assert streamed["ad_id"].to_list() == ads["ad_id"].to_list()
    again = summarize_ads(ads, TemplateSummarizer(), cache, chunk_size=997)
    assert again["cached"].all() and again.drop("cached").equals(streamed.drop("cached"))


def test_embeddings_in_small_chunks_equal_the_one_shot_encoding(ads, embeddings):
    encoder = HashedBowEncoder(HashedBowConfig(dim=64))
    texts = ad_text(ads).to_list()
    ids = ads["ad_id"].to_list()
    assert np.array_equal(embed_texts_cached(ids, texts, encoder, None, chunk_size=1000), embeddings)
    # the same through the DuckDB cache, looked up in small chunks: first encoded, then all cached
    con = duckdb.connect(":memory:")
    first_by = Counting(encoder)
    first = embed_texts_cached(ids, texts, first_by, con, chunk_size=999, lookup_chunk_size=1234)
    assert first_by.n == len(set(texts)) < len(texts) and np.array_equal(first, embeddings)
    second_by = Counting(encoder)
    second = embed_texts_cached(ids, texts, second_by, con, chunk_size=999, lookup_chunk_size=1234)
    assert second_by.n == 0 and np.array_equal(second, embeddings)


def test_hashed_bow_is_not_cached_and_measures_word_overlap():
    encoder = HashedBowEncoder(HashedBowConfig(dim=256))
    con = duckdb.connect(":memory:")
    x = embed_texts_cached([1, 2, 3], ["red running shoes", "red running shoes for kids", "quarterly tax software"],
                           encoder, con)
    assert con.execute("SELECT count(*) FROM information_schema.tables").fetchone()[0] == 0  # cache untouched
    assert encoder.model_id.startswith("hashed-bow-v1")
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-6)
    assert x[0] @ x[1] > 0.5 > abs(x[0] @ x[2])


def test_chunked_rq_encoding_and_lazy_cost_equal_the_whole_catalog_path(ads, embeddings):
    x, ids = embeddings, ads["ad_id"].to_numpy()
    cfg = RQKMeansConfig(n_levels=3, codebook_size=256, n_iter=5, batch_size=1000, fit_sample_size=5000)
    tok, _ = fit_rq_kmeans(cfg, x, seed=0, device="cpu")
    whole = tok.encode(x, chunk_rows=len(x))
    assert np.array_equal(tok.encode(x, chunk_rows=2500), whole)  # 2500 rounds up to 3000 = 3 batches
    dense = tok.last_level_distances(x, chunk_rows=len(x))
    assert np.array_equal(tok.last_level_distances(x, codes=whole, chunk_rows=1000), dense)
    assert np.array_equal(dense.argmin(axis=1), whole[:, -1])

    asked: list[int] = []

    def rows_cost(rows):
        asked.append(len(rows))
        return tok.last_level_distances(x[rows], codes=whole[rows])

    lazy_table, lazy_info = build_sid_table(ids, whole, "rq_kmeans", "v", "reassign", LazyRowCost(len(ids), 256, rows_cost))
    dense_table, dense_info = build_sid_table(ids, whole, "rq_kmeans", "v", "reassign", dense)
    assert lazy_info["resolution_used"] == "reassign" and lazy_info["n_reassigned"] > 0, lazy_info["fallback_reason"]
    assert lazy_table.equals(dense_table) and lazy_info == dense_info
    assert sum(asked) == lazy_info["pre"]["n_colliding_items"] < len(ids)  # only colliding rows were costed


def test_scale_settings_are_checked_when_built():
    from unisid_pipeline.embeddings import TextEncoderConfig, build_text_encoder

    with pytest.raises(ValueError, match="fit_sample_size must be 0 or >= codebook_size"):
        RQKMeansConfig(codebook_size=256, fit_sample_size=100)
    with pytest.raises(ValueError, match="backend must be one of"):
        TextEncoderConfig(backend="minilm")
    encoder = build_text_encoder(TextEncoderConfig(backend="hashed_bow", hashed_dim=32))
    assert encoder.dim == 32 and encoder.model_id == "hashed-bow-v1:dim=32:ngram=1-2"
