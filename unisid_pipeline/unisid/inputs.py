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


@dataclass
class EncodedAd:
    """One ad's token ids, before views and truncation. Read-only: ads with the same attribute value share
    that segment's list."""

    text_ids: list[int]
    attr_ids: list[list[int]]  # one list per attribute segment (each ends with ';')


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
            self.input_ids.to(device), self.attention_mask.to(device), self.slot_positions.to(device),
            None if self.image_features is None else self.image_features.to(device),
        )


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
        if not texts:
            return []
        if self._backend is not None:
            return [e.ids for e in self._backend.encode_batch(texts, add_special_tokens=False)]
        return [list(x) for x in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def encode_ads(self, ads: pl.DataFrame) -> list[EncodedAd]:
        rows = ads.to_dicts()
        texts = [text_part(r) for r in rows]
        segs = [attribute_segments(r, self.use_category) for r in rows]
        text_ids = self._ids_batch(texts)
        flat = [" " + s + ";" for ss in segs for s in ss]
        # attribute values repeat across a catalog (brand, category, landing type, price bucket): each distinct
        # segment is tokenised once
        distinct = list(dict.fromkeys(flat))
        lookup = dict(zip(distinct, self._ids_batch(distinct)))
        flat_ids = [lookup[s] for s in flat]
        out, k = [], 0
        for i in range(len(rows)):
            n = len(segs[i])
            out.append(EncodedAd(text_ids[i], flat_ids[k:k + n]))  # segment lists shared between ads: read-only
            k += n
        return out

    def sequence(self, ad: EncodedAd, rng: np.random.Generator | None = None,
                 token_drop_prob: float = 0.0, shuffle_attributes: bool = False) -> tuple[list[int], list[int]]:
        """(ids, slot_positions) of one ad; with `rng`, a stochastic view (token dropout, shuffled attributes)."""
        text = ad.text_ids
        attrs = ad.attr_ids
        if rng is not None:
            if token_drop_prob > 0 and len(text) > 1:
                keep = rng.random(len(text)) >= token_drop_prob
                if not keep.any():
                    keep[rng.integers(len(text))] = True
                text = [t for t, k in zip(text, keep) if k]
            if shuffle_attributes and len(attrs) > 1:
                attrs = [attrs[j] for j in rng.permutation(len(attrs))]
        attr = [t for seg in attrs for t in seg]
        b = self.budget
        attr_keep = min(len(attr), max(b - len(text), b // 2))
        text_keep = min(len(text), b - attr_keep)
        body = text[:text_keep] + attr[:attr_keep]
        head = self.prefix + self.instr_ids
        img_pos = list(range(len(head), len(head) + self.n_image_slots))
        ids = head + [self.pad_id] * self.n_image_slots + body + self.suffix
        tail_start = len(ids)
        ids = ids + [self.pad_id] * (self.n_levels + 1)
        slots = img_pos + list(range(tail_start, tail_start + self.n_levels + 1))
        return ids, slots

    def collate(self, ads: Sequence[EncodedAd], images: np.ndarray | None = None,
                rng: np.random.Generator | None = None, token_drop_prob: float = 0.0,
                shuffle_attributes: bool = False) -> AdBatch:
        seqs = [self.sequence(a, rng, token_drop_prob, shuffle_attributes) for a in ads]
        ids, mask = _pad_rows([s[0] for s in seqs], self.pad_id)
        slots = torch.from_numpy(np.array([s[1] for s in seqs], dtype=np.int64))
        img = None
        if self.n_image_slots:
            if images is None:
                raise ValueError("the model has image tokens: pass the ads' image feature matrix")
            img = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        return AdBatch(ids, mask, slots, img)


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
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []
    return [list(x)[: max_length - 1] + [int(eos)] for x in ids]


def pad_targets(targets: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (B, T) int64, mask (B, T) int64), right-padded."""
    return _pad_rows(targets, pad_id)


def _pad_rows(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (ids, mask) int64 tensors of variable-length id lists, built in one numpy pass: per-row torch
    copies cost ~10 small ops per row, which made batch assembly most of a UniSID step on a GPU."""
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    t = int(lengths.max())
    mask = np.arange(t)[None, :] < lengths[:, None]
    ids = np.full((len(rows), t), pad_id, dtype=np.int64)
    ids[mask] = np.fromiter((x for r in rows for x in r), dtype=np.int64, count=int(lengths.sum()))
    return torch.from_numpy(ids), torch.from_numpy(mask.astype(np.int64))


__all__ = [
    "AdBatch", "AdInputBuilder", "EncodedAd", "attribute_segments", "attribute_target_text",
    "build_tiny_tokenizer", "detect_image_dim", "image_matrix", "pad_targets", "price_bucket", "text_part",
    "tokenize_targets",
]
