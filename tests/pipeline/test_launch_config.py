"""Impossible run configs fail the launch through Dagster, before any asset runs, naming the config path and
field; a batch larger than the data fails the training asset at its start, naming the field and the data size."""
import pytest
import torch
from dagster import AssetKey, DagsterInstance
from mlflow.tracking import MlflowClient
from test_outside_failures import UNISID, failure_text, write_unisid_inputs

from assets import build_definitions
from unisid_pipeline import paths, warehouse

CASES = [
    ("unisid_model", {"train": {"model": {"n_levels": 0}}},
     "ops.unisid_model.config.train.model: n_levels must be >= 1"),
    ("unisid_model", {"train": {"model": {"codebook_size": 1}}},
     "ops.unisid_model.config.train.model: codebook_size must be >= 2"),
    ("rq_kmeans_model", {"model": {"codebook_size": 1}},
     "ops.rq_kmeans_model.config.model: codebook_size must be an int >= 2, got 1"),
    ("rq_vae_model", {"model": {"n_levels": 0}}, "ops.rq_vae_model.config.model: n_levels must be an int >= 1, got 0"),
    ("rq_vae_model", {"device": "tpu"},
     "ops.rq_vae_model.config.device: unknown device 'tpu': use 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'"),
    ("recommender_unisid", {"model": {"device": "gpu0"}}, "ops.recommender_unisid.config.model.device: unknown device"),
    ("ingested_tables", {"synthetic": {"n_ads": 0}},
     "ops.ingested_tables.config.synthetic: SyntheticWorldConfig.n_ads must be >= 1, got 0"),
    ("recommender_rq_kmeans", {"seeds": []}, "ops.recommender_rq_kmeans.config: 1 validation error for RecommenderRun\n"
     "seeds\n  Value error, seeds is empty: give at least one seed, e.g. seeds: [0]"),
    ("recommender_unisid", {"seeds": [1, 1]}, "ops.recommender_unisid.config: 1 validation error for RecommenderRun\n"
     "seeds\n  Value error, seeds must be distinct non-negative ints, got [1, 1]"),
    ("unisid_model", {"train": {"lr_heads": float("nan")}},
     "ops.unisid_model.config.train.lr_heads: nan is not a finite number; give a finite value (default 0.001)"),
    ("rq_vae_model", {"model": {"beta": float("inf")}},
     "ops.rq_vae_model.config.model.beta: inf is not a finite number"),
    ("ad_summaries", {"chunk_size": 1, "summarizer": {"backend": "template", "device": "cuda:9"}},
     "ops.ad_summaries.config.summarizer.device: device 'cuda:9' requested but"),
]


@pytest.mark.parametrize("op,config,message", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_impossible_run_config_fails_the_launch_naming_the_field(home, op, config, message):
    if "cuda" in message and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    job = build_definitions(home=str(home)).resolve_job_def("full_pipeline")
    result = job.execute_in_process(run_config={"ops": {op: {"config": config}}},
                                    instance=DagsterInstance.ephemeral(), raise_on_error=False)
    assert not result.success
    assert f"ValueError: invalid run config {message}" in failure_text(result)
    assert not result.get_step_success_events()  # failed at launch: not even ingestion ran
    assert warehouse.list_tables(paths.warehouse_path(home)) == []
    assert MlflowClient(tracking_uri=paths.mlflow_uri(home)).search_experiments(filter_string="name = 'unisid_pipeline'") == []


def test_a_compute_device_that_is_not_there_fails_the_launch(home):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    job = build_definitions(home=str(home)).resolve_job_def("full_pipeline")
    result = job.execute_in_process(run_config={"resources": {"compute": {"config": {"device": "cuda"}}}},
                                    instance=DagsterInstance.ephemeral(), raise_on_error=False)
    assert not result.success and not result.get_step_success_events()
    assert ("ValueError: invalid resource config compute.device: device 'cuda' requested but CUDA is not available"
            in failure_text(result))


def test_batch_larger_than_the_data_fails_the_training_asset_naming_field_and_size(home):
    write_unisid_inputs(home)  # 40 ads
    job = build_definitions(home=str(home)).resolve_job_def("full_pipeline").get_subset(
        asset_selection={AssetKey("unisid_model")})
    cfg = {"train": {**UNISID["train"], "batch_size": 64}}
    result = job.execute_in_process(run_config={"ops": {"unisid_model": {"config": cfg}}},
                                    instance=DagsterInstance.ephemeral(), raise_on_error=False)
    assert not result.success
    assert ("UniSIDTrainConfig.batch_size=64 is larger than the data (40 ads): set batch_size to at most 40"
            in failure_text(result))
