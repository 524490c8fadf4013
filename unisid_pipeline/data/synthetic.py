"""The embedded default data: a seeded synthetic "ad world".

A 3-level taxonomy (vertical > category > sub-category), advertisers (each in one vertical, one
brand), ads with title, description and structured attributes, an optional dense image-feature
vector correlated with the ad's category path, and users whose click sequences follow latent
interests: the next click stays in the same sub-category, moves to a sibling sub-category of the
same category, jumps to another of the user's interests, or (rarely) goes anywhere. Semantic SIDs
therefore help next-ad prediction, and the category path is ground truth for SID quality.

Everything is vectorised (NumPy + polars), so 1M ads generate in seconds.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import polars as pl

from unisid_pipeline.data import taxonomy as tx
from unisid_pipeline.data.schema import AD_COLUMNS, INTERACTION_COLUMNS


@dataclass(frozen=True)
class SyntheticWorldConfig:
    """Sizes and dynamics of the synthetic ad world. Defaults make the full demo run in minutes on 2 cores."""

    n_ads: int = 800
    n_users: int = 1500
    n_advertisers: int = 90
    n_verticals: int = 6
    categories_per_vertical: int = 4
    subcategories_per_category: int = 3
    image_dim: int = 16  # 0 = ads carry no image features
    image_noise: float = 0.6
    min_seq_len: int = 5
    max_seq_len: int = 30
    mean_extra_len: float = 5.0  # sequence length = min_seq_len + Geometric(mean_extra_len), capped
    p_same_leaf: float = 0.40
    p_sibling_leaf: float = 0.25
    p_interest: float = 0.25  # the rest (1 - sum) is a jump anywhere
    n_interests: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        positive = ("n_ads", "n_users", "n_advertisers", "n_verticals", "categories_per_vertical",
                    "subcategories_per_category", "min_seq_len", "max_seq_len", "n_interests")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"SyntheticWorldConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.min_seq_len < 3:
            raise ValueError("SyntheticWorldConfig.min_seq_len must be >= 3 (leave-one-out needs train, valid and test items)")
        if self.max_seq_len < self.min_seq_len:
            raise ValueError(
                f"SyntheticWorldConfig.max_seq_len ({self.max_seq_len}) must be >= min_seq_len ({self.min_seq_len})"
            )
        if self.image_dim < 0:
            raise ValueError(f"SyntheticWorldConfig.image_dim must be >= 0, got {self.image_dim}")
        probs = (self.p_same_leaf, self.p_sibling_leaf, self.p_interest)
        if any(p < 0 for p in probs) or sum(probs) > 1.0 + 1e-9:
            raise ValueError(
                "SyntheticWorldConfig: p_same_leaf, p_sibling_leaf and p_interest must be >= 0 and sum to <= 1, "
                f"got {probs}"
            )
        if self.seed < 0:
            raise ValueError(f"SyntheticWorldConfig.seed must be >= 0, got {self.seed}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class AdWorld:
    ads: pl.DataFrame  # raw_ads schema
    interactions: pl.DataFrame  # ad_interactions schema
    taxonomy: tx.Taxonomy
    ad_leaf: np.ndarray  # (n_ads,) leaf index of each ad, row-aligned with `ads`


def _brand_names(rng: np.random.Generator, n: int) -> list[str]:
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n:
        k = int(rng.integers(2, 4))
        name = "".join(rng.choice(tx.BRAND_SYLLABLES, size=k)).capitalize()
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def _take(values: list[str] | tuple[str, ...], idx: np.ndarray) -> pl.Series:
    return pl.Series(values=list(values), dtype=pl.Utf8).gather(idx)


def generate_world(config: SyntheticWorldConfig = SyntheticWorldConfig()) -> AdWorld:
    """Generate the ad world for `config` (same config -> identical tables)."""
    rng = np.random.default_rng(config.seed)
    tax = tx.build_taxonomy(config.n_verticals, config.categories_per_vertical, config.subcategories_per_category)
    n_leaves = len(tax.leaves)
    leaf_vertical = np.asarray(tax.leaf_vertical)
    leaf_category = np.asarray(tax.leaf_category)

    # Leaf popularity: a mild power law over a random order of leaves.
    leaf_w = 1.0 / np.sqrt(1.0 + rng.permutation(n_leaves))
    leaf_p = leaf_w / leaf_w.sum()

    # Advertisers: each belongs to one vertical and sells under one brand.
    n_adv = config.n_advertisers
    adv_vertical = np.concatenate([np.arange(config.n_verticals), rng.integers(0, config.n_verticals, max(0, n_adv - config.n_verticals))])[:n_adv]
    brands = _brand_names(rng, n_adv)
    suffixes = np.array(["Inc.", "Co.", "Labs", "Group", "Studio", "Brands"])
    adv_names = [f"{b} {suffixes[i % len(suffixes)]}" for i, b in enumerate(brands)]

    # Ads: leaf by popularity, advertiser from the leaf's vertical (fallback: any advertiser).
    n = config.n_ads
    ad_leaf = rng.choice(n_leaves, size=n, p=leaf_p)
    ad_vert = leaf_vertical[ad_leaf]
    adv_by_vert = [np.flatnonzero(adv_vertical == v) for v in range(config.n_verticals)]
    counts = np.array([len(a) for a in adv_by_vert])
    pick = np.floor(rng.random(n) * np.maximum(counts[ad_vert], 1)).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    flat_adv = np.concatenate([a for a in adv_by_vert]) if n_adv else np.zeros(0, dtype=np.int64)
    ad_adv = np.where(counts[ad_vert] > 0, flat_adv[np.minimum(offsets[ad_vert] + pick, len(flat_adv) - 1)], rng.integers(0, n_adv, n))

    adj = rng.integers(0, len(tx.ADJECTIVES), n)
    promo = rng.integers(0, len(tx.PROMOS), n)
    aud = rng.integers(0, len(tx.AUDIENCES), n)
    landing = rng.integers(0, len(tx.LANDING_TYPES), n)
    with_audience = rng.random(n) < 0.5

    sub_names = [leaf[2] for leaf in tax.leaves]
    cat_names = [leaf[1] for leaf in tax.leaves]
    paths = [tax.path(i) for i in range(n_leaves)]
    s_brand = _take(brands, ad_adv)
    s_adj = _take(tx.ADJECTIVES, adj)
    s_sub = _take(sub_names, ad_leaf)
    s_cat = _take(cat_names, ad_leaf)
    s_aud = _take(tx.AUDIENCES, aud)
    s_promo = _take(tx.PROMOS, promo)
    frame = pl.DataFrame({"brand": s_brand, "adj": s_adj, "sub": s_sub, "cat": s_cat, "aud": s_aud, "promo": s_promo,
                          "with_aud": with_audience})
    text = frame.select(
        title=pl.concat_str([pl.col("brand"), pl.col("adj"), pl.col("sub")], separator=" ")
        + pl.when(pl.col("with_aud")).then(pl.lit(" for ") + pl.col("aud")).otherwise(pl.lit("")),
        description=pl.concat_str(
            [pl.col("promo"), pl.lit(". Shop the "), pl.col("adj").str.to_lowercase(), pl.lit(" "),
             pl.col("sub").str.to_lowercase(), pl.lit(" from "), pl.col("brand"), pl.lit(", loved by "),
             pl.col("aud"), pl.lit(" who want the best in "), pl.col("cat").str.to_lowercase(), pl.lit(".")]
        ),
    )

    # Price: per-leaf base price, per-ad jitter.
    leaf_base = np.exp(rng.normal(3.5, 1.0, n_leaves))
    price = np.round(leaf_base[ad_leaf] * np.exp(rng.normal(0.0, 0.3, n)), 2)

    columns = {
        "ad_id": np.arange(1, n + 1, dtype=np.int64),
        "title": text["title"],
        "description": text["description"],
        "advertiser": _take(adv_names, ad_adv),
        "industry": _take(list(tax.verticals), ad_vert),
        "category_path": _take(paths, ad_leaf),
        "brand": s_brand,
        "price": price,
        "landing_type": _take(tx.LANDING_TYPES, landing),
    }
    if config.image_dim > 0:
        d = config.image_dim
        v_center = rng.normal(0.0, 3.0, (config.n_verticals, d))
        c_off = rng.normal(0.0, 1.5, (len(tax.categories), d))
        l_off = rng.normal(0.0, 1.0, (n_leaves, d))
        leaf_center = v_center[leaf_vertical] + c_off[leaf_category] + l_off
        img = (leaf_center[ad_leaf] + rng.normal(0.0, config.image_noise, (n, d))).astype(np.float32)
        columns["image_features"] = pl.Series(img).cast(pl.List(pl.Float32))
    else:
        columns["image_features"] = pl.Series([None] * n, dtype=pl.List(pl.Float32))
    ads = pl.DataFrame(columns).cast(AD_COLUMNS)

    interactions = _generate_interactions(config, rng, tax, ad_leaf, leaf_p)
    return AdWorld(ads=ads, interactions=interactions, taxonomy=tax, ad_leaf=ad_leaf)


def _generate_interactions(
    config: SyntheticWorldConfig,
    rng: np.random.Generator,
    tax: tx.Taxonomy,
    ad_leaf: np.ndarray,
    leaf_p: np.ndarray,
) -> pl.DataFrame:
    n_leaves = len(tax.leaves)
    s_per_cat = config.subcategories_per_category
    leaf_category = np.asarray(tax.leaf_category)
    ads_per_leaf = np.bincount(ad_leaf, minlength=n_leaves)
    has_ads = ads_per_leaf > 0

    # Within-leaf ad popularity (lognormal), as one sorted array with per-leaf cumulative keys
    # leaf + cumulative share in (0, 1], so a vectorised searchsorted samples an ad of a given leaf.
    order = np.argsort(ad_leaf, kind="stable")
    pop = np.exp(rng.normal(0.0, 1.0, len(ad_leaf)))[order]
    leaf_sorted = ad_leaf[order]
    leaf_tot = np.bincount(leaf_sorted, weights=pop, minlength=n_leaves)
    cum = np.cumsum(pop)
    start_cum = np.concatenate([[0.0], np.cumsum(leaf_tot)])[leaf_sorted]
    keys = leaf_sorted + (cum - start_cum) / leaf_tot[leaf_sorted]

    def sample_ad(leaf: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(keys, leaf + rng.random(len(leaf)) * (1 - 1e-12), side="left")
        return order[np.minimum(pos, len(order) - 1)]

    live_p = np.where(has_ads, leaf_p, 0.0)
    live_p = live_p / live_p.sum()

    u = config.n_users
    interests = rng.choice(n_leaves, size=(u, config.n_interests), p=live_p)
    # Make interests coherent: later interests are often siblings of the first.
    sib = leaf_category[interests[:, :1]] * s_per_cat + rng.integers(0, s_per_cat, (u, config.n_interests))
    use_sib = rng.random((u, config.n_interests)) < 0.5
    use_sib[:, 0] = False
    interests = np.where(use_sib & has_ads[sib], sib, interests)

    extra = rng.geometric(1.0 / (1.0 + config.mean_extra_len), u) - 1
    lengths = np.minimum(config.min_seq_len + extra, config.max_seq_len)
    t_max = int(lengths.max())

    items = np.zeros((u, t_max), dtype=np.int64)
    leaf = interests[np.arange(u), rng.integers(0, config.n_interests, u)]
    items[:, 0] = sample_ad(leaf)
    p1 = config.p_same_leaf
    p2 = p1 + config.p_sibling_leaf
    p3 = p2 + config.p_interest
    for t in range(1, t_max):
        r = rng.random(u)
        sibling = leaf_category[leaf] * s_per_cat + rng.integers(0, s_per_cat, u)
        interest = interests[np.arange(u), rng.integers(0, config.n_interests, u)]
        anywhere = rng.choice(n_leaves, size=u, p=live_p)
        nxt = np.where(r < p1, leaf, np.where(r < p2, sibling, np.where(r < p3, interest, anywhere)))
        nxt = np.where(has_ads[nxt], nxt, leaf)
        ad = sample_ad(nxt)
        again = ad == items[:, t - 1]  # one resample against immediate repeats
        if again.any():
            ad[again] = sample_ad(nxt[again])
        items[:, t] = ad
        leaf = nxt

    valid = np.arange(t_max)[None, :] < lengths[:, None]
    user_idx, step = np.nonzero(valid)
    gaps = rng.exponential(3600.0, (u, t_max)).astype(np.int64) + 1
    start = 1_700_000_000 + rng.integers(0, 30 * 86400, u)
    ts = start[:, None] + np.cumsum(gaps, axis=1)
    return pl.DataFrame(
        {
            "user_id": (user_idx + 1).astype(np.int64),
            "ad_id": items[user_idx, step] + 1,
            "timestamp": ts[user_idx, step],
        }
    ).cast(INTERACTION_COLUMNS)
