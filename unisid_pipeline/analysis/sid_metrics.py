"""SID collision and quality metrics: pure functions over SID tables (polars) and arrays (numpy).

Input contract (docs/CONTRIBUTING_CORE.md): a SID table has `ad_id` Int64 (unique), `codes`
List(Int64) (final SID after collision resolution) and `raw_codes` List(Int64) (tokenizer output,
L levels). Optional inputs: a labels frame (`ad_id`, `level_1`, `level_2`, `level_3` strings,
see `schema.category_levels`) and item embeddings (`np.ndarray` (n, d) with their `ad_ids`).

Every metric is invariant to the row order of its inputs: `sid_report` sorts the table by
`ad_id` before anything else, and the per-function metrics only use multisets of counts.
All work is vectorised (numpy / polars / torch matmul); nothing loops over items.

Naming in `sid_report` (flat, MLflow-ready; levels are 1-based, `l1` = first code):
- collisions, for `_pre` (raw_codes) and `_post` (codes): `collision_rate`, `n_unique`,
  `n_collision_groups`, `max_group_size`, `mean_group_size`, `p99_group_size`.
- per level l on raw_codes: `l{l}_codebook_size`, `l{l}_n_used`, `l{l}_utilization`,
  `l{l}_entropy_nats`, `l{l}_entropy_bits`, `l{l}_perplexity`, `l{l}_gini`.
- prefix-tree fan-out on raw_codes: `l{p}_fanout_mean`, `l{p}_fanout_max` for prefix length
  p = 0..L-1 (`l0` = root: the number of distinct first codes; `l1` = distinct second codes
  under each first code, ...).
- with labels: `labels_n_matched`, and per level `l{l}_labels_n`, `l{l}_homogeneity`,
  `l{l}_completeness`, `l{l}_v_measure` (prefix clusters) plus `l{l}_homogeneity_code`,
  `l{l}_completeness_code`, `l{l}_v_measure_code` (code-at-level-l clusters).
- with embeddings: `nbr_k`, `nbr_n_queries`, `nbr_n_items`, `nbr_agree_l{l}`,
  `nbr_chance_l{l}` (probability that two random distinct items share the level-l prefix).
- with sequences (user_sequences): `seq_n_pairs`, `seq_n_unmatched`, `seq_agree_l{l}` (share of
  consecutive training interactions whose two items share the level-l prefix), `seq_chance_l{l}`;
  and, when the table also has `test_history` / `test_target`, `seq_proxy_r10` (`transition_proxy_recall`).
Keys of the optional groups are absent (not NaN) when the input is not given.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl
import torch

from unisid_pipeline.seeding import resolve_device, seed_everything

logger = logging.getLogger(__name__)

CodesLike = pl.Series | np.ndarray

# Headline columns for `markdown_summary` (those present in the frame are shown, in this order).
SUMMARY_COLUMNS: tuple[str, ...] = (
    "n_items",
    "collision_rate_pre",
    "collision_rate_post",
    "max_group_size_pre",
    "l1_utilization",
    "l2_utilization",
    "l3_utilization",
    "l1_perplexity",
    "l2_perplexity",
    "l3_perplexity",
    "l1_v_measure",
    "l2_v_measure",
    "l3_v_measure",
    "nbr_agree_l1",
    "nbr_agree_l2",
    "seq_agree_l1",
    "seq_agree_l2",
)


# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------
def codes_matrix(codes: CodesLike, name: str = "codes") -> np.ndarray:
    """Turn a List(Int64) column (or an (n, L) integer array) into an int64 array of shape (n, L).

    Raises ValueError for an empty column, null rows or null codes, rows of different lengths,
    zero-length SIDs and negative codes.
    """
    if isinstance(codes, np.ndarray):
        if codes.ndim != 2:
            raise ValueError(f"{name} must be a 2-D array (n_items, n_levels), got shape {codes.shape}")
        if not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(f"{name} must hold integers, got dtype {codes.dtype}")
        arr = np.ascontiguousarray(codes, dtype=np.int64)
    elif isinstance(codes, pl.Series):
        if not isinstance(codes.dtype, (pl.List, pl.Array)):
            raise ValueError(f"{name} must be a List(Int64) column, got dtype {codes.dtype}")
        if codes.null_count():
            raise ValueError(f"{name} has {codes.null_count()} null rows: every item needs a SID")
        n = codes.len()
        if n == 0:
            raise ValueError(f"{name} is empty: the SID table has no rows")
        lens = codes.list.len()
        lmin, lmax = lens.min(), lens.max()
        if lmin != lmax:
            raise ValueError(
                f"{name} rows have different lengths ({lmin}..{lmax}): every SID of one table must "
                "have the same number of levels"
            )
        if lmin == 0:
            raise ValueError(f"{name} holds empty lists: a SID needs at least one level")
        flat = codes.explode()
        if flat.null_count():
            raise ValueError(f"{name} holds {flat.null_count()} null codes inside its lists")
        arr = np.ascontiguousarray(flat.cast(pl.Int64).to_numpy().reshape(n, int(lmin)))
    else:
        raise ValueError(f"{name} must be a polars List(Int64) Series or a 2-D numpy array, got {type(codes).__name__}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty: the SID table has no rows")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has zero levels: a SID needs at least one level")
    if arr.min() < 0:
        raise ValueError(f"{name} holds negative codes (min {arr.min()}): codes must lie in [0, K)")
    return arr


def _dense_ids(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Dense ids 0..m-1 (in sorted order of `values`) and m, the number of distinct values."""
    uniq, inv = np.unique(values, return_inverse=True)
    return inv.reshape(-1).astype(np.int64, copy=False), int(uniq.size)


