"""Hierarchy labels: category paths, integer encoding, and derived (clustered) hierarchies."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import adjusted_rand_score

from unisid_pipeline.data.schema import AD_COLUMNS
from unisid_pipeline.hierarchy import derive_hierarchy, encode_level_labels, labels_from_category_path


def planted(seed: int = 0, per_leaf: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings with a planted 2 x 2 x 2 hierarchy: (n, 16) vectors and (n, 3) true ids."""
    rng = np.random.default_rng(seed)
    rows, truth = [], []
    c1 = rng.normal(size=(2, 16)) * 10
    for a in range(2):
        c2 = c1[a] + rng.normal(size=(2, 16)) * 3
        for b in range(2):
            c3 = c2[b] + rng.normal(size=(2, 16)) * 1
            for c in range(2):
                rows.append(c3[c] + rng.normal(size=(per_leaf, 16)) * 0.1)
                truth += [(a, 2 * a + b, 4 * a + 2 * b + c)] * per_leaf
    return np.concatenate(rows).astype(np.float32), np.array(truth)


@pytest.mark.parametrize("method", ["recursive_kmeans", "agglomerative"])
def test_derive_is_deterministic_nested_and_recovers_planted_tree(method):
    x, truth = planted()
    ids = np.arange(100, 100 + len(x))
    kw = dict(branching=(2, 2, 2), seed=3, method=method)
    a, info = derive_hierarchy(x, ids, **kw)
    b, _ = derive_hierarchy(x, ids, **kw)
    assert a.equals(b)
    assert a["ad_id"].to_list() == ids.tolist()
    # nested: each finer label has exactly one parent at the coarser level
    for fine, coarse in (("level_2", "level_1"), ("level_3", "level_2")):
        parents = a.group_by(fine).agg(pl.col(coarse).n_unique().alias("k"))
        assert parents["k"].max() == 1
    # the clustering is real: it recovers the planted hierarchy at every level
    for d in range(3):
        assert adjusted_rand_score(truth[:, d], a[f"level_{d + 1}"].to_list()) == pytest.approx(1.0)
    assert info["method"] == method and info["n_clusters_per_level"] == [2, 4, 8]


def test_recursive_labels_are_paths_and_small_clusters_do_not_fail():
    x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]], dtype=np.float32)
    labels, info = derive_hierarchy(x, [1, 2, 3], branching=(2, 8, 8), seed=0)
    for row in labels.iter_rows(named=True):
        assert row["level_2"].startswith(row["level_1"] + "/")
        assert row["level_3"].startswith(row["level_2"] + "/")
    assert labels["level_1"][0] == labels["level_1"][1] != labels["level_1"][2]
    assert info["n_items"] == 3


def test_derive_rejects_bad_input():
    with pytest.raises(ValueError, match="ad_ids"):
        derive_hierarchy(np.zeros((3, 2)), [1, 2])
    with pytest.raises(ValueError, match="method"):
        derive_hierarchy(np.ones((3, 2)), [1, 2, 3], method="spectral")


def test_category_labels_and_encoding():
    ads = pl.DataFrame(
        {"ad_id": [7, 8, 9, 10], "title": ["a", "b", "c", "d"],
         "category_path": ["B > X > p", "A > X > q", None, "A > X"]},
        schema={k: AD_COLUMNS[k] for k in ("ad_id", "title", "category_path")},
    )
    labels = labels_from_category_path(ads)
    assert labels["level_2"].to_list() == ["B > X", "A > X", None, "A > X"]
    assert labels["level_3"].to_list()[3] == "A > X"  # short path repeats its last prefix
    enc = encode_level_labels(labels)
    assert enc.dtype == np.int64
    # level_1 vocab sorted: A=0, B=1; "B > X" and "A > X" stay different at level 2
    assert enc.tolist() == [[1, 1, 2], [0, 0, 1], [-1, -1, -1], [0, 0, 0]]
