"""Storage guards of the warehouse IO managers (issue #31), through Dagster: nothing in the project home is
unpickled, a materialization may not silently shrink or empty a table, re-ingesting records what changed."""
from __future__ import annotations

import os
import pickle
import shlex

import polars as pl
import pytest
import torch
from dagster import AssetKey, DagsterInstance, build_input_context, build_output_context, materialize

from assets.ingestion import ingested_tables, user_sequences
from assets.resources import MlflowTracking, StepIOManager, WarehouseIOManager
from unisid_pipeline import paths, warehouse
from unisid_pipeline.artifacts import TrainedTokenizer

SMALL = {"synthetic": {"n_ads": 40, "n_users": 20, "n_advertisers": 5}}


class Planted:
    """A 'malicious' pickle: unpickling it runs a shell command (here: creates a harmless marker file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def plant(path, marker) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(Planted(marker)))


def resources(home, **io):
    return {"io_manager": WarehouseIOManager(home=str(home), **io), "mlflow": MlflowTracking(home=str(home))}


def failure_text(result) -> str:
    texts = []
    for event in result.all_events:
        error = getattr(event.event_specific_data, "error", None)
        if error is not None:
            texts.append(error.to_string())
    return "\n".join(texts)


# ------------------------------------------------------------------------------------ no pickle (item 3)
def test_a_planted_pickle_at_a_tables_object_path_is_never_loaded(home, tmp_path):
    assets = [ingested_tables, user_sequences]
    cfg = {"ops": {"ingested_tables": {"config": SMALL}}}
    first = materialize(assets, resources=resources(home), run_config=cfg, instance=DagsterInstance.ephemeral())
    assert first.success
    db = paths.warehouse_path(home)
    expected = warehouse.read_table(db, "user_sequences")
    marker = tmp_path / "pwned"
    for suffix in (".pkl", ".safetensors"):  # the old object path and the new one
        plant(home / "objects" / f"ad_interactions{suffix}", marker)
    again = materialize(assets, selection=["user_sequences"], resources=resources(home),
                        instance=DagsterInstance.ephemeral(), raise_on_error=False)
    assert not marker.exists(), "a planted pickle ran while loading a table"
    assert again.success, failure_text(again)
    assert warehouse.read_table(db, "user_sequences").equals(expected)  # built from the DuckDB table


def _trained_tokenizer() -> TrainedTokenizer:
    from unisid_pipeline.models.rq import RQKMeansConfig, fit_rq_kmeans

    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0)).numpy()
    model, history = fit_rq_kmeans(RQKMeansConfig(n_levels=2, codebook_size=4, n_iter=5, init_sample_size=0), x,
                                   seed=0, device="cpu")
    return TrainedTokenizer(method="rq_kmeans", model=model.eval(), fingerprint="abc", history=history,
                            info={"outputs": {"codes": model.encode(x)}})


def test_a_planted_pickle_at_a_model_objects_path_is_never_loaded(home, tmp_path):
    io = WarehouseIOManager(home=str(home))
    key = AssetKey("rq_kmeans_model")
    trained = _trained_tokenizer()
    io.handle_output(build_output_context(asset_key=key), trained)
    marker = tmp_path / "pwned"
    plant(home / "objects" / "rq_kmeans_model.pkl", marker)  # a legacy / planted pickle beside the stored object
    loaded = io.load_input(build_input_context(asset_key=key))
    assert not marker.exists(), "a planted pickle ran while loading a model"
    assert isinstance(loaded, TrainedTokenizer)
    assert (loaded.info["outputs"]["codes"] == trained.info["outputs"]["codes"]).all()
    # with only a pickle there, loading refuses it (unread) and says what to do
    for p in (home / "objects").iterdir():
        if p.suffix != ".pkl":
            p.unlink()
    with pytest.raises(warehouse.UnsafeObjectError, match="never loaded.*Re-materialize"):
        io.load_input(build_input_context(asset_key=key))
    assert not marker.exists()
    # re-materializing stores it again without pickle and removes the old .pkl
    io.handle_output(build_output_context(asset_key=key), trained)
    assert sorted(p.name for p in (home / "objects").iterdir()) == ["rq_kmeans_model.safetensors"]


def test_step_outputs_are_stored_without_pickle_and_a_planted_one_is_refused(home, tmp_path):
    io = StepIOManager(home=str(home))
    out = build_output_context(step_key="recommender_x_seed[seed1]", name="result", run_id="r1")
    value = {"row": {"seed": 1, "recall@10": 0.5}, "checkpoint": {"w": torch.ones(2)}, "train_loss": [1.0, 0.5]}
    io.handle_output(out, value)
    [path] = (home / "steps" / "r1").iterdir()
    assert not path.read_bytes().startswith(b"\x80")  # not a pickle
    inp = build_input_context(upstream_output=out)
    back = io.load_input(inp)
    assert back["row"] == value["row"] and torch.equal(back["checkpoint"]["w"], value["checkpoint"]["w"])
    marker = tmp_path / "pwned"
    plant(path, marker)
    with pytest.raises(warehouse.UnsafeObjectError):
        io.load_input(inp)
    assert not marker.exists()


# ------------------------------------------------------------------------------------ shrink guard (item 1)
ALLOW_YAML = "resources:\n  io_manager:\n    config:\n      allow_shrink: true"


def test_a_materialization_that_would_shrink_a_table_to_under_half_fails_and_keeps_it(home):
    db = paths.warehouse_path(home)
    cfg = {"ops": {"ingested_tables": {"config": SMALL}}}
    assert materialize([ingested_tables], resources=resources(home), run_config=cfg,
                       instance=DagsterInstance.ephemeral()).success
    before = warehouse.read_table(db, "raw_ads")
    small = {"ops": {"ingested_tables": {"config": {"synthetic": {"n_ads": 12, "n_users": 20, "n_advertisers": 5}}}}}
    result = materialize([ingested_tables], resources=resources(home), run_config=small,
                         instance=DagsterInstance.ephemeral(), raise_on_error=False)
    assert not result.success
    text = failure_text(result)
    assert "table 'raw_ads'" in text and "40 rows" in text and "12 rows" in text, text
    assert ALLOW_YAML in text  # the fix, as YAML to paste into the run config
    assert warehouse.read_table(db, "raw_ads").equals(before)  # the old table is kept
    # run config can allow it for one run
    allowed = {**small, "resources": {"io_manager": {"config": {"allow_shrink": True}}}}
    assert materialize([ingested_tables], resources=resources(home), run_config=allowed,
                       instance=DagsterInstance.ephemeral()).success
    assert warehouse.read_table(db, "raw_ads").height == 12


def test_rejected_and_report_tables_may_shrink_or_empty(home):
    io = WarehouseIOManager(home=str(home))
    for name in ("rejected_ads", "sid_collision_report"):
        io.handle_output(build_output_context(asset_key=AssetKey(name)), pl.DataFrame({"x": list(range(10))}))
        io.handle_output(build_output_context(asset_key=AssetKey(name)), pl.DataFrame({"x": []}, schema={"x": pl.Int64}))
        assert warehouse.read_table(paths.warehouse_path(home), name).height == 0
    # a table that was empty may be replaced by anything; a guarded one may shrink to half
    io.handle_output(build_output_context(asset_key=AssetKey("t")), pl.DataFrame({"x": []}, schema={"x": pl.Int64}))
    io.handle_output(build_output_context(asset_key=AssetKey("t")), pl.DataFrame({"x": list(range(10))}))
    io.handle_output(build_output_context(asset_key=AssetKey("t")), pl.DataFrame({"x": list(range(5))}))
    with pytest.raises(Exception, match="table 't'.*5 rows.*0 rows"):
        io.handle_output(build_output_context(asset_key=AssetKey("t")), pl.DataFrame({"x": []}, schema={"x": pl.Int64}))
    assert warehouse.read_table(paths.warehouse_path(home), "t").height == 5


def _bad_ads_config(tmp_path) -> dict:
    ads = tmp_path / "ads.csv"
    ads.write_text("ad_id,title\nabc,First\n2,\n2.5,Third\n")  # every row bad: id not an integer, empty title
    clicks = tmp_path / "clicks.jsonl"
    clicks.write_text('{"user_id": 1, "ad_id": 1, "timestamp": 1}\n')
    return {"ops": {"ingested_tables": {"config": {"source": "files", "ads_path": str(ads),
                                                   "interactions_path": str(clicks)}}}}


def test_an_all_rejected_source_fails_ingestion_keeps_raw_ads_and_stores_the_rejects(home, tmp_path):
    db = paths.warehouse_path(home)
    assert materialize([ingested_tables], resources=resources(home), run_config={"ops": {"ingested_tables": {
        "config": SMALL}}}, instance=DagsterInstance.ephemeral()).success
    before = warehouse.read_table(db, "raw_ads")
    result = materialize([ingested_tables], resources=resources(home), run_config=_bad_ads_config(tmp_path),
                         instance=DagsterInstance.ephemeral(), raise_on_error=False)
    assert not result.success
    text = failure_text(result)
    assert "no clean ads" in text and "3 rejected" in text, text
    assert "line 2" in text and "ad_id" in text  # the first reasons, with their lines
    assert "rejected_ads" in text and str(db) in text  # where the rejects are
    assert warehouse.read_table(db, "raw_ads").equals(before)  # the previous good table is untouched
    rejected = warehouse.read_table(db, "rejected_ads")  # the rejects are not lost
    assert rejected["line"].to_list() == [2, 3, 4]


# ------------------------------------------------------------------------ changed ads on re-run (item 2)
def _files_config(tmp_path, name: str, ads_csv: str) -> dict:
    ads = tmp_path / f"{name}.csv"
    ads.write_text(ads_csv)
    clicks = tmp_path / f"{name}_clicks.jsonl"
    clicks.write_text('{"user_id": 1, "ad_id": 1, "timestamp": 1}\n{"user_id": 1, "ad_id": 2, "timestamp": 2}\n')
    return {"ops": {"ingested_tables": {"config": {"source": "files", "ads_path": str(ads),
                                                   "interactions_path": str(clicks)}}}}


def test_reingesting_changed_ads_records_the_changes_and_keeps_the_previous_version(home, tmp_path):
    import duckdb

    db = paths.warehouse_path(home)
    v1 = _files_config(tmp_path, "v1", "ad_id,title,price\n1,Shoes,10\n2,Hat,5\n3,Scarf,7\n")
    assert materialize([ingested_tables], resources=resources(home), run_config=v1,
                       instance=DagsterInstance.ephemeral()).success
    first = warehouse.read_table(db, "raw_ads")
    v2 = _files_config(tmp_path, "v2", "ad_id,title,price\n1,Shoes,10\n2,Red hat,6\n4,Gloves,3\n")
    result = materialize([ingested_tables], resources=resources(home), run_config=v2,
                         instance=DagsterInstance.ephemeral())
    assert result.success
    [mat] = [m for m in result.asset_materializations_for_node("ingested_tables") if m.asset_key == AssetKey("raw_ads")]
    meta = {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
    assert (meta["ads_added"], meta["ads_removed"], meta["ads_changed"]) == (1, 1, 1)
    assert "| 2 | changed | title, price |" in meta["changes_sample"]
    assert "raw_ads_previous" in meta["previous_version"] and str(db) in meta["previous_version"]
    changes = warehouse.read_table(db, "raw_ads_changes")
    assert changes.rows() == [(2, "changed", ["title", "price"]), (3, "removed", []), (4, "added", [])]
    assert warehouse.read_table(db, "raw_ads_previous").equals(first)
    # the documented recovery gives the previous version back
    sql = meta["previous_version"].split("duckdb ", 1)[1]
    assert "CREATE OR REPLACE TABLE raw_ads AS SELECT * FROM raw_ads_previous" in sql
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE OR REPLACE TABLE raw_ads AS SELECT * FROM raw_ads_previous")
    assert warehouse.read_table(db, "raw_ads").equals(first)


# ------------------------------------------------------------------------------- read-only home (item 4)
def test_a_read_only_home_fails_the_run_with_one_clear_message(home, monkeypatch):
    from test_storage_faults import read_only

    read_only(home, monkeypatch)
    try:
        result = materialize([ingested_tables], resources=resources(home), run_config={"ops": {"ingested_tables": {
            "config": SMALL}}}, instance=DagsterInstance.ephemeral(), raise_on_error=False)
        assert not result.success
        text = failure_text(result)
        assert f"project home {home} is not writable" in text and "UNISID_HOME" in text, text
        assert "sqlite" not in text.lower() and "duckdb.duckdb" not in text.lower()  # no bare store error
    finally:
        home.chmod(0o755)


RAW_ADS_KILL_CHILD = """
import json, os, signal, sys
from dagster import DagsterInstance, materialize
from assets.ingestion import ingested_tables
from assets.resources import MlflowTracking, WarehouseIOManager
from unisid_pipeline import warehouse

