"""Failures of the parts outside the pipeline, through Dagster: MLflow server unreachable, DuckDB file locked
by another (real) process. Each must fail fast, before any work, with an error that says what and what to do."""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from dagster import AssetKey, DagsterInstance, materialize

import assets.unisid
from assets import build_definitions
from assets.ingestion import ingested_tables
from assets.resources import MlflowTracking, WarehouseIOManager
from unisid_pipeline.data.sequences import build_user_sequences
from unisid_pipeline import paths, warehouse
from unisid_pipeline.data.ingest import IngestionConfig, ingest
from unisid_pipeline.data.synthetic import SyntheticWorldConfig
from unisid_pipeline.hierarchy import labels_from_category_path
from unisid_pipeline.llm import TemplateSummarizer, summarize_ads

SMALL = {"synthetic": {"n_ads": 40, "n_users": 20, "n_advertisers": 5}}
UNISID = {"train": {"model": {"backbone": "tiny", "codebook_size": 8, "emb_dim": 8, "max_length": 48},
                    "epochs": 1, "batch_size": 8, "checkpoint_every": 0}}


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def failure_text(result) -> str:
    """Every error message (with causes) in a Dagster result: step failures and resource-init failures alike."""
    texts = []
    for event in result.all_events:
        error = getattr(event.event_specific_data, "error", None)
        if error is not None:
            texts.append(error.to_string())
    return "\n".join(texts)


def write_unisid_inputs(home) -> None:
    """The four tables unisid_model reads (40 synthetic ads, template summaries, category labels, user sequences)."""
    db = paths.warehouse_path(home)
    res = ingest(IngestionConfig(synthetic=SyntheticWorldConfig(**SMALL["synthetic"])))
    ads = res.raw_ads
    warehouse.write_table(db, "raw_ads", ads)
    warehouse.write_table(db, "user_sequences", build_user_sequences(res.ad_interactions)[0])
    warehouse.write_table(db, "ad_summaries", summarize_ads(ads, TemplateSummarizer(), None))
    warehouse.write_table(db, "ad_hierarchy_labels", labels_from_category_path(ads))


@pytest.mark.parametrize("via", ["resource", "env"])
def test_unreachable_mlflow_server_fails_the_launch_before_training(home, monkeypatch, via):
    db = paths.warehouse_path(home)
    write_unisid_inputs(home)
    started = []
    monkeypatch.setattr(assets.unisid, "train_unisid", lambda *a, **k: started.append(1))  # a spy: must stay unused
    uri = f"http://127.0.0.1:{_closed_port()}"
    if via == "env":
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        defs = build_definitions(home=str(home))
    else:
        defs = build_definitions(home=str(home), tracking_uri=uri)
    job = defs.resolve_job_def("full_pipeline").get_subset(asset_selection={AssetKey("unisid_model")})
    t0 = time.monotonic()
    result = job.execute_in_process(run_config={"ops": {"unisid_model": {"config": UNISID}}},
                                    instance=DagsterInstance.ephemeral(), raise_on_error=False)
    assert not result.success
    text = failure_text(result)
    assert f"ConnectionError: MLflow tracking server {uri} is unreachable" in text
    assert "Start it, fix MLFLOW_TRACKING_URI, or unset it" in text
    assert started == []  # no training began
    assert not result.get_step_success_events()
    assert time.monotonic() - t0 < 60
    assert not warehouse.has_table(db, "unisid_sids")


def test_credentials_in_the_tracking_uri_are_never_printed_nor_stored_in_the_event_log(home, monkeypatch):
    """A tracking URI with a password and a token (user:pass@host, ?token=): the launch fails as above, and neither
    secret appears in the error, in any Dagster event of the run, or on stderr."""
    write_unisid_inputs(home)
    uri = f"http://alice:s3cr3t-pw@127.0.0.1:{_closed_port()}/?token=tok-98765"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("UNISID_MLFLOW_UI_URL", "https://bob:ui-pass-4321@mlflow.example")
    defs = build_definitions(home=str(home))
    job = defs.resolve_job_def("full_pipeline").get_subset(asset_selection={AssetKey("unisid_model")})
    result = job.execute_in_process(run_config={"ops": {"unisid_model": {"config": UNISID}}},
                                    instance=DagsterInstance.ephemeral(), raise_on_error=False)
    assert not result.success
    text = failure_text(result)
    assert "is unreachable" in text and "http://***@127.0.0.1" in text and "token=***" in text
    logged = text + "".join(repr(e) for e in result.all_events)
    for secret in ("s3cr3t-pw", "tok-98765", "alice:"):
        assert secret not in logged


HOLDER = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])  # a notebook / CLI / second run holding the warehouse open for writing
con.execute("CREATE TABLE IF NOT EXISTS notes AS SELECT 1 AS x")
print("holding", flush=True)
time.sleep(600)
"""


def test_warehouse_locked_by_another_process_fails_naming_the_holder_then_recovers(home):
    db = paths.warehouse_path(home)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        resources = {"io_manager": WarehouseIOManager(home=str(home), lock_timeout_s=1.0),
                     "mlflow": MlflowTracking(home=str(home))}
        cfg = {"ops": {"ingested_tables": {"config": SMALL}}}
        result = materialize([ingested_tables], resources=resources, run_config=cfg,
                             instance=DagsterInstance.ephemeral(), raise_on_error=False)
        assert not result.success
        text = failure_text(result)
        assert f"WarehouseLockedError: DuckDB file {db} is locked by" in text
        assert f"(PID {holder.pid})" in text  # names the holder
        assert "Stop that process" in text
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        holder.stdout.close()
    # The holder is gone: the same materialization now succeeds, and the holder's committed table survived.
    result = materialize([ingested_tables], resources=resources, run_config=cfg, instance=DagsterInstance.ephemeral())
    assert result.success
    assert warehouse.read_table(db, "raw_ads").height == 40
    assert warehouse.read_table(db, "notes")["x"].to_list() == [1]
