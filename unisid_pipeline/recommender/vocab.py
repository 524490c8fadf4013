"""Token vocabulary of the generative recommender: one token per (SID level, code), plus specials.

Layout of token ids::

    0                      pad (also the T5 decoder start token)
    1                      eos
    offsets[l] + code      SID code ``code`` of level l, offsets[0] = 2, offsets[l+1] = offsets[l] + level_sizes[l]
    user_offset + bucket   hashed user id (only when n_user_buckets > 0), user_offset = 2 + sum(level_sizes)

Level sizes are inferred from the table (max code of the level + 1), so a SID of length L' = L + 1
(a collision-breaking last level) works the same way as a plain L-level SID.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import polars as pl

PAD_ID = 0
EOS_ID = 1
N_SPECIAL = 2

_HASH_MULT = np.uint64(0x9E3779B97F4A7C15)  # golden-ratio multiplier (Fibonacci hashing), fixed forever


def hash_user_ids(user_ids: np.ndarray | Sequence[int], n_buckets: int) -> np.ndarray:
    """Deterministic hash of int64 user ids into [0, n_buckets) (same on every machine and run). (n,) int64."""
    if n_buckets < 1:
        raise ValueError(f"n_buckets must be >= 1, got {n_buckets}")
    u = np.asarray(user_ids, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        h = u * _HASH_MULT
        h ^= h >> np.uint64(29)
    return (h % np.uint64(n_buckets)).astype(np.int64)


def sid_arrays(sids: pl.DataFrame | tuple[Any, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Accept a SID table (``ad_id``, ``codes`` columns) or an ``(ad_ids, codes)`` pair; return
    ``ad_ids`` (n,) int64 and ``codes`` (n, L') int64."""
    if isinstance(sids, pl.DataFrame):
        missing = {"ad_id", "codes"} - set(sids.columns)
        if missing:
            raise ValueError(f"SID table lacks column(s) {sorted(missing)}; expected 'ad_id' and 'codes'")
        lengths = sids["codes"].list.len().unique().to_list()
        if len(lengths) != 1:
            raise ValueError(f"every row of a SID table must have the same number of codes, got lengths {lengths}")
        ad_ids = sids["ad_id"].to_numpy().astype(np.int64)
        codes = np.asarray(sids["codes"].to_list(), dtype=np.int64).reshape(len(sids), lengths[0])
        return ad_ids, codes
    if isinstance(sids, tuple) and len(sids) == 2:
        return np.asarray(sids[0], dtype=np.int64), np.asarray(sids[1], dtype=np.int64)
    raise ValueError("sids must be a polars SID table with 'ad_id' and 'codes' or an (ad_ids, codes) tuple")