def prefix_ids(arr: np.ndarray) -> list[tuple[np.ndarray, int]]:
    """For p = 0..L: (dense id of each item's prefix arr[:, :p], number of distinct prefixes).

    Element 0 is the root (all zeros, 1 prefix); element L identifies the full SID. Ids are
    assigned in lexicographic order of the prefixes, so they do not depend on row order.
    """
    n, n_levels = arr.shape
    out = [(np.zeros(n, dtype=np.int64), 1)]
    ids, m = out[0]
    for level in range(n_levels):
        col = arr[:, level]
        base = int(col.max()) + 1
        if m * base >= 2**62:  # cannot happen for realistic sizes; fall back to row-unique
            ids, m = _dense_ids_rows(np.stack([ids, col], axis=1))
        else:
            ids, m = _dense_ids(ids * base + col)
        out.append((ids, m))
    return out


def _dense_ids_rows(rows: np.ndarray) -> tuple[np.ndarray, int]:
    uniq, inv = np.unique(rows, axis=0, return_inverse=True)
    return inv.reshape(-1).astype(np.int64, copy=False), int(uniq.shape[0])


def _check_table(table: pl.DataFrame) -> pl.DataFrame:
    """Validate the SID table and return it sorted by ad_id (the canonical row order)."""
    if not isinstance(table, pl.DataFrame):
        raise ValueError(f"table must be a polars DataFrame, got {type(table).__name__}")
    missing = [c for c in ("ad_id", "codes", "raw_codes") if c not in table.columns]
    if missing:
        raise ValueError(f"SID table lacks column(s) {missing}: build it with unisid_pipeline.sid.build_sid_table")
    if table.height == 0:
        raise ValueError("SID table is empty: no items to analyse")
    ad = table["ad_id"]
    if ad.null_count():
        raise ValueError(f"SID table has {ad.null_count()} null ad_id values")
    if ad.n_unique() != table.height:
        raise ValueError(
            f"SID table has duplicate ad_id values ({table.height - ad.n_unique()} extra rows): one row per ad"
        )
    return table.select("ad_id", "codes", "raw_codes").sort("ad_id")


def _as_float(x: float) -> float:
    return float(x)


# --------------------------------------------------------------------------------------------
# 1. Collisions
# --------------------------------------------------------------------------------------------
def group_sizes(codes: CodesLike) -> np.ndarray:
    """Sizes of all SID buckets (items sharing one full SID), sorted descending; sums to n_items."""
    arr = codes_matrix(codes)
    ids, m = prefix_ids(arr)[-1]
    return np.sort(np.bincount(ids, minlength=m))[::-1]


def collision_metrics(codes: CodesLike) -> dict[str, float]:
    """Collision statistics of full SIDs.

    - `collision_rate`: share of items whose full SID is shared with at least one other item.
    - `n_unique`: number of distinct SIDs; `n_collision_groups`: SIDs held by >= 2 items.
    - `max_group_size`, `mean_group_size` (= n_items / n_unique), `p99_group_size`: over all
      SID buckets, singletons included (p99 with numpy's linear interpolation).
    """
    arr = codes_matrix(codes)
    return _collisions(*prefix_ids(arr)[-1])


def _collisions(ids: np.ndarray, m: int) -> dict[str, float]:
    sizes = np.sort(np.bincount(ids, minlength=m))[::-1]
    n = int(sizes.sum())
    collided = sizes[sizes >= 2]
    return {
        "n_items": n,
        "n_unique": int(sizes.size),
        "collision_rate": _as_float(collided.sum() / n),
        "n_collision_groups": int(collided.size),
        "max_group_size": int(sizes[0]),
        "mean_group_size": _as_float(n / sizes.size),
        "p99_group_size": _as_float(np.percentile(sizes, 99)),
    }


