"""Storage faults of the core layer (issue #31): nothing loaded from the project home is unpickled (objects,
training checkpoints), and a home that cannot be written fails with one clear message."""
from __future__ import annotations

import contextlib
import os
import pickle
import shlex

import numpy as np
import polars as pl
import pytest
import torch

from unisid_pipeline import paths, warehouse
from unisid_pipeline.artifacts import TrainedTokenizer


class Planted:
    """A 'malicious' pickle: unpickling it runs a shell command (here: creates a harmless marker file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def planted_pickle(marker) -> bytes:
    data = pickle.dumps(Planted(marker))
    assert not marker.exists()
    return data


@contextlib.contextmanager
def no_pickle(monkeypatch):
    """Inside: any use of pickle (or of torch's pickling save/load) fails the test."""
    from unisid_pipeline import checkpoint

    checkpoint._model_classes(), checkpoint._dataclasses()  # their imports (transformers, jinja2) may pickle

    def refuse(*a, **k):
        pytest.fail("pickle used")

    with monkeypatch.context() as m:
        for name in ("dumps", "dump", "loads", "load"):
            m.setattr(pickle, name, refuse)
        m.setattr(torch, "load", refuse)
        m.setattr(torch, "save", refuse)
        yield


# ------------------------------------------------------------------------------------------- objects
@pytest.mark.parametrize("name", ["rq_kmeans_model.pkl", "rq_kmeans_model.safetensors"])
def test_a_planted_pickle_in_the_object_store_is_refused_never_unpickled(tmp_path, name):
    marker = tmp_path / "pwned"
    target = tmp_path / "objects" / name
    target.parent.mkdir()
    target.write_bytes(planted_pickle(marker))
    with pytest.raises(Exception) as err:
        warehouse.read_object(target)
    assert not marker.exists(), "the planted pickle ran"
    assert type(err.value).__name__ == "UnsafeObjectError", err.value
    msg = str(err.value)
    assert str(target) in msg and "never unpickled" in msg and "re-materialize" in msg


def test_stored_objects_round_trip_without_pickle(tmp_path, monkeypatch):
    from test_rq import KM, clustered

    from unisid_pipeline.models.rq import fit_rq_kmeans

    x = clustered(n=200, d=8)
    model, history = fit_rq_kmeans(KM, x, seed=0, device="cpu")
    from unisid_pipeline.artifacts import state_fingerprint

    weights = state_fingerprint(model.cpu().eval())
    trained = TrainedTokenizer(method="rq_kmeans", model=model.cpu().eval(), fingerprint="f" * 64, weights=weights,
                               registered_name="tok", registered_version="2",
                               history={**history, "np_scalar": np.float64(0.5), "pair": (1, "a")},
                               info={"train_seconds": 1.5, "outputs": {"codes": model.encode(x),
                                                                        "emb": x.astype(np.float32)}})
    recommender = {"method": "rq_kmeans", "results": pl.DataFrame({"seed": [1, 2], "recall@10": [0.5, float("nan")]}),
                   "checkpoints": {1: {"state": {"w": torch.arange(6.0).reshape(2, 3)}, "blob": b"\x00\x01"}},
                   "sid_model_version": "tok/2", "registered_model": None}
    numbers = {"a": 1, "b": 2.5, "c": [1, 2, {"d": None, "e": True}], 3: "int key"}

    with no_pickle(monkeypatch):
        for i, obj in enumerate((trained, recommender, numbers)):
            warehouse.write_object(tmp_path / f"o{i}.safetensors", obj)
        back = [warehouse.read_object(tmp_path / f"o{i}.safetensors") for i in range(3)]

    t = back[0]
    assert isinstance(t, TrainedTokenizer) and type(t.model) is type(model) and not t.model.training
    assert (t.method, t.fingerprint, t.weights, t.version) == ("rq_kmeans", "f" * 64, weights, "tok/2")
    assert np.array_equal(t.model.encode(x), model.encode(x))
    assert t.history["np_scalar"] == 0.5 and isinstance(t.history["np_scalar"], np.float64)
    assert t.history["pair"] == (1, "a") and t.history["level"] == history["level"]
    assert np.array_equal(t.info["outputs"]["codes"], trained.info["outputs"]["codes"])
    assert t.info["outputs"]["emb"].dtype == np.float32
    r = back[1]
    assert r["results"].equals(recommender["results"], null_equal=True)
    assert torch.equal(r["checkpoints"][1]["state"]["w"], recommender["checkpoints"][1]["state"]["w"])
    assert r["checkpoints"][1]["blob"] == b"\x00\x01" and r["registered_model"] is None
    assert back[2] == numbers


def test_an_unsupported_object_fails_at_write_naming_its_type(tmp_path):
    with pytest.raises(TypeError, match="set"):
        warehouse.write_object(tmp_path / "o.safetensors", {"x": {1, 2}})
    assert not (tmp_path / "o.safetensors").exists()


def test_a_unisid_model_round_trips_without_pickle(tmp_path, monkeypatch):
    from test_unisid import labels_of, make_ads, train_cfg

    from unisid_pipeline.unisid import train_unisid

    ads = make_ads(per_leaf=1)
    model, history = train_unisid(train_cfg(max_steps=1, batch_size=4), ads, None, labels_of(ads), seed=0,
                                  device="cpu")
    trained = TrainedTokenizer(method="unisid", model=model.eval(), fingerprint="x", history=history)
    with no_pickle(monkeypatch):
        warehouse.write_object(tmp_path / "unisid_model.safetensors", trained)
        again = warehouse.read_object(tmp_path / "unisid_model.safetensors")
    assert type(again.model) is type(model) and str(again.history) == str(history)  # (NaN losses: != by value)
    assert np.array_equal(again.model.encode_codes(ads), model.encode_codes(ads))


# ------------------------------------------------------------------------------- training checkpoints
def test_unisid_training_checkpoints_load_with_weights_only_and_resume(tmp_path, monkeypatch):
    from test_unisid import labels_of, make_ads, train_cfg

    from unisid_pipeline.unisid import train_unisid
    from unisid_pipeline.unisid.train import CHECKPOINT_NAME

    ads = make_ads(per_leaf=1)
    labels = labels_of(ads)
    cfg = train_cfg(max_steps=3, batch_size=4, checkpoint_every=1)
    ref, _ = train_unisid(cfg, ads, None, labels, seed=1, device="cpu")

    def crash(row):
        if row["step"] == 2:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        train_unisid(cfg, ads, None, labels, seed=1, device="cpu", checkpoint_dir=tmp_path, on_step=crash)
    ck = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)  # no pickled Python objects inside
    assert ck["step"] == 2
    real_load, calls = torch.load, []

    def load(*a, **k):
        calls.append(k.get("weights_only"))
        return real_load(*a, **k)

    monkeypatch.setattr(torch, "load", load)
    res, _ = train_unisid(cfg, ads, None, labels, seed=1, device="cpu", checkpoint_dir=tmp_path)
    assert calls == [True]
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), res.state_dict().values()))


