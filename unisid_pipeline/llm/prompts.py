"""The versioned ad-summary prompt and the content hash of the fields it reads.

The summary is the L_rec target of UniSID (DESIGN §2): a short, high-level description of the ad —
who it is for, its key selling points, and what it promotes / asks the viewer to do — i.e. meaning
that is not literally in the ad text. The prompt is few-shot because SmolLM2-135M copies the ad
title or drifts into chat without examples of the wanted form.

Bump `PROMPT_VERSION` whenever the prompt text, the few-shot examples, the field formatting or the
post-processing in `summarizer.py` change: it is part of the summary-cache key.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

PROMPT_VERSION = "ad-summary-v1"

# The raw_ads fields the prompt reads, in the order they are shown to the model.
PROMPT_FIELDS: tuple[str, ...] = (
    "title",
    "description",
    "brand",
    "advertiser",
    "industry",
    "category_path",
    "price",
    "landing_type",
)
FIELD_LABELS: dict[str, str] = {
    "title": "Title",
    "description": "Description",
    "brand": "Brand",
    "advertiser": "Advertiser",
    "industry": "Industry",
    "category_path": "Category",
    "price": "Price",
    "landing_type": "Landing page",
}
MAX_DESCRIPTION_CHARS = 400  # longer descriptions are cut (at a word boundary) in the prompt only

SYSTEM_PROMPT = (
    "You summarize ads for a recommender system. Write one or two short sentences that say who the "
    "ad is for, its main selling point, and what it asks people to do. Use only facts from the ad. "
    "Do not copy the title and do not invent prices, discounts or numbers."
)
INSTRUCTION = "Summarize this ad."

# (ad, summary) pairs shown to the model before the real ad. Short, audience-first, no new facts.
FEW_SHOT: tuple[tuple[dict[str, Any], str], ...] = (
    (
        {"title": "Rosewater Facial Toner Spray, 8 fl oz"},
        "For skin care shoppers who want a refreshed face: a rosewater toner spray for everyday use.",
    ),
    (
        {
            "title": "Hydrating Night Cream with Hyaluronic Acid, 50 ml",
            "description": "Wake up to softer skin. Free shipping on orders over $30.",
            "brand": "Lumiere",
            "category_path": "Beauty > Skin Care > Moisturizers",
            "price": 24.99,
            "landing_type": "web_page",
        },
        "For people with dry skin who want a simple night routine: a hydrating cream that softens "
        "skin overnight, sold online with free shipping on larger orders.",
    ),
    (
        {
            "title": "Kingdom Clash - Build your empire",
            "description": "Battle players worldwide in real-time strategy. Free to play.",
            "industry": "Gaming",
            "category_path": "Games > Strategy",
            "landing_type": "app_install",
        },
        "For mobile gamers who enjoy competitive strategy: a free-to-play empire-building game "
        "with live battles, promoted as an app install.",
    ),
    (
        {
            "title": "Compare car insurance quotes in minutes",
            "advertiser": "SafeRoad Insurance",
            "industry": "Finance",
            "landing_type": "lead_form",
        },
        "For drivers looking to save on car insurance: a quick way to compare quotes, asking "
        "visitors to fill in a form to get offers.",
    ),
)


def _norm_text(value: Any) -> str | None:
    if value is None:
        return None
    text = re.sub(r"\s+", " ", str(value)).strip()
    return text or None


def _norm_price(value: Any) -> float | None:
    if value is None:
        return None
    price = float(value)
    if math.isnan(price):
        return None
    return price


def canonical_fields(row: Mapping[str, Any]) -> dict[str, Any]:
    """The prompt fields of one ad, normalised: whitespace collapsed, "" -> None, price as float.

    Missing keys count as None, so a frame without e.g. `landing_type` hashes like one with nulls.
    """
    out: dict[str, Any] = {}
    for name in PROMPT_FIELDS:
        value = row.get(name)
        out[name] = _norm_price(value) if name == "price" else _norm_text(value)
    return out


def content_hash_of_row(row: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of `canonical_fields(row)` (sorted keys, no spaces)."""
    payload = json.dumps(canonical_fields(row), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def ad_content_hash(ads: pl.DataFrame) -> pl.Series:
    """One sha256 hex digest per ad (Utf8 Series named `content_hash`), over the fields the prompt uses.

    Two ads with the same text and attributes share a hash (and hence one cached summary);
    `ad_id` and `image_features` are not part of it.
    """
    cols = [c for c in PROMPT_FIELDS if c in ads.columns]
    rows = ads.select(cols).iter_rows(named=True)
    return pl.Series("content_hash", [content_hash_of_row(r) for r in rows], dtype=pl.Utf8)


def _format_price(price: float) -> str:
    return f"{price:.0f}" if price == int(price) else f"{price:.2f}"


def format_ad(row: Mapping[str, Any]) -> str:
    """The ad as the model sees it: one `Label: value` line per non-empty field."""
    fields = canonical_fields(row)
    lines = []
    for name in PROMPT_FIELDS:
        value = fields[name]
        if value is None:
            continue
        if name == "price":
            value = _format_price(value)
        elif name == "description" and len(value) > MAX_DESCRIPTION_CHARS:
            value = value[:MAX_DESCRIPTION_CHARS].rsplit(" ", 1)[0] + " ..."
        elif name == "landing_type":
            value = value.replace("_", " ")
        lines.append(f"{FIELD_LABELS[name]}: {value}")
    return "\n".join(lines)


def source_text(row: Mapping[str, Any]) -> str:
    """All prompt-field text of one ad, uncut (what a summary's numbers and phrases are checked against)."""
    fields = canonical_fields(row)
    parts = [format_ad(row), fields["description"] or ""]
    if fields["price"] is not None:
        parts.append(repr(fields["price"]))
    return "\n".join(parts)


def _user_turn(row: Mapping[str, Any]) -> str:
    return f"{INSTRUCTION}\n\n{format_ad(row)}"


def build_messages(row: Mapping[str, Any], few_shot: bool = True) -> list[dict[str, str]]:
    """Chat messages: system prompt, the few-shot (user, assistant) turns, then the ad."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    if few_shot:
        for example, summary in FEW_SHOT:
            messages.append({"role": "user", "content": _user_turn(example)})
            messages.append({"role": "assistant", "content": summary})
    messages.append({"role": "user", "content": _user_turn(row)})
    return messages


def build_plain_prompt(row: Mapping[str, Any], few_shot: bool = True) -> str:
    """The same prompt for models without a chat template: completion style, ends with "Summary:"."""
    parts = [SYSTEM_PROMPT, ""]
    if few_shot:
        for example, summary in FEW_SHOT:
            parts += [f"Ad:\n{format_ad(example)}", f"Summary: {summary}", ""]
    parts += [f"Ad:\n{format_ad(row)}", "Summary:"]
    return "\n".join(parts)


def render_prompt(row: Mapping[str, Any], tokenizer: Any = None, few_shot: bool = True) -> str:
    """The prompt text for one ad: the tokenizer's chat template when it has one, else plain text."""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            build_messages(row, few_shot=few_shot), tokenize=False, add_generation_prompt=True
        )
    return build_plain_prompt(row, few_shot=few_shot)


def render_prompts(rows: Sequence[Mapping[str, Any]], tokenizer: Any = None, few_shot: bool = True) -> list[str]:
    return [render_prompt(r, tokenizer, few_shot=few_shot) for r in rows]
