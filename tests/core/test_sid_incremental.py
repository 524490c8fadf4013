"""Incremental SID assignment: old SIDs never change, new ads get unique SIDs from the frozen tokenizer."""
import numpy as np
import polars as pl
import pytest

from unisid_pipeline import warehouse
from unisid_pipeline.models.rq import RQKMeansConfig, fit_rq_kmeans
from unisid_pipeline.sid import LazyRowCost, ReassignmentImpossible, build_sid_table, collision_stats, sid_table_to_array
from unisid_pipeline.sid_incremental import assign_new_sids, new_ad_ids


@pytest.fixture(scope="module")
def catalog():
    """600 clustered items (ids shuffled), a frozen RQ-KMeans with K=16 fitted on the first 400 (SIDs collide)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (12, 8))
    x = (centres[rng.integers(0, 12, 600)] + rng.normal(0, 0.3, (600, 8))).astype(np.float32)
    ids = rng.permutation(np.arange(1000, 1600)).astype(np.int64)
    tok, _ = fit_rq_kmeans(RQKMeansConfig(n_levels=3, codebook_size=16, n_iter=5, batch_size=64), x[:400], seed=0, device="cpu")
    return ids, x, tok


def _combined(existing: pl.DataFrame, new: pl.DataFrame) -> pl.DataFrame:
    return pl.concat([existing.select(new.columns), new])


@pytest.mark.parametrize("resolution", ["suffix", "reassign"])
def test_old_sids_unchanged_and_new_sids_unique(catalog, resolution):
    ids, x, tok = catalog
    codes = tok.encode(x)
    n_old = 400
    existing, built = build_sid_table(ids[:n_old], codes[:n_old], "rq_kmeans", "v1", resolution,
                                      tok.last_level_distances(x[:n_old]))
    assert built["resolution_used"] == resolution
    assert collision_stats(codes)["n_colliding_items"] > 50  # the test exercises collisions with old SIDs
    new_x, new_ids = x[n_old:], ids[n_old:]
    new_codes = tok.encode(new_x)
    cost = LazyRowCost(len(new_ids), 16, lambda r: tok.last_level_distances(new_x[r], codes=new_codes[r]))
    rows, info = assign_new_sids(existing, new_ids, new_codes, "rq_kmeans", "v1", resolution, cost)

    assert info["n_existing"] == n_old and info["n_new"] == 200 and info["n_new_colliding"] > 0
    table = _combined(existing, rows)
    _, final = sid_table_to_array(table)
    assert collision_stats(final)["n_colliding_items"] == 0 and info["post"]["collision_rate"] == 0.0
    # every new ad keeps its tokenizer codes as raw codes; suffix keeps them as the SID prefix,
    # reassign keeps the (L-1)-prefix and only changes the last code of ads that collided
    by_id = dict(zip(new_ids.tolist(), new_codes.tolist()))
    new_raw = np.array([by_id[i] for i in rows["ad_id"].to_list()])
    assert np.array_equal(sid_table_to_array(rows, "raw_codes")[1], new_raw)
    new_final = sid_table_to_array(rows)[1]
    assert np.array_equal(new_final[:, : 3 if resolution == "suffix" else 2], new_raw[:, : 3 if resolution == "suffix" else 2])
    assert rows["ad_id"].is_sorted()

    # a second batch on top of the grown table: the first two batches stay as they were
    more_x = x[:50] + 0.01
    more_ids = np.arange(5000, 5050, dtype=np.int64)
    more_codes = tok.encode(more_x)
    more, _ = assign_new_sids(table, more_ids, more_codes, "rq_kmeans", "v1", resolution,
                              tok.last_level_distances(more_x, codes=more_codes))
    grown = _combined(table, more)
    assert grown.head(table.height).equals(table)
    assert collision_stats(sid_table_to_array(grown)[1])["n_colliding_items"] == 0


def test_suffix_takes_the_next_free_suffix_and_ignores_row_order():
    existing, _ = build_sid_table(np.array([1, 2, 3]), np.array([[0, 1], [0, 1], [2, 2]]), "m", "v", "suffix")
    assert sid_table_to_array(existing)[1].tolist() == [[0, 1, 0], [0, 1, 1], [2, 2, 0]]
    ids = np.array([9, 7, 8])
    raw = np.array([[0, 1], [2, 2], [5, 5]])
    rows, info = assign_new_sids(existing, ids, raw, "m", "v", "suffix")
    assert rows["ad_id"].to_list() == [7, 8, 9]
    assert sid_table_to_array(rows)[1].tolist() == [[2, 2, 1], [5, 5, 0], [0, 1, 2]]
    assert info["n_new_colliding"] == 2
    shuffled, _ = assign_new_sids(existing, ids[::-1], raw[::-1], "m", "v", "suffix")
    assert shuffled.equals(rows)


def test_none_keeps_raw_codes_and_counts_collisions():
    existing, _ = build_sid_table(np.array([1]), np.array([[3, 4]]), "m", "v", "none")
    rows, info = assign_new_sids(existing, np.array([2, 3]), np.array([[3, 4], [3, 4]]), "m", "v", "none")
    assert sid_table_to_array(rows)[1].tolist() == [[3, 4], [3, 4]] and info["n_new_colliding"] == 2


def test_frozen_tokenizer_from_storage_assigns_the_same_sids(catalog, tmp_path):
    ids, x, tok = catalog
    codes = tok.encode(x[:300])
    existing, _ = build_sid_table(ids[:300], codes, "rq_kmeans", "v1", "suffix")
    warehouse.write_object(tmp_path / "tok.pkl", tok.cpu().eval())
    stored = warehouse.read_object(tmp_path / "tok.pkl")
    direct, _ = assign_new_sids(existing, ids[300:], tok.encode(x[300:]), "rq_kmeans", "v1", "suffix")
    loaded, _ = assign_new_sids(existing, ids[300:], stored.encode(x[300:]), "rq_kmeans", "v1", "suffix")
    assert loaded.equals(direct)


def test_errors_name_the_problem_and_the_fix():
    existing, _ = build_sid_table(np.array([1, 2]), np.array([[0, 0], [0, 1]]), "m", "v", "reassign",
                                  np.zeros((2, 2)))
    with pytest.raises(ValueError, match="already have a SID"):
        assign_new_sids(existing, np.array([2, 3]), np.array([[1, 1], [1, 0]]), "m", "v", "reassign", np.zeros((2, 2)))
    with pytest.raises(ValueError, match="tokenizer version"):
        assign_new_sids(existing, np.array([3]), np.array([[1, 1]]), "m", "v2", "reassign", np.zeros((1, 2)))
    with pytest.raises(ValueError, match="length 3"):
        assign_new_sids(existing, np.array([3]), np.array([[1, 1]]), "m", "v", "suffix")
    with pytest.raises(ValueError, match="needs last_level_cost"):
        assign_new_sids(existing, np.array([3]), np.array([[1, 1]]), "m", "v", "reassign")
    # prefix [0] already holds both codes of K=2: no free last-level code is left
    with pytest.raises(ReassignmentImpossible, match="resolution='suffix'"):
        assign_new_sids(existing, np.array([3]), np.array([[0, 1]]), "m", "v", "reassign", np.zeros((1, 2)))
    assert new_ad_ids(existing, np.array([1, 5, 2, 7])).tolist() == [False, True, False, True]


def test_no_new_ads_gives_an_empty_table_of_the_contract():
    existing, _ = build_sid_table(np.array([1, 2]), np.array([[0, 0], [0, 1]]), "m", "v", "suffix")
    rows, info = assign_new_sids(existing, np.zeros(0, dtype=np.int64), np.zeros((0, 2), dtype=np.int64), "m", "v", "suffix")
    assert rows.height == 0 and rows.schema == existing.schema and info["n_new"] == 0


def test_a_table_of_other_weights_under_the_same_version_is_never_extended():
    """After the MLflow store is lost, a retrained tokenizer registers as version 1 again: its new SIDs must not be
    appended to a table that the old version 1 built. The weights' sha256 in every row tells them apart."""
    existing, _ = build_sid_table(np.array([1, 2]), np.array([[0, 0], [0, 1]]), "m", "m/1", "suffix",
                                  weights_sha256="a" * 64)
    assert existing["weights_sha256"].to_list() == ["a" * 64] * 2
    rows, _ = assign_new_sids(existing, np.array([3]), np.array([[1, 1]]), "m", "m/1", "suffix", weights_sha256="a" * 64)
    assert rows["weights_sha256"].to_list() == ["a" * 64]
    with pytest.raises(ValueError, match=r"built by tokenizer weights \['aaaaaaaaaaaa'\].*has weights bbbbbbbbbbbb.*"
                                         r"same version name \(was the MLflow store lost or replaced"):
        assign_new_sids(existing, np.array([3]), np.array([[1, 1]]), "m", "m/1", "suffix", weights_sha256="b" * 64)
    with pytest.raises(ValueError, match="records no weights fingerprint"):
        assign_new_sids(existing.drop("weights_sha256"), np.array([3]), np.array([[1, 1]]), "m", "m/1", "suffix",
                        weights_sha256="a" * 64)
