"""SID metrics: hand-computed values on a 6-item table, slow references, invariances, edge cases."""
from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import homogeneity_completeness_v_measure

from unisid_pipeline.analysis import (
    collision_metrics,
    compare_methods,
    fanout_metrics,
    gini,
    homogeneity_completeness_v,
    knn_cosine,
    level_usage_metrics,
    markdown_summary,
    neighbour_agreement,
    sid_report,
    transition_agreement,
    v_measure_metrics,
)
from unisid_pipeline.analysis.plots import plot_bucket_sizes, plot_codebook_usage, plot_v_measure, save_png

# 6 items, 3 levels, K = 4. Full SIDs: 000 x2, 011, 100, 231 x2 (4 distinct, 2 collision groups).
RAW = [[0, 0, 0], [0, 0, 0], [0, 1, 1], [1, 0, 0], [2, 3, 1], [2, 3, 1]]
POST = [[0, 0, 0, 0], [0, 0, 0, 1], [0, 1, 1, 0], [1, 0, 0, 0], [2, 3, 1, 0], [2, 3, 1, 1]]
AD_IDS = [11, 12, 13, 14, 15, 16]


def make_table(ad_ids=AD_IDS, raw=RAW, post=POST) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "ad_id": pl.Series(ad_ids, dtype=pl.Int64),
            "codes": pl.Series(post, dtype=pl.List(pl.Int64)),
            "raw_codes": pl.Series(raw, dtype=pl.List(pl.Int64)),
            "method": ["m"] * len(ad_ids),
            "model_version": ["v1"] * len(ad_ids),
        }
    )


def perfect_labels() -> pl.DataFrame:
    l1 = ["A", "A", "A", "B", "C", "C"]
    l2 = ["A > x", "A > x", "A > y", "B > z", "C > w", "C > w"]
    l3 = ["A > x > p", "A > x > p", "A > y > q", "B > z > r", "C > w > s", "C > w > s"]
    return pl.DataFrame({"ad_id": AD_IDS, "level_1": l1, "level_2": l2, "level_3": l3})


# ------------------------------------------------------------------------------- collisions
def test_collision_metrics_hand_computed():
    t = make_table()
    pre = collision_metrics(t["raw_codes"])
    assert pre == {
        "n_items": 6,
        "n_unique": 4,
        "collision_rate": pytest.approx(4 / 6),
        "n_collision_groups": 2,
        "max_group_size": 2,
        "mean_group_size": pytest.approx(1.5),
        "p99_group_size": pytest.approx(2.0),
    }
    post = collision_metrics(t["codes"])
    assert post["collision_rate"] == 0.0 and post["n_unique"] == 6 and post["max_group_size"] == 1
    # buckets of sizes 3, 2, 1: p99 of [1, 2, 3] interpolates to 2.98
    m = collision_metrics(np.array([[1], [1], [1], [2], [3], [3]]))
    assert m["collision_rate"] == pytest.approx(5 / 6)
    assert m["n_collision_groups"] == 2 and m["max_group_size"] == 3
    assert m["mean_group_size"] == pytest.approx(2.0)
    assert m["p99_group_size"] == pytest.approx(2.98)


def _slow_collisions(rows):
    c = Counter(map(tuple, rows))
    sizes = list(c.values())
    return {
        "n_unique": len(c),
        "collision_rate": sum(s for s in sizes if s > 1) / len(rows),
        "n_collision_groups": sum(1 for s in sizes if s > 1),
        "max_group_size": max(sizes),
    }