def test_recommender_training_checkpoints_load_with_weights_only(tmp_path, monkeypatch):
    from test_recommender import TINY, chain_sequences, sparse_catalog

    from unisid_pipeline.recommender import RecommenderConfig, train_recommender

    ad_ids, codes = sparse_catalog(12, (3, 5), seed=7)
    seqs = chain_sequences(ad_ids, n_users=12, length=6, seed=0)
    cfg = RecommenderConfig(**{**TINY, "max_history": 3, "batch_size": 16, "epochs": 2, "warmup_steps": 2,
                               "beam_size": 5, "ema_decay": 0.9})
    train_recommender(cfg, (ad_ids, codes), seqs, seed=3, device="cpu", checkpoint_dir=tmp_path)
    [ckpt] = tmp_path.glob("seed3-*.pt")
    assert torch.load(ckpt, weights_only=True)["finished"] is True
    real_load, calls = torch.load, []
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k.get("weights_only")) or real_load(*a, **k))
    train_recommender(cfg, (ad_ids, codes), seqs, seed=3, device="cpu", checkpoint_dir=tmp_path,
                      on_epoch=lambda r: pytest.fail("trained again"))
    assert calls == [True]


def test_a_planted_pickle_as_training_checkpoint_is_refused_never_unpickled(tmp_path):
    from test_unisid import labels_of, make_ads, train_cfg

    from unisid_pipeline.unisid import train_unisid
    from unisid_pipeline.unisid.train import CHECKPOINT_NAME

    marker = tmp_path / "pwned"
    ckdir = tmp_path / "ck"
    ckdir.mkdir()
    torch.save({"step": Planted(marker)}, ckdir / CHECKPOINT_NAME)
    ads = make_ads(per_leaf=1)
    with pytest.raises(ValueError) as err:
        train_unisid(train_cfg(max_steps=2, batch_size=4, checkpoint_every=1), ads, None, labels_of(ads), seed=1,
                     device="cpu", checkpoint_dir=ckdir)
    assert not marker.exists(), "the planted checkpoint ran"
    msg = str(err.value)
    assert str(ckdir / CHECKPOINT_NAME) in msg and "delete it" in msg


