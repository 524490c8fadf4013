"""assign_new_ad_sids: new ads in the source get SIDs from the stored tokenizer; old SIDs never change."""
import polars as pl
from dagster import AssetKey, DagsterInstance

from assets import build_definitions
from unisid_pipeline import paths, warehouse
from unisid_pipeline.data.synthetic import SyntheticWorldConfig, generate_world
from unisid_pipeline.sid import collision_stats, sid_table_to_array


def _config(ads_path, inter_path, train: bool = False) -> dict:
    ops = {
        "ingested_tables": {"config": {"source": "files", "ads_path": str(ads_path), "interactions_path": str(inter_path)}},
        "ad_text_embeddings": {"config": {"encoder": {"backend": "hashed_bow", "hashed_dim": 32}}},
    }
    if train:
        ops["rq_kmeans_model"] = {"config": {"model": {"codebook_size": 4, "n_iter": 5}, "register_model": False}}
    return {"ops": ops}


def test_new_ads_get_sids_from_the_frozen_tokenizer_and_old_sids_stay(home, tmp_path):
    world = generate_world(SyntheticWorldConfig(n_ads=260, n_users=40, n_advertisers=10, seed=1))
    inter = tmp_path / "inter.parquet"
    world.interactions.filter(pl.col("ad_id") <= 200).write_parquet(inter)
    first, grown = tmp_path / "ads_200.parquet", tmp_path / "ads_260.parquet"
    world.ads.head(200).write_parquet(first)
    world.ads.write_parquet(grown)
    defs = build_definitions(home=str(home))
    instance = DagsterInstance.ephemeral()

    setup = defs.resolve_job_def("full_pipeline").get_subset(asset_selection={
        AssetKey(k) for k in ("raw_ads", "ad_text_embeddings", "rq_kmeans_model", "rq_kmeans_sids", "rq_kmeans_catalog_sids")})
    assert setup.execute_in_process(run_config=_config(first, inter, train=True), instance=instance).success
    db = paths.warehouse_path(home)
    base = warehouse.read_table(db, "rq_kmeans_catalog_sids")
    assert base.sort("ad_id").equals(warehouse.read_table(db, "rq_kmeans_sids").sort("ad_id"))  # nothing new yet
    assert collision_stats(sid_table_to_array(base, "raw_codes")[1])["n_colliding_items"] > 0  # K=4: SIDs collide
    model_before = warehouse.read_object(home / "objects" / "rq_kmeans_model.safetensors").fingerprint

    result = defs.resolve_job_def("assign_new_ad_sids").execute_in_process(run_config=_config(grown, inter),
                                                                           instance=instance)
    assert result.success
    catalog = warehouse.read_table(db, "rq_kmeans_catalog_sids")
    assert catalog.height == 260 and catalog["ad_id"].is_unique().all()
    assert catalog.filter(pl.col("ad_id") <= 200).sort("ad_id").equals(base.sort("ad_id"))  # old SIDs unchanged
    assert collision_stats(sid_table_to_array(catalog)[1])["n_colliding_items"] == 0
    new = catalog.filter(pl.col("ad_id") > 200)
    assert new["model_version"].unique().to_list() == base["model_version"].unique().to_list()
    # the stored tokenizer was used as it was, not retrained
    assert warehouse.read_object(home / "objects" / "rq_kmeans_model.safetensors").fingerprint == model_before
    assert not result.asset_materializations_for_node("rq_vae_catalog_sids")  # never trained: skipped, no empty table
    assert not warehouse.has_table(db, "rq_vae_catalog_sids")
    mat = result.asset_materializations_for_node("rq_kmeans_catalog_sids")[0]
    assert mat.metadata["n_new"].value == 60 and mat.metadata["n_existing"].value == 200

    # running it again with no new ads changes nothing
    assert defs.resolve_job_def("assign_new_ad_sids").execute_in_process(
        run_config=_config(grown, inter), instance=instance).success
    assert warehouse.read_table(db, "rq_kmeans_catalog_sids").sort("ad_id").equals(catalog.sort("ad_id"))


def test_a_lost_tracking_store_is_detected_and_sids_of_other_weights_are_never_mixed(home, tmp_path):
    """mlflow.db lost: the next tracked run fails naming the store and the two ways out (no silent restart of the
    registry at version 1). Once the user starts tracking afresh on purpose and retrains (another seed, so other
    weights, registered as version 1 again), extending the SID table that the old version 1 built is refused."""
    world = generate_world(SyntheticWorldConfig(n_ads=220, n_users=40, n_advertisers=10, seed=1))
    inter, ads = tmp_path / "inter.parquet", tmp_path / "ads.parquet"
    world.interactions.filter(pl.col("ad_id") <= 200).write_parquet(inter)
    world.ads.head(200).write_parquet(ads)
    grown = tmp_path / "ads_grown.parquet"
    world.ads.write_parquet(grown)
    defs = build_definitions(home=str(home))
    instance = DagsterInstance.ephemeral()
    config = _config(ads, inter, train=True)
    config["ops"]["rq_kmeans_model"]["config"]["register_model"] = True
    setup = defs.resolve_job_def("full_pipeline").get_subset(asset_selection={
        AssetKey(k) for k in ("raw_ads", "ad_text_embeddings", "rq_kmeans_model", "rq_kmeans_sids")})
    assert setup.execute_in_process(run_config=config, instance=instance).success
    db = paths.warehouse_path(home)
    table = warehouse.read_table(db, "rq_kmeans_sids")
    assert table["model_version"].unique().to_list() == ["rq_kmeans_tokenizer/1"]

    # The tracking store is lost: what a new, empty mlflow.db looks like to the next run (done in this process,
    # where MLflow caches the store): the experiment's id is another, and the registry starts again at version 1.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=paths.mlflow_uri(home))
    client.rename_experiment(client.get_experiment_by_name("unisid_pipeline").experiment_id, "lost")
    client.delete_registered_model("rq_kmeans_tokenizer")
    retrain = defs.resolve_job_def("full_pipeline").get_subset(asset_selection={AssetKey("rq_kmeans_model")})
    config = {"ops": {"rq_kmeans_model": {"config": {**config["ops"]["rq_kmeans_model"]["config"], "seed": 7}}}}
    result = retrain.execute_in_process(run_config=config, instance=instance, raise_on_error=False)
    assert not result.success
    from test_outside_failures import failure_text

    text = failure_text(result)
    assert "TrackingStoreReplaced" in text and "no longer holds experiment 'unisid_pipeline'" in text
    assert "tracking_store.json" in text

    (home / "tracking_store.json").unlink()  # the user starts tracking afresh on purpose
    assert retrain.execute_in_process(run_config=config, instance=instance).success  # version 1 again, other weights
    result = defs.resolve_job_def("assign_new_ad_sids").execute_in_process(
        run_config=_config(grown, inter), instance=instance, raise_on_error=False)
    assert not result.success
    text = failure_text(result)
    assert "rq_kmeans_catalog_sids: the SID table was built by tokenizer weights" in text
    assert "the same version name (was the MLflow store lost or replaced?" in text and "re-materialize rq_kmeans_sids" in text
    assert not warehouse.has_table(db, "rq_kmeans_catalog_sids")
    assert warehouse.read_table(db, "rq_kmeans_sids").equals(table)  # nothing changed