def _slow_fanout(rows):
    out = {}
    for p in range(len(rows[0])):
        children = defaultdict(set)
        for r in rows:
            children[tuple(r[:p])].add(r[p])
        fan = [len(v) for v in children.values()]
        out[f"l{p}_fanout_mean"] = sum(fan) / len(fan)
        out[f"l{p}_fanout_max"] = max(fan)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_paths_match_slow_references(seed):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, [3, 4, 5], size=(300, 3))
    arr[:, 2] = np.where(rng.random(300) < 0.5, 0, arr[:, 2])  # skew the last level
    rows = arr.tolist()
    fast = collision_metrics(arr)
    for key, val in _slow_collisions(rows).items():
        assert fast[key] == pytest.approx(val), key
    assert fanout_metrics(arr) == pytest.approx(_slow_fanout(rows))
    usage = level_usage_metrics(arr, codebook_size=8)
    for level in range(1, 4):
        c = Counter(r[level - 1] for r in rows)
        h = -sum(v / 300 * math.log(v / 300) for v in c.values())
        assert usage[f"l{level}_entropy_nats"] == pytest.approx(h)
        counts = [c.get(i, 0) for i in range(8)]
        mean_abs_diff = sum(abs(a - b) for a in counts for b in counts) / (2 * 8 * 8 * (300 / 8))
        assert usage[f"l{level}_gini"] == pytest.approx(mean_abs_diff)


# ----------------------------------------------------------------------------- level usage
def test_level_usage_hand_computed():
    m = level_usage_metrics(make_table()["raw_codes"])  # K inferred = max + 1 = 4
    h1 = 0.5 * math.log(2) + math.log(6) / 6 + math.log(3) / 3  # level 1 counts [3, 1, 2, 0]
    assert m["l1_codebook_size"] == 4 and m["l1_n_used"] == 3
    assert m["l1_utilization"] == pytest.approx(0.75)
    assert m["l1_entropy_nats"] == pytest.approx(h1)
    assert m["l1_entropy_bits"] == pytest.approx(h1 / math.log(2))
    assert m["l1_perplexity"] == pytest.approx(math.exp(h1))
    assert m["l1_gini"] == pytest.approx(5 / 12)
    # level 3 counts [3, 3, 0, 0]: entropy ln 2, perplexity 2, gini 1/2
    assert m["l3_entropy_bits"] == pytest.approx(1.0)
    assert m["l3_perplexity"] == pytest.approx(2.0)
    assert m["l3_gini"] == pytest.approx(0.5)
    assert m["l3_utilization"] == pytest.approx(0.5)
    # K given: unused codes count as zeros in the Gini; level 1 counts [3, 1, 2, 0, 0, 0, 0, 0]
    m8 = level_usage_metrics(make_table()["raw_codes"], codebook_size=8)
    assert m8["l1_utilization"] == pytest.approx(3 / 8)
    assert m8["l1_gini"] == pytest.approx(17 / 24)
    assert m8["l1_perplexity"] == pytest.approx(m["l1_perplexity"])


def test_gini_extremes_and_bad_k():
    assert gini(np.array([5, 5, 5, 5])) == pytest.approx(0.0)
    assert gini(np.array([0, 0, 0, 7])) == pytest.approx(3 / 4)
    with pytest.raises(ValueError, match="codebook_size"):
        level_usage_metrics(make_table()["raw_codes"], codebook_size=3)  # code 3 >= K
    with pytest.raises(ValueError, match="3 levels"):
        level_usage_metrics(make_table()["raw_codes"], codebook_size=[4, 4])


# ---------------------------------------------------------------------------------- fan-out
def test_fanout_hand_computed():
    assert fanout_metrics(make_table()["raw_codes"]) == {
        "l0_fanout_mean": 3.0,  # root -> {0, 1, 2}
        "l0_fanout_max": 3,
        "l1_fanout_mean": pytest.approx(4 / 3),  # 0 -> {0, 1}, 1 -> {0}, 2 -> {3}
        "l1_fanout_max": 2,
        "l2_fanout_mean": 1.0,  # 00 -> {0}, 01 -> {1}, 10 -> {0}, 23 -> {1}
        "l2_fanout_max": 1,
    }


