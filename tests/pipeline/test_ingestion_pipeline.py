import polars as pl
from dagster import DagsterInstance
from mlflow.tracking import MlflowClient

from assets import build_definitions
from unisid_pipeline import paths, warehouse

SMALL = {"ops": {"ingested_tables": {"config": {"synthetic": {"n_ads": 120, "n_users": 80, "n_advertisers": 10}}}}}


def test_ingestion_job_writes_tables_checks_and_mlflow_runs(home):
    defs = build_definitions(home=str(home))
    job = defs.resolve_job_def("ingestion_job")
    result = job.execute_in_process(run_config=SMALL, instance=DagsterInstance.ephemeral())
    assert result.success
    db = paths.warehouse_path(home)
    assert {"raw_ads", "rejected_ads", "ad_interactions", "rejected_interactions", "user_sequences"} <= set(warehouse.list_tables(db))
    ads = warehouse.read_table(db, "raw_ads")
    assert ads.height == 120 and ads["ad_id"].is_unique().all()
    seqs = warehouse.read_table(db, "user_sequences")
    assert seqs.height == 80 and seqs.schema["items"] == pl.List(pl.Int64)
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {"raw_ads_valid": True, "ad_interactions_valid": True, "rejected_ads_share": True,
                      "user_sequences_valid": True}

    client = MlflowClient(tracking_uri=paths.mlflow_uri(home))
    exp = client.get_experiment_by_name("unisid_pipeline")
    runs = client.search_runs([exp.experiment_id])
    by_asset = {r.data.tags["dagster.asset_key"]: r for r in runs}
    assert set(by_asset) == {"ad_interactions,raw_ads,rejected_ads,rejected_interactions", "user_sequences"}
    ing = by_asset["ad_interactions,raw_ads,rejected_ads,rejected_interactions"]
    assert ing.info.status == "FINISHED"
    assert ing.data.tags["dagster.run_id"] == result.run_id
    # what same-seed reproducibility depends on (BENCHMARKS.md, Determinism) is on every run
    import torch

    assert ing.data.tags["unisid.torch"] == torch.__version__
    assert ing.data.tags["unisid.cpu_capability"] == torch.backends.cpu.get_cpu_capability()  # e.g. AVX512
    assert ing.data.params["synthetic.n_ads"] == "120"
    assert ing.data.metrics["ads_clean"] == 120
    # metadata links the materialization to its MLflow run
    mats = result.asset_materializations_for_node("ingested_tables")
    assert {m.metadata["mlflow_run_id"].value for m in mats} == {ing.info.run_id}


def test_rematerializing_is_idempotent(home):
    defs = build_definitions(home=str(home))
    job = defs.resolve_job_def("ingestion_job")
    db = paths.warehouse_path(home)
    assert job.execute_in_process(run_config=SMALL, instance=DagsterInstance.ephemeral()).success
    first = warehouse.read_table(db, "raw_ads")
    assert job.execute_in_process(run_config=SMALL, instance=DagsterInstance.ephemeral()).success
    assert warehouse.read_table(db, "raw_ads").equals(first)


def test_bad_file_keeps_good_rows_and_lists_rejected(home, tmp_path):
    ads = tmp_path / "ads.csv"
    ads.write_text("ad_id,title\n1,Good\n2,\n3,Also good\n3,dup\n")
    clicks = tmp_path / "clicks.jsonl"
    clicks.write_text('{"user_id": 1, "ad_id": 1, "timestamp": 1}\n{"user_id": 1, "ad_id": 3, "timestamp": 2}\n'
                      '{"user_id": 1, "ad_id": 1, "timestamp": 3}\n{"user_id": 1, "ad_id": 2, "timestamp": 4}\n')
    defs = build_definitions(home=str(home))
    cfg = {"ops": {"ingested_tables": {"config": {"source": "files", "ads_path": str(ads), "interactions_path": str(clicks)}}}}
    result = defs.resolve_job_def("ingestion_job").execute_in_process(run_config=cfg, instance=DagsterInstance.ephemeral())
    assert result.success
    db = paths.warehouse_path(home)
    assert warehouse.read_table(db, "raw_ads")["ad_id"].to_list() == [1, 3]
    rej = warehouse.read_table(db, "rejected_ads")
    assert rej["line"].to_list() == [3, 5]
    assert warehouse.read_table(db, "rejected_interactions")["line"].to_list() == [4]
