"""The ad-enhanced input sequence of UniSID (DESIGN §2): text pieces, tokenisation, views, batching.

Layout of one ad (right-padded):

    [CLS|BOS]? instruction [IMG]*n_img title. description attr_1; attr_2; ... [SEP]? [SID_1..SID_L] [EMB] [PAD]...

The image, SID and embedding positions hold a placeholder id (the pad id); the model replaces
their input embeddings (projected image features, learnable SID/embedding vectors). Only the
text part (title/description, then attributes) is ever truncated, so the L SID tokens and the
embedding token are always present and always last before the padding (for a causal decoder
backbone they therefore see the whole ad).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import polars as pl
import torch

# ---------------------------------------------------------------- text pieces


def price_bucket(price: float | None) -> int | None:
    """Log-scale price bucket: floor(2*log10(1+price)), i.e. two buckets per decade (ours).

    bucket 0: [0, 2.2), 1: [2.2, 9), 2: [9, 30.6), 3: [30.6, 99), 4: [99, 315), ...
    None for a missing, NaN or negative price.
    """
    if price is None:
        return None
    p = float(price)
    if math.isnan(p) or p < 0 or math.isinf(p):
        return None
    return int(math.floor(2.0 * math.log10(1.0 + p)))


def _s(row: dict[str, Any], key: str) -> str:
    v = row.get(key)
    return "" if v is None else str(v).strip()


def attribute_segments(row: dict[str, Any], use_category: bool = True) -> list[str]:
    """The ad's attributes as "key: value" strings (missing values skipped), in a fixed order.

    Order: industry, category (only if use_category), brand, advertiser, price bucket, landing.
    """
    segs: list[str] = []
    if _s(row, "industry"):
        segs.append(f"industry: {_s(row, 'industry')}")
    if use_category and _s(row, "category_path"):
        segs.append(f"category: {_s(row, 'category_path')}")
    if _s(row, "brand"):
        segs.append(f"brand: {_s(row, 'brand')}")
    if _s(row, "advertiser"):
        segs.append(f"advertiser: {_s(row, 'advertiser')}")
    b = price_bucket(row.get("price"))
    if b is not None:
        segs.append(f"price: bucket {b}")
    if _s(row, "landing_type"):
        segs.append(f"landing: {_s(row, 'landing_type')}")
    return segs


def text_part(row: dict[str, Any]) -> str:
    """Title, then description ("" when absent)."""
    title, desc = _s(row, "title"), _s(row, "description")
    return f"{title}. {desc}".strip() if desc else title


def attribute_target_text(row: dict[str, Any]) -> str:
    """Raw-attribute reconstruction target (ablation "+ attribute reconstruction").

    Title plus every attribute including the category path, whatever use_category_in_input is:
    it is a training target, not an input.
    """
    return "; ".join([f"title: {_s(row, 'title')}"] + attribute_segments(row, use_category=True))


def image_matrix(ads: pl.DataFrame, image_dim: int) -> np.ndarray | None:
    """(n, image_dim) float32 from `image_features` (null rows -> zeros); None when image_dim == 0."""
    if image_dim == 0:
        return None
    out = np.zeros((ads.height, image_dim), dtype=np.float32)
    if "image_features" not in ads.columns:
        return out
    for i, v in enumerate(ads["image_features"].to_list()):
        if v is None:
            continue
        if len(v) != image_dim:
            raise ValueError(
                f"image_features of row {i} has length {len(v)}, the model expects {image_dim}: "
                "give every ad the same feature length (or null)")
        out[i] = np.asarray(v, dtype=np.float32)
    return out


def detect_image_dim(ads: pl.DataFrame) -> int:
    """Length of the non-null `image_features` vectors (0 when the column is absent or all null)."""
    if "image_features" not in ads.columns:
        return 0
    lens = ads["image_features"].list.len().drop_nulls().unique().to_list()
    lens = [x for x in lens if x > 0]
    if not lens:
        return 0
    if len(lens) > 1:
        raise ValueError(f"image_features have different lengths {sorted(lens)}: give every ad the same length")
    return int(lens[0])


# ---------------------------------------------------------------- tiny offline tokenizer

_TINY_WORDS = (
    "represent this ad for semantic id generation industry category brand advertiser price bucket "
    "landing title web page app install lead form the a an and of with to in on new best sale free "
    "shop buy get now off up by is it your you our all more"
).split()


def build_tiny_tokenizer():
    """A small deterministic WordPiece tokenizer (words above + characters) that works offline.

    Used with the random "tiny" backbone in tests: ~170 ids, so tiny models stay tiny.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789") + list(".,;:!?'\"-_/&%$#@()[]<>=+*")
    vocab_list = specials + _TINY_WORDS + chars + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    seen: dict[str, int] = {}
    for tok in vocab_list:
        seen.setdefault(tok, len(seen))
    tk = Tokenizer(models.WordPiece(vocab=seen, unk_token="[UNK]", max_input_chars_per_word=100))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True, clean_text=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]",
    )