# -------------------------------------------------------------------------------- V-measure
def test_v_measure_perfect_labelling_is_one():
    m = v_measure_metrics(make_table(), perfect_labels())
    assert m["labels_n_matched"] == 6
    for level in (1, 2, 3):
        assert m[f"l{level}_v_measure"] == pytest.approx(1.0)
        assert m[f"l{level}_homogeneity"] == pytest.approx(1.0)
        assert m[f"l{level}_completeness"] == pytest.approx(1.0)
    # code-only level 2: code 0 holds A>x and B>z, so it is not homogeneous
    assert m["l2_homogeneity_code"] < 1.0 and m["l2_completeness_code"] == pytest.approx(1.0)


def test_v_measure_matches_sklearn_on_prefix_tuples_with_missing_and_null_labels():
    labels = pl.DataFrame(
        {
            "ad_id": [11, 12, 13, 14, 15, 99],  # 16 has no label, 99 is not in the table
            "level_1": ["A", "B", "A", "B", "A", "Z"],
            "level_2": ["A > x", "B > y", None, "B > y", "A > x", "Z > z"],
        }
    )
    m = v_measure_metrics(make_table(), labels)
    assert m["labels_n_matched"] == 5 and m["l1_labels_n"] == 5 and m["l2_labels_n"] == 4
    assert "l3_v_measure" not in m  # no level_3 column
    pre1 = ["0", "0", "0", "1", "2"]
    assert m["l1_v_measure"] == pytest.approx(homogeneity_completeness_v_measure(labels["level_1"][:5].to_list(), pre1)[2])
    pre2 = ["0,0", "0,0", "1,0", "2,3"]  # items 11, 12, 14, 15 (13 has a null label)
    h, c, v = homogeneity_completeness_v_measure(["A > x", "B > y", "B > y", "A > x"], pre2)
    assert (m["l2_homogeneity"], m["l2_completeness"], m["l2_v_measure"]) == pytest.approx((h, c, v))
    assert 0.0 < v < 1.0


@pytest.mark.parametrize("seed", [0, 1])
def test_fast_v_measure_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    cases = [
        (rng.integers(0, 5, 400), rng.integers(0, 9, 400)),
        (rng.integers(0, 3, 50), rng.integers(0, 50, 50)),  # many singleton clusters
        (np.zeros(20, dtype=np.int64), rng.integers(0, 4, 20)),  # one class: homogeneity 1
        (rng.integers(0, 4, 20), np.full(20, 7)),  # one cluster: completeness 1
        (np.zeros(5, dtype=np.int64), np.zeros(5, dtype=np.int64)),
    ]
    for a, b in cases:
        assert homogeneity_completeness_v(a, b) == pytest.approx(homogeneity_completeness_v_measure(a, b), abs=1e-12)


def test_v_measure_errors():
    with pytest.raises(ValueError, match="share no ad_id"):
        v_measure_metrics(make_table(), perfect_labels().with_columns(pl.col("ad_id") + 100))
    with pytest.raises(ValueError, match="level_2 is null"):
        v_measure_metrics(make_table(), perfect_labels().with_columns(pl.lit(None, pl.Utf8).alias("level_2")))
    with pytest.raises(ValueError, match="level_1"):
        v_measure_metrics(make_table(), pl.DataFrame({"ad_id": AD_IDS}))


# ------------------------------------------------------------------------ neighbour agreement
def angle_embeddings(degrees=(0, 5, 40, 90, 180, 185)) -> np.ndarray:
    rad = np.deg2rad(np.array(degrees, dtype=np.float64))
    return (np.stack([np.cos(rad), np.sin(rad)], axis=1) * np.array([[1], [2], [3], [1], [2], [3]])).astype(np.float32)