# ------------------------------------------------------------------------------ table changes (item 2)
def test_diff_tables_names_added_removed_and_changed_ads_and_their_fields():
    from unisid_pipeline import table_diff

    old = pl.DataFrame({"ad_id": [1, 2, 3, 4], "title": ["a", "b", "c", "d"], "price": [1.0, float("nan"), None, 4.0],
                        "category_path": [["x"], ["x", "y"], None, ["z"]]})
    new = pl.DataFrame({"ad_id": [5, 4, 2, 1], "title": ["e", "d", "B", "a"], "price": [5.0, 4.5, float("nan"), 1.0],
                        "category_path": [["q"], ["z", "w"], ["x", "y"], ["x"]]})
    changes = table_diff.diff_tables(old, new, "ad_id")
    assert changes.schema == {"ad_id": pl.Int64, "change": pl.Utf8, "fields": pl.List(pl.Utf8)}
    assert changes.rows() == [(2, "changed", ["title"]), (3, "removed", []), (4, "changed", ["price", "category_path"]),
                              (5, "added", [])]
    assert table_diff.diff_tables(old, old.reverse(), "ad_id").height == 0  # row order is no change
    # a column that appears: a change of every ad that has a value in it
    more = old.with_columns(brand=pl.Series([None, "b", None, None], dtype=pl.Utf8))
    assert table_diff.diff_tables(old, more, "ad_id").rows() == [(2, "changed", ["brand"])]
    summary = table_diff.summarize(changes)
    assert (summary["added"], summary["removed"], summary["changed"]) == (1, 1, 2)
    assert summary["fields"] == {"title": 1, "price": 1, "category_path": 1}


