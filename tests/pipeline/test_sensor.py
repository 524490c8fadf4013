"""The `new_ad_files` sensor: a new ad file in the incoming folder starts one ingestion -> SIDs run on it."""
import os

import pytest
from dagster import DagsterInstance, DefaultSensorStatus, SkipReason, build_sensor_context, validate_run_config

from assets import build_definitions
from assets.sensors import IncomingAds, new_ad_files
from unisid_pipeline import paths, warehouse

ADS = "ad_id,title\n1,Red lipstick\n2,Blue mascara\n3,Face cream\n4,Hair oil\n"
CLICKS = "user_id,ad_id,timestamp\n" + "".join(f"{u},{a},{t}\n" for u in (1, 2) for t, a in enumerate((1, 2, 3, 4)))


def _evaluate(defs, resource, cursor):
    ctx = build_sensor_context(cursor=cursor, resources={"incoming_ads": resource}, definitions=defs)
    result = new_ad_files(ctx)
    return result, ctx


@pytest.fixture
def incoming(tmp_path):
    folder = tmp_path / "incoming"
    folder.mkdir()
    return folder


def test_sensor_is_off_by_default_and_watches_the_project_home(home, monkeypatch):
    monkeypatch.delenv("UNISID_INCOMING", raising=False)
    assert new_ad_files.default_status == DefaultSensorStatus.STOPPED
    assert IncomingAds().folder() == home / "incoming"
    monkeypatch.setenv("UNISID_INCOMING", str(home / "drop"))
    assert IncomingAds().folder() == home / "drop"


def test_new_ad_file_triggers_exactly_one_run_that_ingests_it(home, incoming):
    defs = build_definitions(home=str(home))
    resource = IncomingAds(path=str(incoming))
    result, _ = _evaluate(defs, resource, None)
    assert isinstance(result, SkipReason) and "no new ads" in result.skip_message

    (incoming / "interactions.csv").write_text(CLICKS)
    (incoming / "ads_1.csv").write_text(ADS)
    (incoming / ".ads_2.csv.tmp").write_text(ADS)  # half-copied files are ignored
    result, _ = _evaluate(defs, resource, None)
    assert len(result.run_requests) == 1
    request = result.run_requests[0]
    cfg = request.run_config["ops"]["ingested_tables"]["config"]
    assert cfg == {"source": "files", "ads_path": [str(incoming / "ads_1.csv")],
                   "interactions_path": [str(incoming / "interactions.csv")], "on_duplicate_ad": "last_wins",
                   "allowed_roots": [str(incoming.resolve())]}
    job = defs.resolve_job_def("ads_refresh_job")
    assert validate_run_config(job, request.run_config)
    assert {"raw_ads", "unisid_sids", "rq_vae_sids"} <= {k.to_user_string() for k in job.asset_layer.selected_asset_keys}

    # same folder, same cursor: nothing new
    again, _ = _evaluate(defs, resource, result.cursor)
    assert isinstance(again, SkipReason)

    # the run config really ingests that file
    ingest = defs.resolve_job_def("ingestion_job").execute_in_process(
        run_config={"ops": {"ingested_tables": request.run_config["ops"]["ingested_tables"]}},
        instance=DagsterInstance.ephemeral())
    assert ingest.success
    assert warehouse.read_table(paths.warehouse_path(home), "raw_ads")["title"].to_list()[0] == "Red lipstick"

    # a replaced file (new mtime) is new again; every ad file of the folder is ingested, oldest first
    st = (incoming / "ads_1.csv").stat()
    os.utime(incoming / "ads_1.csv", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    (incoming / "ads_2.parquet").write_bytes(b"")
    os.utime(incoming / "ads_2.parquet", ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))
    third, _ = _evaluate(defs, resource, result.cursor)
    assert [r.run_config["ops"]["ingested_tables"]["config"]["ads_path"] for r in third.run_requests] == \
        [[str(incoming / "ads_1.csv"), str(incoming / "ads_2.parquet")]]
    assert isinstance(_evaluate(defs, resource, third.cursor)[0], SkipReason)


