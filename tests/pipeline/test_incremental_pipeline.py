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
    model_before = warehouse.read_object(home / "objects" / "rq_kmeans_model.pkl").fingerprint

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
    assert warehouse.read_object(home / "objects" / "rq_kmeans_model.pkl").fingerprint == model_before
    assert not result.asset_materializations_for_node("rq_vae_catalog_sids")  # never trained: skipped, no empty table
    assert not warehouse.has_table(db, "rq_vae_catalog_sids")
    mat = result.asset_materializations_for_node("rq_kmeans_catalog_sids")[0]
    assert mat.metadata["n_new"].value == 60 and mat.metadata["n_existing"].value == 200

    # running it again with no new ads changes nothing
    assert defs.resolve_job_def("assign_new_ad_sids").execute_in_process(
        run_config=_config(grown, inter), instance=instance).success
    assert warehouse.read_table(db, "rq_kmeans_catalog_sids").sort("ad_id").equals(catalog.sort("ad_id"))