class SIDVocab:
    """Maps items (ad_ids) to SID token tuples and back. Collision-free tables only.

    Args:
        ad_ids: (n_items,) int64, distinct.
        codes: (n_items, L') int64, codes[i] is the SID of ad_ids[i]; values >= 0; no two rows equal.
        n_user_buckets: number of hashed user tokens appended to the vocabulary (0 = none).
    """

    def __init__(self, ad_ids: np.ndarray, codes: np.ndarray, n_user_buckets: int = 0) -> None:
        ad_ids = np.asarray(ad_ids, dtype=np.int64)
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[1] < 1:
            raise ValueError(f"codes must have shape (n_items, L') with L' >= 1, got {codes.shape}")
        if ad_ids.ndim != 1 or ad_ids.shape[0] != codes.shape[0]:
            raise ValueError(f"ad_ids must have shape ({codes.shape[0]},) to match codes, got {ad_ids.shape}")
        if codes.shape[0] == 0:
            raise ValueError("the SID table is empty: need at least one item")
        if codes.min() < 0:
            raise ValueError("codes must be >= 0")
        if np.unique(ad_ids).size != ad_ids.size:
            raise ValueError("ad_ids must be distinct (one SID per item)")
        uniq, counts = np.unique(codes, axis=0, return_counts=True)
        if uniq.shape[0] != codes.shape[0]:
            n_coll = int((counts > 1).sum())
            raise ValueError(
                f"SID table has collisions: {n_coll} SID(s) are shared by several items; the recommender needs "
                "exactly one item per SID — resolve collisions first (e.g. an extra disambiguating level)"
            )
        if n_user_buckets < 0:
            raise ValueError(f"n_user_buckets must be >= 0, got {n_user_buckets}")
        self.ad_ids = ad_ids
        self.codes = codes
        self.n_user_buckets = int(n_user_buckets)
        self.level_sizes: tuple[int, ...] = tuple(int(m) + 1 for m in codes.max(axis=0))
        self.n_levels = codes.shape[1]
        self.offsets: tuple[int, ...] = tuple(
            int(N_SPECIAL + s) for s in np.concatenate([[0], np.cumsum(self.level_sizes)[:-1]])
        )
        self.user_offset = N_SPECIAL + int(sum(self.level_sizes))
        self.vocab_size = self.user_offset + self.n_user_buckets
        self.pad_id = PAD_ID
        self.eos_id = EOS_ID
        # (n_items, L') token ids of every item
        self.item_tokens: np.ndarray = codes + np.asarray(self.offsets, dtype=np.int64)[None, :]
        self._index = {int(a): i for i, a in enumerate(ad_ids.tolist())}
        self._by_tokens = {tuple(row): i for i, row in enumerate(self.item_tokens.tolist())}

    # ---- construction / persistence -------------------------------------------------------------
    @classmethod
    def from_sids(cls, sids: pl.DataFrame | tuple[Any, Any], n_user_buckets: int = 0) -> SIDVocab:
        ad_ids, codes = sid_arrays(sids)
        return cls(ad_ids, codes, n_user_buckets)

    def to_dict(self) -> dict[str, Any]:
        return {"ad_ids": self.ad_ids.tolist(), "codes": self.codes.tolist(), "n_user_buckets": self.n_user_buckets}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SIDVocab:
        codes = np.asarray(d["codes"], dtype=np.int64).reshape(len(d["ad_ids"]), -1)
        return cls(np.asarray(d["ad_ids"], dtype=np.int64), codes, int(d["n_user_buckets"]))

    @property
    def n_items(self) -> int:
        return int(self.ad_ids.shape[0])

    # ---- items ------------------------------------------------------------------------------------
    def item_index(self, ad_ids: Iterable[int]) -> np.ndarray:
        """Row index of each ad_id in the table; raises on an ad_id without a SID. (n,) int64."""
        out = []
        missing = []
        for a in ad_ids:
            i = self._index.get(int(a))
            if i is None:
                missing.append(int(a))
            out.append(-1 if i is None else i)
        if missing:
            raise KeyError(
                f"{len(missing)} ad_id(s) have no SID in the table (first: {missing[:5]}); "
                "build the SID table over every item that appears in the sequences"
            )
        return np.asarray(out, dtype=np.int64)

    def knows(self, ad_id: int) -> bool:
        """Whether the table has a SID for this ad_id."""
        return int(ad_id) in self._index

    def encode_item(self, ad_id: int) -> tuple[int, ...]:
        """The L' token ids of one item."""
        return tuple(int(t) for t in self.item_tokens[self.item_index([ad_id])[0]])

    def encode_history(self, ad_ids: Sequence[int]) -> list[int]:
        """Flat token sequence of a history: item tokens concatenated in order (len = len(ad_ids) * L')."""
        if len(ad_ids) == 0:
            return []
        return self.item_tokens[self.item_index(ad_ids)].reshape(-1).tolist()

    def decode(self, tokens: Sequence[int]) -> int:
        """ad_id of a generated SID token tuple (length L', optionally followed by eos / pads)."""
        toks = [int(t) for t in tokens]
        while len(toks) > self.n_levels and toks[-1] in (self.pad_id, self.eos_id):
            toks.pop()
        if len(toks) != self.n_levels:
            raise ValueError(f"a SID has {self.n_levels} tokens, got {len(toks)}: {list(tokens)}")
        i = self._by_tokens.get(tuple(toks))
        if i is None:
            raise ValueError(f"tokens {toks} are not the SID of any item in the table")
        return int(self.ad_ids[i])

    def user_token(self, user_ids: np.ndarray | Sequence[int]) -> np.ndarray:
        """Hashed user token ids (n,) int64; needs n_user_buckets > 0."""
        if self.n_user_buckets == 0:
            raise ValueError("this vocabulary has no user tokens (n_user_buckets = 0)")
        return self.user_offset + hash_user_ids(user_ids, self.n_user_buckets)