def test_neighbour_agreement_constructed():
    # nearest neighbours (cosine): 11->12, 12->11, 13->12, 14->13, 15->16, 16->15
    m = neighbour_agreement(make_table(), angle_embeddings(), AD_IDS, k=1)
    assert m["nbr_k"] == 1 and m["nbr_n_queries"] == 6 and m["nbr_n_items"] == 6
    assert m["nbr_agree_l1"] == pytest.approx(5 / 6)  # only 14 -> 13 crosses a level-1 code
    assert m["nbr_agree_l2"] == pytest.approx(4 / 6)  # 13 (01) -> 12 (00) also differs
    assert m["nbr_agree_l3"] == pytest.approx(4 / 6)
    assert m["nbr_chance_l1"] == pytest.approx((3 * 2 + 2 * 1) / 30)
    # k = 2: 11->{12,13}, 12->{11,13}, 13->{12,11}, 14->{13,12}, 15->{16,14}, 16->{15,14}
    m2 = neighbour_agreement(make_table(), angle_embeddings(), AD_IDS, k=2)
    assert m2["nbr_agree_l1"] == pytest.approx(8 / 12)
    # embeddings of an ad not in the table are ignored; k is capped at n_items - 1
    extra = np.vstack([angle_embeddings(), [[1.0, 0.0]]]).astype(np.float32)
    m3 = neighbour_agreement(make_table(), extra, [*AD_IDS, 999], k=50)
    assert m3["nbr_k"] == 5 and m3["nbr_n_items"] == 6


def test_batched_knn_matches_slow_reference():
    import torch

    gen = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(300, 6, generator=gen), dim=1)
    queries = torch.tensor([0, 5, 150, 299, 42])
    ref = []
    for q in queries.tolist():  # one query at a time, python-side exclusion of self
        order = sorted((i for i in range(300) if i != q), key=lambda i: -float(x[q] @ x[i]))
        ref.append(order[:7])
    for batch_elems in (1, 600, 10**9):  # batches of 1, 2 and all queries
        assert knn_cosine(x, queries, 7, batch_elems=batch_elems).tolist() == ref
    with pytest.raises(ValueError, match="k must be"):
        knn_cosine(x, queries, 300)


def test_neighbour_agreement_sampling_is_seeded_and_order_free():
    rng = np.random.default_rng(0)
    n = 120
    raw = rng.integers(0, 4, size=(n, 3))
    emb = (raw[:, :1] * 3.0 + rng.normal(size=(n, 4))).astype(np.float32)
    ids = np.arange(1000, 1000 + n)
    t = make_table(ids.tolist(), raw.tolist(), raw.tolist())
    a = neighbour_agreement(t, emb, ids, k=5, max_queries=30, seed=3, batch_elems=200)  # several batches
    b = neighbour_agreement(t, emb, ids, k=5, max_queries=30, seed=3)
    perm = rng.permutation(n)
    c = neighbour_agreement(t[perm.tolist()], emb[perm], ids[perm], k=5, max_queries=30, seed=3)
    assert a["nbr_n_queries"] == 30 and a == b == c
    assert a["nbr_agree_l1"] > a["nbr_chance_l1"]  # embeddings cluster by first code


# ---------------------------------------------------------------------- transition agreement
def toy_sequences() -> pl.DataFrame:
    # pairs: (11,12) (12,13) (13,14) | (15,16) | none | (11,999): 999 has no SID -> unmatched
    return pl.DataFrame({"user_id": [1, 2, 3, 4], "train_items": [[11, 12, 13, 14], [15, 16], [16], [11, 999]]},
                        schema={"user_id": pl.Int64, "train_items": pl.List(pl.Int64)})


def test_transition_agreement_constructed():
    m = transition_agreement(make_table(), toy_sequences())
    assert m["seq_n_pairs"] == 4 and m["seq_n_unmatched"] == 1
    assert m["seq_agree_l1"] == pytest.approx(3 / 4)  # only 13 (0..) -> 14 (1..) changes the first code
    assert m["seq_agree_l2"] == pytest.approx(2 / 4)  # 12 (00) -> 13 (01) differs too
    assert m["seq_agree_l3"] == pytest.approx(2 / 4)
    # previous items 11 12 13 15 -> first codes 0 0 0 2; next items 12 13 14 16 -> 0 0 1 2
    assert m["seq_chance_l1"] == pytest.approx(3 / 4 * 2 / 4 + 1 / 4 * 1 / 4)
    perm = [5, 2, 0, 4, 1, 3]  # row order of the table does not matter
    assert transition_agreement(make_table()[perm], toy_sequences()) == m
    # raw_codes by default; the resolved codes give the same prefixes here, and a 4th level
    assert transition_agreement(make_table(), toy_sequences(), column="codes")["seq_agree_l4"] == pytest.approx(0)


