"""unisid_model with launcher='pipes_subprocess': training runs in an external torchrun process through
Dagster Pipes, reports back, and the asset continues as in-process (same SIDs for the same seed)."""
import numpy as np
import polars as pl
import pytest
from dagster import AssetKey, DagsterInstance
from mlflow.tracking import MlflowClient

from assets import build_definitions
from unisid_pipeline import paths, warehouse
from unisid_pipeline.data.sequences import build_user_sequences
from unisid_pipeline.data.synthetic import SyntheticWorldConfig, generate_world
from unisid_pipeline.hierarchy import labels_from_category_path

TRAIN = {"model": {"backbone": "tiny", "codebook_size": 16, "emb_dim": 16, "max_length": 48},
         "max_steps": 4, "batch_size": 16, "rec_tiny_width": 32, "checkpoint_every": 0, "code_stats_sample": 16}


def _seed_warehouse(home) -> None:
    """The four upstream tables unisid_model reads, written straight into the warehouse."""
    world = generate_world(SyntheticWorldConfig(n_ads=40, n_users=10, n_advertisers=5, image_dim=4, seed=1))
    ads = world.ads
    db = paths.warehouse_path(home)
    warehouse.write_table(db, "raw_ads", ads)
    warehouse.write_table(db, "user_sequences", build_user_sequences(world.interactions)[0])
    warehouse.write_table(db, "ad_hierarchy_labels", labels_from_category_path(ads))
    warehouse.write_table(db, "ad_summaries", ads.select(
        "ad_id", summary=pl.format("An ad for {} shoppers: {}", pl.col("industry"), pl.col("title")),
        backend=pl.lit("template")))


def _materialize(home, launcher: str, register: bool, nproc: int = 1, **train):
    defs = build_definitions(home=str(home))
    job = defs.resolve_implicit_global_asset_job_def()
    config = {"train": {**TRAIN, **train}, "seed": 3, "launcher": launcher, "register_model": register, "nproc": nproc}
    instance = DagsterInstance.ephemeral()
    result = job.execute_in_process(run_config={"ops": {"unisid_model": {"config": config}}},
                                    asset_selection=[AssetKey("unisid_model")], instance=instance)
    assert result.success
    return result, instance


def test_pipes_subprocess_launcher_reports_back_and_matches_in_process(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    homes = {k: tmp_path / k for k in ("in_process", "pipes_subprocess")}
    for h in homes.values():
        h.mkdir()
        _seed_warehouse(h)
    ref, _ = _materialize(homes["in_process"], "in_process", register=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri exported the first home's
    res, instance = _materialize(homes["pipes_subprocess"], "pipes_subprocess", register=True)

    mat = res.asset_materializations_for_node("unisid_model")[0]
    meta = {k: v.value for k, v in mat.metadata.items()}
    # reported by the child through dagster-pipes (open_dagster_pipes -> report_asset_materialization)
    assert meta["pipes_world_size"] == 1 and meta["pipes_steps"] == 4 and meta["launcher"] == "pipes_subprocess"
    assert meta["pipes_train_seconds"] > 0
    # the child's log lines (pipes context.log) arrive in the Dagster run's log
    messages = [r.user_message for r in instance.all_logs(res.run_id)]
    assert any("unisid step 1: loss" in m for m in messages)
    assert any("unisid trained on 1 rank(s)" in m for m in messages)

    trained = res.output_for_node("unisid_model")
    expected = ref.output_for_node("unisid_model")
    # same seed, same single-threaded CPU training: the external process gives the in-process SIDs
    assert np.array_equal(trained.info["outputs"]["codes"], expected.info["outputs"]["codes"])
    assert np.allclose(trained.info["outputs"]["embeddings"], expected.info["outputs"]["embeddings"], atol=1e-6)
    assert [r["loss"] for r in trained.history["step"]] == [r["loss"] for r in expected.history["step"]]
    assert meta["pipes_final_loss"] == pytest.approx(expected.history["step"][-1]["loss"])
    assert trained.registered_version is not None  # continues as in-process: MLflow logging and registration
    client = MlflowClient(tracking_uri=paths.mlflow_uri(homes["pipes_subprocess"]))
    run = client.get_run(meta["mlflow_run_id"])
    assert run.data.params["launcher"] == "pipes_subprocess" and "loss" in run.data.metrics
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 4
    assert not (homes["pipes_subprocess"] / "pipes" / "unisid" / res.run_id).exists()  # work folder cleaned up


def test_pipes_launcher_with_two_ranks_equals_in_process_gradient_accumulation(tmp_path, monkeypatch):
    """nproc=2: DDP through Pipes makes the optimiser steps of one process accumulating 2 micro-batches."""
    homes = {k: tmp_path / k for k in ("in_process", "pipes_subprocess")}
    for h in homes.values():
        h.mkdir()
        _seed_warehouse(h)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # no reconstruction loss: its tiny GPT-2 decoder has dropout, whose RNG streams differ between the two setups
    ref, _ = _materialize(homes["in_process"], "in_process", register=False, use_rec=False, grad_accum_steps=2)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    res, instance = _materialize(homes["pipes_subprocess"], "pipes_subprocess", register=False, nproc=2, use_rec=False)
    meta = {k: v.value for k, v in res.asset_materializations_for_node("unisid_model")[0].metadata.items()}
    assert meta["pipes_world_size"] == 2 and meta["world_size"] == 2 and meta["pipes_steps"] == 4
    messages = [r.user_message for r in instance.all_logs(res.run_id)]
    assert sum("unisid trained on 2 rank(s)" in m for m in messages) == 1  # only rank 0 reports
    trained, expected = res.output_for_node("unisid_model"), ref.output_for_node("unisid_model")
    np.testing.assert_allclose([r["loss"] for r in trained.history["step"]],
                               [r["loss"] for r in expected.history["step"]], rtol=1e-5)
    assert np.array_equal(trained.info["outputs"]["codes"], expected.info["outputs"]["codes"])