# --------------------------------------------------------------------------------------------
# 2. Per-level codebook usage
# --------------------------------------------------------------------------------------------
def _codebook_sizes(arr: np.ndarray, codebook_size: int | Sequence[int] | None) -> list[int]:
    n_levels = arr.shape[1]
    maxes = arr.max(axis=0)
    if codebook_size is None:
        k = int(maxes.max()) + 1  # codebooks share K: infer it once from all levels
        return [k] * n_levels
    if isinstance(codebook_size, (int, np.integer)):
        sizes = [int(codebook_size)] * n_levels
    else:
        sizes = [int(k) for k in codebook_size]
        if len(sizes) != n_levels:
            raise ValueError(
                f"codebook_size has {len(sizes)} entries but the SIDs have {n_levels} levels: give one K per level or a single int"
            )
    for level, (k, mx) in enumerate(zip(sizes, maxes, strict=True), start=1):
        if k < 1:
            raise ValueError(f"codebook_size must be >= 1, got {k} for level {level}")
        if mx >= k:
            raise ValueError(
                f"level {level} holds code {int(mx)} >= codebook_size {k}: pass the real K (or None to infer max+1)"
            )
    return sizes


def code_counts(codes: CodesLike, level: int, codebook_size: int | None = None) -> np.ndarray:
    """Item count of every code 0..K-1 at `level` (1-based), zeros included."""
    arr = codes_matrix(codes)
    if not 1 <= level <= arr.shape[1]:
        raise ValueError(f"level must be in 1..{arr.shape[1]}, got {level}")
    k = _codebook_sizes(arr, codebook_size)[level - 1]
    return np.bincount(arr[:, level - 1], minlength=k)


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative counts (0 = uniform, (n-1)/n = all mass on one entry)."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    if x.size == 0 or x.sum() <= 0:
        raise ValueError("gini needs at least one positive count")
    n = x.size
    ranks = np.arange(1, n + 1, dtype=np.float64)
    return _as_float(2.0 * np.dot(ranks, x) / (n * x.sum()) - (n + 1.0) / n)


def entropy_nats(counts: np.ndarray) -> float:
    """Shannon entropy (natural log) of the distribution given by counts; zero counts ignored."""
    c = np.asarray(counts, dtype=np.float64)
    c = c[c > 0]
    if c.size == 0:
        raise ValueError("entropy needs at least one positive count")
    p = c / c.sum()
    return _as_float(-(p * np.log(p)).sum())


def level_usage_metrics(codes: CodesLike, codebook_size: int | Sequence[int] | None = None) -> dict[str, float]:
    """Per level l: utilization (distinct codes / K), entropy (nats, bits), perplexity, Gini.

    K is `codebook_size` (one int for all levels, or one per level) or, when None, inferred as
    max code over all levels + 1. Gini runs over all K codes, unused ones (zeros) included.
    """
    arr = codes_matrix(codes, "raw_codes")
    sizes = _codebook_sizes(arr, codebook_size)
    out: dict[str, float] = {}
    for level, k in enumerate(sizes, start=1):
        counts = np.bincount(arr[:, level - 1], minlength=k)
        h = entropy_nats(counts)
        used = int(np.count_nonzero(counts))
        out[f"l{level}_codebook_size"] = int(k)
        out[f"l{level}_n_used"] = used
        out[f"l{level}_utilization"] = _as_float(used / k)
        out[f"l{level}_entropy_nats"] = h
        out[f"l{level}_entropy_bits"] = _as_float(h / math.log(2))
        out[f"l{level}_perplexity"] = _as_float(math.exp(h))
        out[f"l{level}_gini"] = gini(counts)
    return out


# --------------------------------------------------------------------------------------------
# 3. Prefix-tree fan-out
# --------------------------------------------------------------------------------------------
def fanout_metrics(codes: CodesLike) -> dict[str, float]:
    """For each prefix length p = 0..L-1: distinct children at level p+1 per existing prefix.

    `l{p}_fanout_mean` = (#distinct prefixes of length p+1) / (#distinct prefixes of length p);
    `l{p}_fanout_max` = largest number of children of one prefix. `l0` is the root.
    """
    return _fanout(prefix_ids(codes_matrix(codes, "raw_codes")))