real_open = warehouse.open_connection


class DiesAfterReplacingRawAds:  # SIGKILL right after the COMMIT of the transaction that replaced raw_ads
    def __init__(self, con):
        self._con, self._replaced = con, False

    def __getattr__(self, name):
        return getattr(self._con, name)

    def execute(self, sql, *args, **kwargs):
        out = self._con.execute(sql, *args, **kwargs)
        self._replaced |= 'TABLE "raw_ads" AS' in sql
        if self._replaced and sql.strip().upper() == "COMMIT":
            print("KILLED AFTER THE RAW_ADS COMMIT", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return out


warehouse.open_connection = lambda *a, **k: DiesAfterReplacingRawAds(real_open(*a, **k))
home, cfg = sys.argv[1], json.loads(sys.argv[2])
materialize([ingested_tables], run_config=cfg, instance=DagsterInstance.ephemeral(),
            resources={"io_manager": WarehouseIOManager(home=home), "mlflow": MlflowTracking(home=home)})
print("NOT KILLED", flush=True)
"""


def test_kill9_right_after_raw_ads_is_replaced_keeps_the_previous_version(home, tmp_path):
    """kill -9 at the moment raw_ads is committed by a re-ingestion with changed ads: the version it replaced is
    still in the warehouse (raw_ads_previous, written in the same DuckDB transaction). Was: raw_ads replaced first,
    raw_ads_previous written by a second transaction afterwards, so a kill in between lost the previous version."""
    import json
    import signal
    import subprocess
    import sys

    db = paths.warehouse_path(home)
    v1 = _files_config(tmp_path, "v1", "ad_id,title,price\n1,Shoes,10\n2,Hat,5\n3,Scarf,7\n")
    assert materialize([ingested_tables], resources=resources(home), run_config=v1,
                       instance=DagsterInstance.ephemeral()).success
    first = warehouse.read_table(db, "raw_ads")
    v2 = _files_config(tmp_path, "v2", "ad_id,title,price\n1,Shoes,10\n2,Red hat,6\n4,Gloves,3\n")
    repo = paths.__file__.rsplit("/unisid_pipeline/", 1)[0]
    child = subprocess.run([sys.executable, "-c", RAW_ADS_KILL_CHILD, str(home), json.dumps(v2)], cwd=repo,
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]
    assert "KILLED AFTER THE RAW_ADS COMMIT" in child.stdout
    assert warehouse.read_table(db, "raw_ads")["title"].to_list() == ["Shoes", "Red hat", "Gloves"]  # v2 committed
    assert warehouse.has_table(db, "raw_ads_previous"), "the version raw_ads replaced is lost"
    assert warehouse.read_table(db, "raw_ads_previous").equals(first)
    assert warehouse.read_table(db, "raw_ads_changes").rows() == [(2, "changed", ["title", "price"]),
                                                                 (3, "removed", []), (4, "added", [])]