def test_ad_file_without_interactions_waits_for_them(home, incoming):
    defs = build_definitions(home=str(home))
    resource = IncomingAds(path=str(incoming))
    (incoming / "ads.jsonl").write_text('{"ad_id": 1, "title": "x"}\n')
    result, _ = _evaluate(defs, resource, None)
    assert isinstance(result, SkipReason) and "interactions" in result.skip_message
    (incoming / "interactions.jsonl").write_text('{"user_id": 1, "ad_id": 1, "timestamp": 1}\n')
    result, _ = _evaluate(defs, resource, None)
    assert len(result.run_requests) == 1


def test_base_run_config_keeps_only_ops_of_the_job(home, incoming, tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("ops:\n  rq_vae_model:\n    config:\n      model:\n        epochs: 2\n"
                    "  recommender_unisid:\n    config:\n      seeds: [0]\n"
                    "  ingested_tables:\n    config:\n      max_text_chars: 500\n")
    (incoming / "interactions.csv").write_text(CLICKS)
    (incoming / "ads.csv").write_text(ADS)
    defs = build_definitions(home=str(home))
    result, _ = _evaluate(defs, IncomingAds(path=str(incoming), base_run_config=str(base)), None)
    ops = result.run_requests[0].run_config["ops"]
    assert set(ops) == {"rq_vae_model", "ingested_tables"}
    assert ops["ingested_tables"]["config"]["max_text_chars"] == 500
    assert validate_run_config(defs.resolve_job_def("ads_refresh_job"), result.run_requests[0].run_config)


def test_all_ad_and_interactions_files_of_the_folder_are_ingested_later_files_winning(home, incoming):
    # Bug fixed: with two new ad files only the newest was ingested, the older marked handled and never read.
    defs = build_definitions(home=str(home))
    resource = IncomingAds(path=str(incoming))
    (incoming / "ads_b.csv").write_text("ad_id,title\n1,Old lipstick\n2,Blue mascara\n")
    (incoming / "ads_a.csv").write_text("ad_id,title\n1,New lipstick\n3,Face cream\n")
    (incoming / "interactions_1.csv").write_text("user_id,ad_id,timestamp\n1,1,1\n1,2,2\n")
    (incoming / "interactions_2.csv").write_text("user_id,ad_id,timestamp\n2,3,1\n2,1,2\n")
    base = (incoming / "ads_b.csv").stat().st_mtime_ns
    for i, name in enumerate(["ads_b.csv", "ads_a.csv", "interactions_1.csv", "interactions_2.csv"]):
        os.utime(incoming / name, ns=(base, base + i * 10**9))  # ads_b is older than ads_a
    result, _ = _evaluate(defs, resource, None)
    assert len(result.run_requests) == 1
    cfg = result.run_requests[0].run_config["ops"]["ingested_tables"]["config"]
    assert cfg["ads_path"] == [str(incoming / "ads_b.csv"), str(incoming / "ads_a.csv")]
    assert cfg["interactions_path"] == [str(incoming / "interactions_1.csv"), str(incoming / "interactions_2.csv")]
    assert cfg["on_duplicate_ad"] == "last_wins"
    assert isinstance(_evaluate(defs, resource, result.cursor)[0], SkipReason)  # one run per state of the folder
    run = defs.resolve_job_def("ingestion_job").execute_in_process(
        run_config={"ops": {"ingested_tables": result.run_requests[0].run_config["ops"]["ingested_tables"]}},
        instance=DagsterInstance.ephemeral())
    assert run.success
    ads = warehouse.read_table(paths.warehouse_path(home), "raw_ads")
    assert ads.select("ad_id", "title").sort("ad_id").rows() == [(1, "New lipstick"), (2, "Blue mascara"), (3, "Face cream")]
    assert warehouse.read_table(paths.warehouse_path(home), "ad_interactions").height == 4