def _fanout(pref: list[tuple[np.ndarray, int]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for p in range(len(pref) - 1):
        parent_ids, m_parent = pref[p]
        child_ids, m_child = pref[p + 1]
        parent_of_child = np.empty(m_child, dtype=np.int64)
        parent_of_child[child_ids] = parent_ids  # a child prefix determines its parent
        fan = np.bincount(parent_of_child, minlength=m_parent)
        out[f"l{p}_fanout_mean"] = _as_float(m_child / m_parent)
        out[f"l{p}_fanout_max"] = int(fan.max())
    return out


# --------------------------------------------------------------------------------------------
# 4. V-measure against the category hierarchy
# --------------------------------------------------------------------------------------------
def _label_columns(labels: pl.DataFrame, n_levels: int) -> list[str]:
    if not isinstance(labels, pl.DataFrame):
        raise ValueError(f"labels must be a polars DataFrame, got {type(labels).__name__}")
    if "ad_id" not in labels.columns:
        raise ValueError("labels frame lacks column 'ad_id'")
    cols = []
    for level in range(1, n_levels + 1):
        if f"level_{level}" not in labels.columns:
            break
        cols.append(f"level_{level}")
    if not cols:
        raise ValueError("labels frame lacks column 'level_1': give ad_id, level_1, level_2, level_3 (schema.category_levels)")
    return cols


def _entropy_of_counts(counts: np.ndarray, n: int) -> float:
    c = counts[counts > 0].astype(np.float64)
    return float(-(c / n * (np.log(c) - math.log(n))).sum())


def homogeneity_completeness_v(labels_true: np.ndarray, labels_pred: np.ndarray) -> tuple[float, float, float]:
    """Fast `sklearn.metrics.homogeneity_completeness_v_measure` (beta = 1) for non-negative int ids.

    Same definitions and edge cases as scikit-learn (H = 0 gives a score of 1); counts by
    bincount / one sort instead of a sparse contingency matrix. Tests check it against sklearn.
    """
    a = np.asarray(labels_true, dtype=np.int64).reshape(-1)
    b = np.asarray(labels_pred, dtype=np.int64).reshape(-1)
    n = a.size
    if b.size != n:
        raise ValueError(f"labels_true and labels_pred differ in length ({n} vs {b.size})")
    if n == 0:
        return 1.0, 1.0, 1.0
    if a.min() < 0 or b.min() < 0:
        raise ValueError("label ids must be non-negative integers")
    if a.max() >= 2 * n:  # sparse ids (e.g. a global categorical pool): densify first
        a = _dense_ids(a)[0]
    if b.max() >= 2 * n:
        b = _dense_ids(b)[0]
    h_true = _entropy_of_counts(np.bincount(a), n)
    h_pred = _entropy_of_counts(np.bincount(b), n)
    joint = a * (int(b.max()) + 1) + b
    _, joint_counts = np.unique(joint, return_counts=True)
    mi = max(h_true + h_pred - _entropy_of_counts(joint_counts, n), 0.0)
    homogeneity = min(mi / h_true, 1.0) if h_true else 1.0
    completeness = min(mi / h_pred, 1.0) if h_pred else 1.0
    v = 0.0 if homogeneity + completeness == 0 else 2 * homogeneity * completeness / (homogeneity + completeness)
    return homogeneity, completeness, v


def _v_measure(sorted_ad_ids: pl.Series, arr: np.ndarray, pref: list[tuple[np.ndarray, int]], labels: pl.DataFrame) -> dict[str, float]:
    cols = _label_columns(labels, arr.shape[1])
    lab = labels.select("ad_id", *cols)
    if lab["ad_id"].null_count():
        raise ValueError(f"labels frame has {lab['ad_id'].null_count()} null ad_id values")
    if lab["ad_id"].n_unique() != lab.height:
        raise ValueError("labels frame has duplicate ad_id values: one row of labels per ad")
    joined = (
        sorted_ad_ids.cast(pl.Int64).to_frame("ad_id")
        .with_row_index("_row")
        .join(lab.with_columns(pl.col("ad_id").cast(pl.Int64)), on="ad_id", how="inner")
        .sort("_row")
    )
    if joined.height == 0:
        raise ValueError(
            f"labels share no ad_id with the SID table ({sorted_ad_ids.len()} SIDs, {labels.height} label rows): "
            "check that both come from the same ads"
        )
    if joined.height < sorted_ad_ids.len():
        logger.warning("labels cover %d of %d SID items; V-measure uses the intersection", joined.height, sorted_ad_ids.len())
    rows = joined["_row"].to_numpy().astype(np.int64)
    out: dict[str, float] = {"labels_n_matched": int(joined.height)}
    for level, col in enumerate(cols, start=1):
        y = joined[col]
        keep = y.is_not_null()
        n_used = int(keep.sum())
        if n_used == 0:
            raise ValueError(f"labels column {col} is null for all {joined.height} matched ads: fill it or drop the column")
        # class ids: any injective coding works (V-measure ignores label names); rows are in ad_id order
        y_true = y.filter(keep).cast(pl.Utf8).cast(pl.Categorical).to_physical().to_numpy().astype(np.int64)
        sel = rows[keep.to_numpy()]
        h, c, v = homogeneity_completeness_v(y_true, pref[level][0][sel])
        hc, cc, vc = homogeneity_completeness_v(y_true, arr[sel, level - 1])
        out[f"l{level}_labels_n"] = n_used
        out[f"l{level}_homogeneity"] = h
        out[f"l{level}_completeness"] = c
        out[f"l{level}_v_measure"] = v
        out[f"l{level}_homogeneity_code"] = hc
        out[f"l{level}_completeness_code"] = cc
        out[f"l{level}_v_measure_code"] = vc
    return out


def v_measure_metrics(table: pl.DataFrame, labels: pl.DataFrame, column: str = "raw_codes") -> dict[str, float]:
    """Homogeneity, completeness and V-measure per level against ground-truth category labels.

    Level l compares two clusterings of the items, with the definitions of scikit-learn's
    `homogeneity_completeness_v_measure(labels_true, labels_pred)` (computed by
    `homogeneity_completeness_v`, a faster equivalent checked against it in the tests):
    - predicted clusters = the SID **prefix** of length l (items with equal codes[:l] form one
      cluster), which is how we read the paper's "V-measure L1/L2/L3" (DESIGN §2-3);
    - true classes = `level_l` (the category path prefix down to depth l).
    The `_code` variant clusters by the code at level l alone (codes[l-1]).
    Levels run from 1 to min(L, number of consecutive `level_*` columns). Items missing from
    `labels` are left out (`labels_n_matched` counts the rest); null labels are skipped per level
    (`l{l}_labels_n` counts the items used). Raises ValueError when nothing is left to compare.
    """
    table = _check_table(table)
    arr = codes_matrix(table[column], column)
    return _v_measure(table["ad_id"], arr, prefix_ids(arr), labels)


# --------------------------------------------------------------------------------------------
# 5. Neighbour agreement in embedding space
# --------------------------------------------------------------------------------------------
def knn_cosine(x: torch.Tensor, queries: torch.Tensor, k: int, batch_elems: int = 2**25) -> torch.Tensor:
    """Indices (n_queries, k) of the k most cosine-similar rows of `x` (n, d) to each query row
    index, the query itself excluded, best first. `x` must already be L2-normalised.

    Exact brute force: batches of queries (about `batch_elems` scores each) are matched against
    all items with one matmul, then `topk`. (A chunked scan that skips chunks below the running
    k-th best score was slower on the 2-core CPU: the matmul dominates and extra passes cost more
    than the top-k they save.)
    """
    n = x.shape[0]
    nq = queries.numel()
    if not 1 <= k <= n - 1:
        raise ValueError(f"k must be in 1..n_items-1 = {n - 1}, got {k}")
    bs = max(1, min(nq, batch_elems // n))
    out = torch.empty((nq, k), dtype=torch.long, device=x.device)
    for s in range(0, nq, bs):
        qi = queries[s : s + bs]
        sims = x[qi] @ x.T
        sims[torch.arange(qi.numel(), device=x.device), qi] = -float("inf")
        out[s : s + qi.numel()] = sims.topk(k, dim=1).indices
    return out


def _neighbours(
    sorted_ad_ids: pl.Series,
    arr: np.ndarray,
    embeddings: np.ndarray,
    embedding_ad_ids: np.ndarray | Sequence[int] | pl.Series,
    k: int,
    max_queries: int,
    seed: int,
    device: str,
    batch_elems: int,
    pref_all: list[tuple[np.ndarray, int]] | None = None,
) -> dict[str, float]:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if max_queries < 1:
        raise ValueError(f"max_queries must be >= 1, got {max_queries}")
    dev = resolve_device(device)
    seed_everything(seed)
    emb = np.asarray(embeddings)
    ids = np.asarray(embedding_ad_ids.to_numpy() if isinstance(embedding_ad_ids, pl.Series) else embedding_ad_ids)
    if emb.ndim != 2 or ids.ndim != 1 or emb.shape[0] != ids.shape[0]:
        raise ValueError(
            f"embeddings must be (n, d) with one row per embedding_ad_ids entry, got {emb.shape} and {ids.shape} ids"
        )
    emb_frame = pl.DataFrame({"ad_id": ids.astype(np.int64), "_erow": np.arange(ids.size, dtype=np.int64)})
    if emb_frame["ad_id"].n_unique() != ids.size:
        raise ValueError("embedding_ad_ids has duplicates: one embedding per ad")
    joined = (
        sorted_ad_ids.cast(pl.Int64).to_frame("ad_id")
        .with_row_index("_row")
        .join(emb_frame, on="ad_id", how="inner")
        .sort("_row")
    )
    n = joined.height
    if n < 2:
        raise ValueError(f"only {n} SID item(s) have an embedding: neighbour agreement needs at least 2")
    erow = joined["_erow"].to_numpy()
    if erow.size == emb.shape[0] and bool((erow == np.arange(erow.size)).all()):
        x = np.ascontiguousarray(emb, dtype=np.float32)  # rows already in ad_id order: no copy (1 GB at 1M x 256)
    else:
        x = np.ascontiguousarray(emb[erow], dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError("embeddings hold NaN or inf values")
    if not x.flags.writeable:  # a read-only view (e.g. of a polars column): torch.from_numpy would warn
        x = x.copy()
    if n == arr.shape[0] and pref_all is not None:  # every item matched, rows in the same order
        pref = [p[0] for p in pref_all[1:]]
    else:  # levels 1..L on the matched items
        pref = [p[0] for p in prefix_ids(arr[joined["_row"].to_numpy()])[1:]]
    kk = min(k, n - 1)
    n_q = min(max_queries, n)
    rng = np.random.default_rng(seed)
    queries = np.sort(rng.choice(n, size=n_q, replace=False)) if n_q < n else np.arange(n)
    with torch.no_grad():
        xt = torch.nn.functional.normalize(torch.from_numpy(x).to(dev), dim=1, eps=1e-12)
        nbr = knn_cosine(xt, torch.from_numpy(queries).to(dev), kk, batch_elems).cpu().numpy()
    out: dict[str, float] = {"nbr_k": int(kk), "nbr_n_queries": int(n_q), "nbr_n_items": int(n)}
    for level, pid in enumerate(pref, start=1):
        out[f"nbr_agree_l{level}"] = _as_float((pid[nbr] == pid[queries][:, None]).mean())
    for level, pid in enumerate(pref, start=1):
        c = np.bincount(pid).astype(np.float64)
        out[f"nbr_chance_l{level}"] = _as_float((c * (c - 1)).sum() / (n * (n - 1.0)))
    return out


def neighbour_agreement(
    table: pl.DataFrame,
    embeddings: np.ndarray,
    embedding_ad_ids: np.ndarray | Sequence[int] | pl.Series,
    k: int = 10,
    max_queries: int = 2000,
    seed: int = 0,
    device: str = "cpu",
    column: str = "raw_codes",
    batch_elems: int = 2**25,
) -> dict[str, float]:
    """Share of each item's k nearest embedding neighbours (cosine) that share its SID prefix.

    Items are those of `table` that have an embedding (`nbr_n_items`). Up to `max_queries` of
    them, sampled without replacement with `seed` from the ad_id-sorted items, are queried against
    all items (self excluded) by exact batched matmul + top-k on `device` (`knn_cosine`).
    `nbr_agree_l{l}` = mean over queries and their k neighbours of
    [prefix_l(neighbour) == prefix_l(query)]; `nbr_chance_l{l}` is the same for two random distinct
    items, for reference (a collapsed codebook agrees trivially). Cost ~ max_queries * n * d.
    """
    table = _check_table(table)
    arr = codes_matrix(table[column], column)
    return _neighbours(table["ad_id"], arr, embeddings, embedding_ad_ids, k, max_queries, seed, device, batch_elems)


# --------------------------------------------------------------------------------------------
# 6. Transition agreement: do consecutive interactions share a SID prefix?
# --------------------------------------------------------------------------------------------
def _transition_pairs(sequences: pl.DataFrame, items_column: str) -> tuple[np.ndarray, np.ndarray]:
    """(previous ad_id, next ad_id) of every pair of consecutive items in each row's `items_column` list."""
    if not isinstance(sequences, pl.DataFrame):
        raise ValueError(f"sequences must be a polars DataFrame, got {type(sequences).__name__}")
    if items_column not in sequences.columns:
        raise ValueError(f"sequences lacks column {items_column!r} (a List(Int64) of ad_ids per user in time order); "
                         f"it has {sequences.columns}: pass the user_sequences table or name the column")
    col = pl.col(items_column)
    s = sequences.select(col.list.drop_nulls()).filter(col.list.len() >= 2)
    prev = s.select(col.list.slice(0, col.list.len() - 1)).explode(items_column)[items_column]
    nxt = s.select(col.list.slice(1)).explode(items_column)[items_column]
    return prev.cast(pl.Int64).to_numpy(), nxt.cast(pl.Int64).to_numpy()


def _transitions(
    sorted_ad_ids: pl.Series, arr: np.ndarray, sequences: pl.DataFrame, items_column: str,
    pref_all: list[tuple[np.ndarray, int]] | None = None,
) -> dict[str, float]:
    prev, nxt = _transition_pairs(sequences, items_column)
    if prev.size == 0:  # every user has < 2 training items: nothing to measure, not an error
        logger.warning("transition agreement: no user has two consecutive %r items; seq_agree_l* left out", items_column)
        return {"seq_n_pairs": 0, "seq_n_unmatched": 0}
    ids = sorted_ad_ids.cast(pl.Int64).to_numpy()

    def rows(a: np.ndarray) -> np.ndarray:
        r = np.clip(np.searchsorted(ids, a), 0, ids.size - 1)
        return np.where(ids[r] == a, r, -1)
    ra, rb = rows(prev), rows(nxt)
    ok = (ra >= 0) & (rb >= 0)
    n_pairs = int(ok.sum())
    if n_pairs == 0:
        raise ValueError(f"no consecutive pair of {items_column!r} has both items in the SID table "
                         f"({prev.size} pairs in all): are the SIDs and the sequences of the same catalog?")
    ra, rb = ra[ok], rb[ok]
    pref = pref_all if pref_all is not None else prefix_ids(arr)
    out: dict[str, float] = {"seq_n_pairs": n_pairs, "seq_n_unmatched": int(prev.size - n_pairs)}
    for level, (pid, _) in enumerate(pref[1:], start=1):
        out[f"seq_agree_l{level}"] = _as_float((pid[ra] == pid[rb]).mean())
    for level, (pid, m) in enumerate(pref[1:], start=1):
        pa = np.bincount(pid[ra], minlength=m) / n_pairs
        pb = np.bincount(pid[rb], minlength=m) / n_pairs
        out[f"seq_chance_l{level}"] = _as_float((pa * pb).sum())
    return out


PROXY_SMOOTHING = 5.0  # pseudo-transitions toward the marginal, per previous level-1 code


def _proxy_recall(sorted_ad_ids: pl.Series, c1: np.ndarray, m: int, sequences: pl.DataFrame, items_column: str,
                  k: int = 10) -> dict[str, float]:
    """`transition_proxy_recall` on level-1 prefix ids c1 (n,) in [0, m) of the table's rows (ad_id order)."""
    if not {"test_history", "test_target"} <= set(sequences.columns):
        return {}
    ids = sorted_ad_ids.cast(pl.Int64).to_numpy()
    n = ids.size

    def rows(a: np.ndarray) -> np.ndarray:
        r = np.clip(np.searchsorted(ids, a), 0, n - 1)
        return np.where(ids[r] == a, r, -1)
    prev, nxt = _transition_pairs(sequences, items_column)
    ra, rb = rows(prev), rows(nxt)
    ok = (ra >= 0) & (rb >= 0)
    ra, rb = ra[ok], rb[ok]
    test = sequences.select(pl.col("test_history").list.last().alias("q"), pl.col("test_target").alias("t")).drop_nulls()
    q, t = rows(test["q"].cast(pl.Int64).to_numpy()), rows(test["t"].cast(pl.Int64).to_numpy())
    keep = (q >= 0) & (t >= 0)
    q, t = q[keep], t[keep]
    if ra.size == 0 or q.size == 0:
        return {}
    pop = np.bincount(ra, minlength=n) + np.bincount(rb, minlength=n) + 1.0  # training popularity, add-one
    trans = np.zeros((m, m))
    np.add.at(trans, (c1[ra], c1[rb]), 1.0)
    marg = np.bincount(c1[rb], minlength=m) + 1.0
    marg /= marg.sum()
    p_next = (trans + PROXY_SMOOTHING * marg) / (trans.sum(1, keepdims=True) + PROXY_SMOOTHING)  # (m, m)
    within = pop / np.bincount(c1, weights=pop, minlength=m)[c1]  # P(item | its level-1 code)
    # the k most popular items of each code (ties: row order): the global top k is always among them
    order = np.lexsort((np.arange(n), -within, c1))
    start = np.searchsorted(c1[order], np.arange(m))
    cand = np.full((m, k), -1, dtype=np.int64)
    for j in range(k):
        pos = start + j
        valid = (pos < n) & (c1[order[np.minimum(pos, n - 1)]] == np.arange(m))
        cand[valid, j] = order[pos[valid]]
    cand_w = np.where(cand >= 0, within[np.maximum(cand, 0)], -1.0)  # (m, k); padding never ranks
    scores = p_next[:, :, None] * cand_w[None, :, :]  # (m prev codes, m codes, k)
    flat = scores.reshape(m, -1)
    top = np.argsort(-flat, axis=1, kind="stable")[:, :k]  # (m, k) positions into (code, slot)
    top_items = cand.reshape(-1)[top]  # (m, k)
    hit = (top_items[c1[q]] == t[:, None]).any(1)
    return {"seq_proxy_r10": _as_float(hit.mean()), "seq_proxy_n_queries": int(q.size)}


def transition_proxy_recall(table: pl.DataFrame, sequences: pl.DataFrame, items_column: str = "train_items",
                            column: str = "raw_codes") -> dict[str, float]:
    """Recall@10 on the test split of a recommender that knows only the SID table's level-1 codes.

    Every item is scored P(level-1 code of the item | level-1 code of the user's last history item) x
    P(item | its level-1 code): the code transitions and the popularity come from the training
    transitions of `sequences[items_column]`, with `PROXY_SMOOTHING` pseudo-counts toward the next-code
    marginal; the query is `test_history[-1]`, the positive `test_target` (seq_proxy_n_queries pairs with
    both ads in the table). It measures how much a table's first code says about the next item, at full
    codebook use (a collapsed level 1 scores low, unlike `seq_agree`). A diagnostic, not a recommender: on
    Amazon Beauty it ordered the SID tables as the TIGER recommender did (BENCHMARKS.md). Empty when the
    sequences have no test columns.
    """
    table = _check_table(table)
    arr = codes_matrix(table[column], column)
    c1, m = prefix_ids(arr)[1]
    return _proxy_recall(table["ad_id"], c1, m, sequences, items_column)


def transition_agreement(
    table: pl.DataFrame,
    sequences: pl.DataFrame,
    items_column: str = "train_items",
    column: str = "raw_codes",
) -> dict[str, float]:
    """Share of consecutive interactions (one user's item a, then item b) whose SIDs share the level-l prefix.

    A generative recommender predicts the next item's SID code by code, so a tokenizer whose prefixes
    group items that users consume one after the other gives it an easier first step. Pairs come
    from `sequences[items_column]` (default `train_items` of user_sequences: training interactions only,
    so no validation or test item is looked at); pairs with an item missing from the table are
    dropped (`seq_n_unmatched`); with no pair at all only the counts (0) are returned.
    `seq_agree_l{l}` = mean over pairs of [prefix_l(a) == prefix_l(b)]; `seq_chance_l{l}` = the same
    if a and b were drawn independently from the pairs' previous and next items (sum over prefixes
    of p_prev * p_next), for reference: a coarse level agrees often by chance alone. On Amazon Beauty the tables that trained the weaker TIGER recommenders had the lower
    `seq_agree` (BENCHMARKS.md, "What was tried"); it is a diagnostic, not a substitute for training one.
    """
    table = _check_table(table)
    arr = codes_matrix(table[column], column)
    return _transitions(table["ad_id"], arr, sequences, items_column)


# --------------------------------------------------------------------------------------------
# 7. Report, comparison, summary
# --------------------------------------------------------------------------------------------
def sid_report(
    table: pl.DataFrame,
    labels: pl.DataFrame | None = None,
    embeddings: np.ndarray | None = None,
    embedding_ad_ids: np.ndarray | Sequence[int] | pl.Series | None = None,
    codebook_size: int | Sequence[int] | None = None,
    k: int = 10,
    seed: int = 0,
    *,
    max_queries: int = 2000,
    device: str = "cpu",
    batch_elems: int = 2**25,
    sequences: pl.DataFrame | None = None,
    items_column: str = "train_items",
) -> dict[str, float]:
    """All SID metrics of one table as a flat dict of Python ints/floats (see module docstring).

    Collisions on raw_codes (`_pre`) and codes (`_post`); codebook usage, fan-out, V-measure,
    neighbour agreement and transition agreement on raw_codes. Label, neighbour and transition
    metrics only when their input (labels, embeddings, sequences) is given.
    """
    if (embeddings is None) != (embedding_ad_ids is None):
        raise ValueError("give embeddings and embedding_ad_ids together (or neither)")
    table = _check_table(table)
    raw = codes_matrix(table["raw_codes"], "raw_codes")
    post = codes_matrix(table["codes"], "codes")
    out: dict[str, float] = {"n_items": int(table.height), "n_levels": int(raw.shape[1]), "sid_length_post": int(post.shape[1])}
    pref = prefix_ids(raw)
    for suffix, ids in (("pre", pref[-1]), ("post", prefix_ids(post)[-1])):
        for key, val in _collisions(*ids).items():
            if key != "n_items":
                out[f"{key}_{suffix}"] = val
    out.update(level_usage_metrics(raw, codebook_size))
    out.update(_fanout(pref))
    if labels is not None:
        out.update(_v_measure(table["ad_id"], raw, pref, labels))
    if embeddings is not None:
        out.update(
            _neighbours(table["ad_id"], raw, embeddings, embedding_ad_ids, k, max_queries, seed, device, batch_elems, pref)
        )
    if sequences is not None:
        out.update(_transitions(table["ad_id"], raw, sequences, items_column, pref))
        out.update(_proxy_recall(table["ad_id"], *pref[1], sequences, items_column))
    return out


def compare_methods(reports: Mapping[str, Mapping[str, float]]) -> pl.DataFrame:
    """One row per method: `method` then every metric key (first-seen order); missing keys are null."""
    if not reports:
        raise ValueError("reports is empty: give at least one {method: sid_report(...)}")
    keys: dict[str, None] = {}
    for rep in reports.values():
        for key in rep:
            if key == "method":
                raise ValueError("a report must not contain the key 'method' (it is the row label)")
            keys.setdefault(key, None)
    cols: dict[str, pl.Series] = {"method": pl.Series("method", list(reports), dtype=pl.Utf8)}
    for key in keys:
        vals = [rep.get(key) for rep in reports.values()]
        is_int = all(v is None or (isinstance(v, (int, np.integer)) and not isinstance(v, bool)) for v in vals)
        dtype = pl.Int64 if is_int else pl.Float64
        cols[key] = pl.Series(key, [None if v is None else (int(v) if is_int else float(v)) for v in vals], dtype=dtype)
    return pl.DataFrame(cols)


def _fmt(v: object) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


def markdown_summary(df: pl.DataFrame, columns: Sequence[str] | None = None) -> str:
    """Markdown table of `compare_methods` output: one row per method, headline metrics by default."""
    if "method" not in df.columns:
        raise ValueError("df lacks column 'method': pass the output of compare_methods")
    if columns is None:
        columns = [c for c in SUMMARY_COLUMNS if c in df.columns]
    else:
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise ValueError(f"columns {missing} are not in the frame; available: {df.columns}")
    cols = ["method", *[c for c in columns if c != "method"]]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.select(cols).iter_rows():
        lines.append("| " + " | ".join(_fmt(v) for v in row) + " |")
    return "\n".join(lines) + "\n"