def test_transition_agreement_in_the_report_and_its_errors():
    rep = sid_report(make_table(), sequences=toy_sequences())
    assert rep["seq_agree_l1"] == pytest.approx(3 / 4)
    assert not any(k.startswith("seq_") for k in sid_report(make_table()))
    with pytest.raises(ValueError, match="lacks column 'train_items'"):
        transition_agreement(make_table(), pl.DataFrame({"items": [[11, 12]]}))
    with pytest.raises(ValueError, match="same catalog"):
        transition_agreement(make_table(), pl.DataFrame({"train_items": [[901, 902, 903]]}))
    # users with one training item each: no pair, counts only (the report still builds)
    short = pl.DataFrame({"train_items": [[11], [12]]}, schema={"train_items": pl.List(pl.Int64)})
    assert transition_agreement(make_table(), short) == {"seq_n_pairs": 0, "seq_n_unmatched": 0}
    assert "seq_agree_l1" not in sid_report(make_table(), sequences=short)


# ------------------------------------------------------------------------- report + invariance
def random_inputs(n=200, seed=0):
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, [4, 6, 8], size=(n, 3))
    raw[: n // 4] = raw[0]  # one big collision group
    post = np.concatenate([raw, rng.integers(0, 3, size=(n, 1))], axis=1)
    ids = rng.permutation(np.arange(5000, 5000 + 3 * n))[:n]
    letters = np.array(list("abcdefgh"))
    labels = pl.DataFrame(
        {
            "ad_id": ids,
            "level_1": letters[raw[:, 0]],
            "level_2": [f"{a}{b}" if i % 7 else None for i, (a, b) in enumerate(zip(letters[raw[:, 0]], letters[rng.integers(0, 3, n)]))],
            "level_3": letters[rng.integers(0, 8, n)],
        }
    )[: n - 10]
    emb = rng.normal(size=(n, 8)).astype(np.float32)
    return make_table(ids.tolist(), raw.tolist(), post.tolist()), labels, emb, ids


def test_sid_report_is_invariant_to_row_order():
    t, labels, emb, ids = random_inputs()
    kw = dict(codebook_size=8, k=4, seed=1, max_queries=50)
    rep = sid_report(t, labels, emb, ids, **kw)
    rng = np.random.default_rng(9)
    p, q, r = (rng.permutation(x).tolist() for x in (t.height, labels.height, len(ids)))
    rep2 = sid_report(t[p], labels[q], emb[r], ids[r], **kw)
    assert rep == rep2
    assert rep["labels_n_matched"] == 190 and rep["max_group_size_pre"] >= 50
    assert rep["collision_rate_post"] < rep["collision_rate_pre"]
    for key in ("l1_utilization", "l0_fanout_mean", "l3_v_measure", "nbr_agree_l2", "p99_group_size_post"):
        assert key in rep
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in rep.values())


def test_sid_report_without_optional_inputs_and_edge_cases():
    rep = sid_report(make_table())
    assert rep["collision_rate_pre"] == pytest.approx(4 / 6) and rep["collision_rate_post"] == 0.0
    assert rep["n_levels"] == 3 and rep["sid_length_post"] == 4
    assert not any(k.startswith(("nbr_", "labels_")) or "v_measure" in k for k in rep)
    with pytest.raises(ValueError, match="empty"):
        sid_report(make_table().clear())
    with pytest.raises(ValueError, match="duplicate ad_id"):
        sid_report(make_table(ad_ids=[1, 1, 2, 3, 4, 5]))
    with pytest.raises(ValueError, match="different lengths"):
        sid_report(make_table(raw=[[0, 0, 0]] * 5 + [[0, 0]]))
    with pytest.raises(ValueError, match="together"):
        sid_report(make_table(), embeddings=angle_embeddings())