# ---------------------------------------------------------------- tokenised ads and batches


class Ragged:
    """Variable-length int64 id lists stored flat: ``values[offsets[i]:offsets[i + 1]]`` is list i. Rows of many lists
    are gathered and padded with numpy in a few vectorised passes, never a Python loop per list."""

    def __init__(self, values: np.ndarray, offsets: np.ndarray) -> None:
        self.values = np.ascontiguousarray(values, dtype=np.int64)
        self.offsets = np.ascontiguousarray(offsets, dtype=np.int64)

    @classmethod
    def from_lists(cls, lists: Sequence[Sequence[int]]) -> "Ragged":
        offsets = _offsets(np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists)))
        values = np.fromiter((t for x in lists for t in x), dtype=np.int64, count=int(offsets[-1]))
        return cls(values, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> list[int]:
        return self.values[self.offsets[i]:self.offsets[i + 1]].tolist()

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def take(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the lists of `rows` concatenated, their lengths)."""
        rows = np.asarray(rows, dtype=np.int64)
        starts = self.offsets[rows]
        lengths = self.offsets[rows + 1] - starts
        row, pos = _positions(lengths)
        return self.values[starts[row] + pos], lengths

    def subset(self, rows: np.ndarray) -> "Ragged":
        values, lengths = self.take(rows)
        return Ragged(values, _offsets(lengths))

    def pad(self, rows: np.ndarray, pad_id: int, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded (ids, mask) int64 tensors (len(rows), max(longest, width)) of the lists of `rows`."""
        values, lengths = self.take(rows)
        return _pad_flat(values, lengths, pad_id, width)


def _offsets(lengths: np.ndarray) -> np.ndarray:
    """(n + 1,) offsets of n consecutive rows with these lengths: row i spans [offsets[i], offsets[i + 1])."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def _positions(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, position within its row) of every element of rows with these lengths, concatenated."""
    row = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    return row, np.arange(len(row), dtype=np.int64) - _offsets(lengths)[row]


def _pad_flat(values: np.ndarray, lengths: np.ndarray, pad_id: int,
              width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    t = max(int(lengths.max()) if len(lengths) else 0, width or 0)
    mask = np.arange(t)[None, :] < lengths[:, None]
    ids = np.full((len(lengths), t), pad_id, dtype=np.int64)
    ids[mask] = values  # row-major order of the mask = the rows' values concatenated
    return torch.from_numpy(ids), torch.from_numpy(mask.astype(np.int64))


@dataclass
class EncodedAd:
    """One ad's token ids, before views and truncation (a read-only copy out of an `EncodedCatalog`)."""

    text_ids: list[int]
    attr_ids: list[list[int]]  # one list per attribute segment (each ends with ';')


@dataclass
class EncodedCatalog:
    """The token ids of a catalog of ads, before views and truncation, as flat arrays.

    text: per ad, the ids of title + description. segments: the ids of each distinct attribute segment
    ("key: value;"), each tokenised once. ad_segments: per ad, the indices of its segments in their fixed order."""

    text: Ragged
    segments: Ragged
    ad_segments: Ragged

    def __len__(self) -> int:
        return len(self.text)

    def __getitem__(self, i: int) -> EncodedAd:
        return EncodedAd(self.text[i], [self.segments[int(s)] for s in self.ad_segments[i]])

    def subset(self, rows: np.ndarray) -> "EncodedCatalog":
        return EncodedCatalog(self.text.subset(rows), self.segments, self.ad_segments.subset(rows))

    def token_lengths(self) -> np.ndarray:
        """Per ad, its text and attribute ids before truncation."""
        per_seg = np.concatenate([[0], np.cumsum(self.segments.lengths[self.ad_segments.values])])
        return self.text.lengths + per_seg[self.ad_segments.offsets[1:]] - per_seg[self.ad_segments.offsets[:-1]]


@dataclass
class AdBatch:
    """A padded batch. Shapes: input_ids/attention_mask (B, T) int64; slot_positions (B, S) int64
    with S = n_image_slots + L + 1 (image slots, then SID slots, then the embedding slot);
    image_features (B, image_dim) float32 or None."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    slot_positions: torch.Tensor
    image_features: torch.Tensor | None

    def to(self, device: torch.device | str) -> "AdBatch":
        return AdBatch(
            to_device(self.input_ids, device), to_device(self.attention_mask, device),
            to_device(self.slot_positions, device),
            None if self.image_features is None else to_device(self.image_features, device),
        )


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """`t` on `device`; a host tensor goes to a GPU through pinned memory without waiting (a plain copy from pageable
    memory waits for the GPU to finish its queued work, so the host could not prepare the next step meanwhile)."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class AdInputBuilder:
    """Turns ads into `AdBatch`es for one backbone tokenizer and one `UniSIDConfig` layout."""

    def __init__(self, tokenizer, max_length: int, instruction: str, n_image_slots: int,
                 n_levels: int, use_category: bool) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.n_image_slots = n_image_slots
        self.n_levels = n_levels
        self.use_category = use_category
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self.pad_id = int(pad)
        if tokenizer.cls_token_id is not None:
            self.prefix = [int(tokenizer.cls_token_id)]
        elif tokenizer.bos_token_id is not None:
            self.prefix = [int(tokenizer.bos_token_id)]
        else:
            self.prefix = []
        self.suffix = [int(tokenizer.sep_token_id)] if tokenizer.sep_token_id is not None else []
        self._backend = _plain_backend(tokenizer)
        self.instr_ids = self._ids(instruction)
        self.n_fixed = len(self.prefix) + len(self.instr_ids) + n_image_slots + len(self.suffix) + n_levels + 1
        self.budget = max_length - self.n_fixed
        if self.budget < 4:
            raise ValueError(
                f"max_length={max_length} leaves {self.budget} text tokens after the instruction "
                f"({len(self.instr_ids)} tokens), image, SID and embedding tokens: raise max_length "
                "or shorten the instruction")

    def _ids(self, text: str) -> list[int]:
        return self._ids_batch([text])[0] if text else []

    def _ids_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, no special tokens: what `tokenizer(texts, add_special_tokens=False)` gives,
        straight from the Rust tokenizer when there is one (the Python wrapper's per-text conversion was
        as slow as the tokenisation itself)."""
        return _token_ids(self.tokenizer, self._backend, texts)

    def encode_ads(self, ads: pl.DataFrame) -> EncodedCatalog:
        rows = ads.to_dicts()
        texts = [text_part(r) for r in rows]
        segs = [attribute_segments(r, self.use_category) for r in rows]
        # attribute values repeat across a catalog (brand, category, landing type, price bucket): each distinct
        # segment is tokenised once
        index: dict[str, int] = {}
        ad_segments = [[index.setdefault(" " + s + ";", len(index)) for s in ss] for ss in segs]
        return EncodedCatalog(Ragged.from_lists(self._ids_batch(texts)), Ragged.from_lists(self._ids_batch(list(index))),
                              Ragged.from_lists(ad_segments))

    def collate(self, catalog: EncodedCatalog, images: np.ndarray | None = None,
                rng: np.random.Generator | None = None, token_drop_prob: float = 0.0,
                shuffle_attributes: bool = False, rows: np.ndarray | None = None, pad_to: int | None = None) -> AdBatch:
        """The padded batch of the ads `rows` of `catalog` (default: all, in order); `images` are those rows' features;
        `pad_to`: at least this many columns (one static shape for a compiled step).

        Each row is laid out as in the module docstring; with `rng`, a stochastic view: each text token is dropped
        with probability token_drop_prob (texts of 2+ tokens keep at least one), and the attribute segments are
        shuffled. The budget of text + attribute tokens is max_length minus the fixed tokens: attributes keep at least
        half of it when the text is longer, the text takes what the attributes leave. Vectorised over the batch
        (a Python loop per ad made batch assembly most of a GPU training step)."""
        rows = np.arange(len(catalog), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        n = len(rows)
        text, t_len = catalog.text.take(rows)
        if rng is not None and token_drop_prob > 0 and len(text):
            t_row, _ = _positions(t_len)
            keep = (rng.random(len(text)) >= token_drop_prob) | (t_len[t_row] <= 1)
            kept = np.bincount(t_row[keep], minlength=n)
            empty = np.flatnonzero((kept == 0) & (t_len > 0))
            if len(empty):  # a text that lost every token keeps one, chosen at random
                keep[_offsets(t_len)[empty] + rng.integers(0, t_len[empty])] = True
                kept[empty] = 1
            text, t_len = text[keep], kept
        seg, s_len = catalog.ad_segments.take(rows)
        s_row, _ = _positions(s_len)
        if rng is not None and shuffle_attributes and len(seg):
            seg = seg[np.lexsort((rng.random(len(seg)), s_row))]  # a random order within each row
        attr, seg_tokens = catalog.segments.take(seg)
        a_len = np.bincount(s_row, weights=seg_tokens, minlength=n).astype(np.int64)
        b = self.budget
        a_keep = np.minimum(a_len, np.maximum(b - t_len, b // 2))
        t_keep = np.minimum(t_len, b - a_keep)

        head = self.prefix + self.instr_ids
        body = len(head) + self.n_image_slots  # where each row's text begins
        tail = body + t_keep + a_keep + len(self.suffix)  # the first SID slot
        length = tail + self.n_levels + 1
        ids = np.full((n, max(int(length.max()) if n else 0, pad_to or 0)), self.pad_id, dtype=np.int64)
        ids[:, :len(head)] = head
        for values, lens, keep_n, offset in ((text, t_len, t_keep, body), (attr, a_len, a_keep, body + t_keep)):
            r, j = _positions(lens)
            sel = j < keep_n[r]
            ids[r[sel], (offset if np.isscalar(offset) else offset[r[sel]]) + j[sel]] = values[sel]
        for k, tok in enumerate(self.suffix):
            ids[np.arange(n), tail - len(self.suffix) + k] = tok
        mask = np.arange(ids.shape[1])[None, :] < length[:, None]
        img_pos = np.broadcast_to(np.arange(len(head), body), (n, self.n_image_slots))
        slots = np.concatenate([img_pos, tail[:, None] + np.arange(self.n_levels + 1)], axis=1)
        img = None
        if self.n_image_slots:
            if images is None:
                raise ValueError("the model has image tokens: pass the ads' image feature matrix")
            img = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        return AdBatch(torch.from_numpy(ids), torch.from_numpy(mask.astype(np.int64)),
                       torch.from_numpy(np.ascontiguousarray(slots, dtype=np.int64)), img)


def _token_ids(tokenizer, backend, texts: Sequence[str]) -> list[list[int]]:
    """Ids of each text without special tokens, from `backend` (`_plain_backend(tokenizer)`) when there is one."""
    if not texts:
        return []
    if backend is not None:
        return [e.ids for e in backend.encode_batch(list(texts), add_special_tokens=False)]
    return [list(x) for x in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def _plain_backend(tokenizer):
    """A private copy of a fast tokenizer's Rust backend with truncation and padding off, or None.

    The copy keeps the caller's tokenizer untouched; the Hugging Face wrapper switches the same two settings
    off on every call without truncation, so both give the same ids."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is None:
        return None
    from tokenizers import Tokenizer

    plain = Tokenizer.from_str(backend.to_str())
    plain.no_truncation()
    plain.no_padding()
    return plain


def tokenize_targets(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Reconstruction targets: ids of each text (no special tokens) truncated to max_length-1, then EOS.

    EOS = the tokenizer's eos, else sep, else pad id.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        eos = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.pad_token_id
    if eos is None:
        raise ValueError("the reconstruction tokenizer has no eos, sep or pad token: use another rec_decoder")
    ids = _token_ids(tokenizer, _plain_backend(tokenizer), texts) if texts else []
    return [x[: max_length - 1] + [int(eos)] for x in ids]


def pad_targets(targets: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (B, T) int64, mask (B, T) int64), right-padded."""
    return Ragged.from_lists(targets).pad(np.arange(len(targets)), pad_id)


__all__ = [
    "AdBatch", "AdInputBuilder", "EncodedAd", "EncodedCatalog", "Ragged", "attribute_segments", "attribute_target_text",
    "build_tiny_tokenizer", "detect_image_dim", "image_matrix", "pad_targets", "price_bucket", "text_part",
    "to_device", "tokenize_targets",
]