def test_replacing_a_table_keeps_its_previous_version_and_records_the_changes(tmp_path):
    import duckdb

    from unisid_pipeline import table_diff

    db = tmp_path / "w.duckdb"
    v1 = pl.DataFrame({"ad_id": [1, 2, 3], "title": ["a", "b", "c"]})
    assert table_diff.compare_with_stored(db, "raw_ads", v1, "ad_id") is None  # nothing stored yet
    warehouse.write_table(db, "raw_ads", v1)
    v2 = pl.DataFrame({"ad_id": [1, 2, 4], "title": ["a", "B", "d"]})
    change = table_diff.compare_with_stored(db, "raw_ads", v2, "ad_id")
    assert change.summary["changed"] == 1 and change.summary["added"] == 1 and change.summary["removed"] == 1
    change.replace(v2)  # raw_ads, raw_ads_previous and raw_ads_changes in one transaction
    assert warehouse.read_table(db, "raw_ads").equals(v2)
    assert warehouse.read_table(db, "raw_ads_previous").equals(v1)
    assert warehouse.read_table(db, "raw_ads_changes").rows() == [(2, "changed", ["title"]), (3, "removed", []),
                                                                 (4, "added", [])]
    # the recovery one-liner given to the user works
    assert "raw_ads_previous" in change.recover
    duckdb.connect(str(db)).execute(change.recover_sql).close()
    assert warehouse.read_table(db, "raw_ads").equals(v1)
    # an unchanged re-run records no change and keeps the older generation
    warehouse.write_table(db, "raw_ads", v2)
    same = table_diff.compare_with_stored(db, "raw_ads", v2, "ad_id")
    same.replace(v2)
    assert warehouse.read_table(db, "raw_ads_changes").height == 0
    assert warehouse.read_table(db, "raw_ads_previous").equals(v1)
    # a refused replacement (shrink guard) leaves all three tables as they were
    changes_before = warehouse.read_table(db, "raw_ads_changes")
    tiny = table_diff.compare_with_stored(db, "raw_ads", v2.head(1), "ad_id")
    with pytest.raises(warehouse.TableShrinkError):
        tiny.replace(v2.head(1), guard_shrink=True)
    assert warehouse.read_table(db, "raw_ads").equals(v2)
    assert warehouse.read_table(db, "raw_ads_previous").equals(v1)
    assert warehouse.read_table(db, "raw_ads_changes").equals(changes_before)


# ------------------------------------------------------------------------------- read-only home (item 4)
def read_only(folder, monkeypatch) -> None:
    """chmod 0o555 `folder`; as root (where chmod does not stop writes) os.access is made to say what it would."""
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):  # root: simulate
        real = os.access
        monkeypatch.setattr(paths.os, "access", lambda p, mode, **k: False if (
            os.fspath(p) == os.fspath(folder) and mode & os.W_OK) else real(p, mode, **k))


def test_a_read_only_home_fails_with_one_clear_message(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    read_only(home, monkeypatch)
    try:
        with pytest.raises(PermissionError) as err:
            paths.project_home(home)
        msg = str(err.value)
        assert str(home) in msg and "not writable" in msg
        assert f"chmod u+w {home}" in msg and "UNISID_HOME" in msg
        monkeypatch.setenv("UNISID_HOME", str(home))
        with pytest.raises(PermissionError, match="not writable"):
            paths.project_home()
    finally:
        home.chmod(0o755)


def test_a_home_that_is_a_file_or_under_one_fails_with_one_clear_message(tmp_path):
    afile = tmp_path / "not_a_folder"
    afile.write_text("x")
    for home in (afile, afile / "home"):
        with pytest.raises(NotADirectoryError) as err:
            paths.project_home(home)
        msg = str(err.value)
        assert str(home) in msg and "UNISID_HOME" in msg and "not a folder" in msg


def test_a_stored_tokenizer_whose_weights_changed_after_writing_is_refused_on_load(tmp_path):
    """Each stored tokenizer carries the sha256 of its weights; loading recomputes it, so weights changed in the file
    after it was written (by hand, by another program) are refused rather than silently giving other SIDs."""
    from test_rq import KM, clustered

    from unisid_pipeline.artifacts import state_fingerprint
    from unisid_pipeline.models.rq import fit_rq_kmeans

    model, _ = fit_rq_kmeans(KM, clustered(n=200, d=8), seed=0, device="cpu")
    model = model.cpu().eval()
    good = TrainedTokenizer(method="rq_kmeans", model=model, fingerprint="f", weights=state_fingerprint(model))
    warehouse.write_object(tmp_path / "ok.safetensors", good)
    assert warehouse.read_object(tmp_path / "ok.safetensors").weights == good.weights
    other, _ = fit_rq_kmeans(KM, clustered(n=200, d=8), seed=1, device="cpu")
    swapped = TrainedTokenizer(method="rq_kmeans", model=other.cpu().eval(), fingerprint="f", weights=good.weights)
    warehouse.write_object(tmp_path / "swapped.safetensors", swapped)
    with pytest.raises(warehouse.UnsafeObjectError, match="are not the ones it was stored with"):
        warehouse.read_object(tmp_path / "swapped.safetensors")