def test_compare_methods_and_markdown():
    t, labels, emb, ids = random_inputs(n=60)
    reports = {"rq_kmeans": sid_report(t, labels), "unisid": sid_report(make_table(), perfect_labels())}
    df = compare_methods(reports)
    assert df["method"].to_list() == ["rq_kmeans", "unisid"]
    assert df.schema["n_unique_pre"] == pl.Int64 and df.schema["l1_v_measure"] == pl.Float64
    assert df.filter(pl.col("method") == "unisid")["l1_v_measure"].item() == pytest.approx(1.0)
    md = markdown_summary(df)
    lines = md.strip().splitlines()
    assert len(lines) == 4 and lines[0].startswith("| method | n_items | collision_rate_pre")
    assert "| unisid | 6 | 0.6667 |" in md
    with pytest.raises(ValueError, match="not in the frame"):
        markdown_summary(df, ["nope"])


# ------------------------------------------------------------------------------------ plots
def test_plots_write_non_empty_pngs(tmp_path):
    t, labels, _, _ = random_inputs(n=80)
    tables = {"rq": t, "unisid": make_table()}
    reports = {m: sid_report(tb, labels if m == "rq" else perfect_labels()) for m, tb in tables.items()}
    figs = {
        "buckets": plot_bucket_sizes(tables),
        "usage": plot_codebook_usage(tables, codebook_size=8),
        "vm": plot_v_measure(reports),
        "vm_df": plot_v_measure(compare_methods(reports), variant="_code"),
    }
    for name, fig in figs.items():
        path = save_png(fig, tmp_path / "sub" / f"{name}.png")
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000, name
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["buckets.png", "usage.png", "vm.png", "vm_df.png"]
    with pytest.raises(ValueError, match="v_measure"):
        plot_v_measure({"m": sid_report(make_table())})


def _two_world_sequences(seed: int = 0) -> pl.DataFrame:
    """40 items in two worlds (ids 0-19, 20-39); each user clicks 6 items of one world."""
    from unisid_pipeline.data.sequences import build_user_sequences

    rng = np.random.default_rng(seed)
    rows = []
    for u in range(200):
        base = 20 * (u % 2)
        for t, a in enumerate(rng.choice(20, 6, replace=False) + base):
            rows.append({"user_id": u, "ad_id": int(a), "timestamp": t})
    return build_user_sequences(pl.DataFrame(rows))[0]


def _table(level1: np.ndarray) -> pl.DataFrame:
    n = len(level1)
    raw = np.stack([level1, np.arange(n), np.zeros(n, dtype=np.int64)], axis=1)
    return pl.DataFrame({"ad_id": np.arange(n), "codes": raw.tolist(), "raw_codes": raw.tolist()})


def test_transition_proxy_rewards_codes_that_predict_the_next_item_and_ignores_row_order():
    from unisid_pipeline.analysis.sid_metrics import transition_proxy_recall

    seqs = _two_world_sequences()
    ids = np.arange(40)
    by_world = transition_proxy_recall(_table(ids // 20 * 4 + ids % 4), seqs)  # level 1 knows the world
    mixed = transition_proxy_recall(_table(ids % 8), seqs)  # every code spans both worlds
    assert by_world["seq_proxy_n_queries"] == 200
    assert by_world["seq_proxy_r10"] > mixed["seq_proxy_r10"] + 0.1
    shuffled = _table(ids // 20 * 4 + ids % 4).sample(fraction=1.0, shuffle=True, seed=3)
    assert transition_proxy_recall(shuffled, seqs) == by_world
    assert transition_proxy_recall(_table(ids % 8), seqs.drop("test_target")) == {}  # no test split: no figure
