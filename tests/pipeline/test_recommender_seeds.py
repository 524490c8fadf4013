"""Recommender seeds as retried steps that resume from their checkpoint; reports over whichever methods exist."""
import pytest
from dagster import AssetKey, DagsterInstance

import assets.recommender as recommender_assets
from assets import build_definitions
from unisid_pipeline import paths, warehouse

REC = {"model": {"n_encoder_layers": 1, "n_decoder_layers": 1, "d_model": 32, "n_heads": 2, "d_kv": 16, "d_ff": 64,
                 "epochs": 4, "eval_every": 1, "warmup_steps": 10, "batch_size": 128, "beam_size": 10,
                 "n_user_buckets": 50, "max_history": 5},
       "seeds": [3]}
ONLY_RQ_KMEANS = ["raw_ads", "rejected_ads", "ad_interactions", "rejected_interactions", "user_sequences",
                  "ad_summaries", "ad_text_embeddings", "ad_hierarchy_labels", "rq_kmeans_model", "rq_kmeans_sids",
                  "sid_collision_report", "recommender_rq_kmeans", "downstream_eval"]
CONFIG = {"ops": {
    "ingested_tables": {"config": {"synthetic": {"n_ads": 120, "n_users": 100, "n_advertisers": 10}}},
    "ad_summaries": {"config": {"summarizer": {"backend": "template"}}},
    "rq_kmeans_model": {"config": {"model": {"codebook_size": 8, "n_iter": 5}}},
    "recommender_rq_kmeans": {"config": REC},
}}


@pytest.fixture(scope="module")
def flaky_run(tmp_path_factory):
    """Only the RQ-KMeans branch, ending in the reports; the seed's first attempt dies after epoch 2."""
    home = tmp_path_factory.mktemp("home")
    real = recommender_assets.train_recommender
    attempts: list[list[int]] = []

    def dies_once(cfg, sids, sequences, on_epoch, checkpoint_dir):
        epochs: list[int] = []
        attempts.append(epochs)

        def watch(row):
            epochs.append(row["epoch"])
            on_epoch(row)
            if len(attempts) == 1 and row["epoch"] == 2:
                raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")

        return real(cfg, sids, sequences, on_epoch=watch, checkpoint_dir=checkpoint_dir)

    mp = pytest.MonkeyPatch()
    mp.setattr(recommender_assets, "train_recommender", dies_once)
    try:
        job = build_definitions(home=str(home)).resolve_job_def("full_pipeline").get_subset(
            asset_selection={AssetKey(k) for k in ONLY_RQ_KMEANS})
        instance = DagsterInstance.ephemeral()
        result = job.execute_in_process(run_config=CONFIG, instance=instance, raise_on_error=False)
    finally:
        mp.undo()
    return home, result, attempts, instance


def test_a_failed_seed_is_retried_and_resumes_after_its_last_validated_epoch(flaky_run):
    home, result, attempts, _ = flaky_run
    assert result.success
    step = "recommender_rq_kmeans.recommender_rq_kmeans_seed[seed3]"
    kinds = [e.event_type_value for e in result.all_events if e.step_key == step]
    assert "STEP_UP_FOR_RETRY" in kinds and kinds[-1] == "STEP_SUCCESS"
    assert attempts == [[1, 2], [3, 4]]  # epochs 1-2 were checkpointed, not trained again
    value = warehouse.read_object(home / "objects" / "recommender_rq_kmeans.safetensors")
    assert value["results"]["seed"].to_list() == [3] and value["results"]["epochs_run"].to_list() == [4]


def test_reports_compare_the_methods_that_are_materialized(flaky_run):
    home, result, _, instance = flaky_run
    db = paths.warehouse_path(home)
    assert warehouse.read_table(db, "sid_collision_report")["method"].to_list() == ["rq_kmeans"]
    table = warehouse.read_table(db, "downstream_eval")
    assert table["method"].to_list() == ["rq_kmeans"] and table["n_seeds"].to_list() == [1]
    messages = [e.user_message for e in instance.all_logs(result.run_id)]
    assert any("recommender_unisid has not been materialized: left out" in m for m in messages)
