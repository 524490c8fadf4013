"""Materialize the whole graph on a tiny synthetic world with tiny models, then check what a user relies on."""
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import polars as pl
import pytest
from dagster import AssetKey, DagsterInstance
from mlflow.tracking import MlflowClient

from assets import build_definitions
from unisid_pipeline import paths, warehouse
from unisid_pipeline.embeddings import frame_to_embeddings
from unisid_pipeline.tracking import load_registered_model

K = 16
REC = {"model": {"n_encoder_layers": 1, "n_decoder_layers": 1, "d_model": 32, "n_heads": 2, "d_kv": 16, "d_ff": 64,
                 "epochs": 1, "warmup_steps": 10, "batch_size": 128, "beam_size": 10, "n_user_buckets": 50,
                 "max_history": 5},
       "seeds": [0]}
RUN_CONFIG = {"ops": {
    "ingested_tables": {"config": {"synthetic": {"n_ads": 150, "n_users": 120, "n_advertisers": 12}}},
    "ad_summaries": {"config": {"summarizer": {"backend": "template"}}},
    "rq_kmeans_model": {"config": {"model": {"codebook_size": K, "n_iter": 10}}},
    "rq_vae_model": {"config": {"model": {"codebook_size": K, "epochs": 3, "hidden_dims": [64, 32], "latent_dim": 16,
                                          "kmeans_init_size": 64, "batch_size": 64}}},
    "unisid_model": {"config": {"train": {"model": {"backbone": "tiny", "codebook_size": K, "emb_dim": 16,
                                                    "max_length": 48},
                                          "epochs": 1, "batch_size": 32, "checkpoint_every": 0}}},
    "ad_hierarchy_labels": {"config": {}},
    "rq_kmeans_sids": {"config": {"resolution": "reassign"}},
    "recommender_rq_kmeans": {"config": REC},
    "recommender_rq_vae": {"config": REC},
    "recommender_unisid": {"config": {**REC, "seeds": [0, 1]}},
}}


@pytest.fixture(scope="module")
def instance():
    return DagsterInstance.ephemeral()


@pytest.fixture(scope="module")
def materialized(tmp_path_factory, instance):
    home = tmp_path_factory.mktemp("home")
    defs = build_definitions(home=str(home))
    result = defs.resolve_job_def("full_pipeline").execute_in_process(run_config=RUN_CONFIG, instance=instance)
    return home, result


def test_every_asset_materializes_with_one_mlflow_run_each(materialized):
    home, result = materialized
    assert result.success
    client = MlflowClient(tracking_uri=paths.mlflow_uri(home))
    runs = client.search_runs([client.get_experiment_by_name("unisid_pipeline").experiment_id])
    assert all(r.info.status == "FINISHED" for r in runs)
    assert all(r.data.tags["dagster.run_id"] == result.run_id for r in runs)
    keys = {r.data.tags["dagster.asset_key"] for r in runs}
    for asset in ("ad_summaries", "ad_text_embeddings", "rq_kmeans_model", "rq_vae_model", "unisid_model",
                  "rq_kmeans_sids", "unisid_sids", "sid_collision_report", "recommender_unisid", "downstream_eval",
                  "embedding_retrieval_eval"):
        assert asset in keys, asset
    # one run per step; a recommender's seeds are steps of their own, each with its run
    assert len(runs) == len({(r.data.tags["dagster.step"], r.data.tags.get("seed")) for r in runs})


def test_each_recommender_seed_is_its_own_step_and_mlflow_run_nested_under_the_asset_run(materialized):
    home, result = materialized
    steps = {e.step_key for e in result.all_events if e.event_type_value == "STEP_SUCCESS"}
    assert {"recommender_unisid.recommender_unisid_seed[seed0]", "recommender_unisid.recommender_unisid_seed[seed1]",
            "recommender_unisid.recommender_unisid_summary"} <= steps
    mats = {m.asset_key.to_user_string(): m.metadata
            for m in (e.event_specific_data.materialization for e in result.get_asset_materialization_events())}
    parent = mats["recommender_unisid"]["mlflow_run_id"].value
    assert mats["recommender_unisid"]["seeds"].value == 2
    client = MlflowClient(tracking_uri=paths.mlflow_uri(home))
    exp = client.get_experiment_by_name("unisid_pipeline").experiment_id
    seed_runs = client.search_runs([exp], "tags.method = 'unisid' and tags.seed != ''")
    assert sorted(r.data.tags["seed"] for r in seed_runs) == ["0", "1"]
    assert {r.data.tags["mlflow.parentRunId"] for r in seed_runs} == {parent}
    # the same metric names in every seed's run: MLflow's Compare view lines the seeds up
    names = [set(r.data.metrics) for r in seed_runs]
    assert names[0] == names[1] and {"test_recall_at_10", "test_ndcg_at_10", "train_loss"} <= names[0]  # "@" is not a metric-name character
    value = warehouse.read_object(home / "objects" / "recommender_unisid.safetensors")
    assert value["results"]["seed"].to_list() == [0, 1] and set(value["checkpoints"]) == {0, 1}
    by_seed = {int(r.data.tags["seed"]): r.data.metrics["test_recall_at_10"] for r in seed_runs}
    assert value["results"]["recall@10"].to_list() == [by_seed[0], by_seed[1]]
    table = warehouse.read_table(paths.warehouse_path(home), "downstream_eval")
    assert dict(zip(table["method"], table["n_seeds"])) == {"rq_kmeans": 1, "rq_vae": 1, "unisid": 2}


def test_sid_tables_are_collision_free_and_cover_every_ad(materialized):
    home, _ = materialized
    db = paths.warehouse_path(home)
    ads = warehouse.read_table(db, "raw_ads")
    for method in ("rq_kmeans", "rq_vae", "unisid"):
        t = warehouse.read_table(db, f"{method}_sids")
        assert sorted(t["ad_id"].to_list()) == sorted(ads["ad_id"].to_list())
        assert t.select(pl.col("codes").list.eval(pl.element().cast(pl.Utf8)).list.join("-")).to_series().is_unique().all()
    # reassign keeps the SID length; suffix adds one level
    assert warehouse.read_table(db, "rq_kmeans_sids")["codes"].list.len().unique().to_list() == [3]
    report = warehouse.read_table(db, "sid_collision_report")
    assert set(report["method"]) == {"rq_kmeans", "rq_vae", "unisid"}
    assert (report["collision_rate_post"] == 0).all()
    assert report["l1_v_measure"].is_between(0, 1).all()
    # transition agreement reads the training interactions of user_sequences, every one of them matched
    n_pairs = (warehouse.read_table(db, "user_sequences")["train_items"].list.len() - 1).clip(0).sum()
    assert (report["seq_n_pairs"] == n_pairs).all() and (report["seq_n_unmatched"] == 0).all()
    assert (report["seq_agree_l1"] >= report["seq_agree_l2"]).all()


def test_registered_tokenizers_reproduce_the_stored_sids(materialized):
    """Round trip: load the registered model from the MLflow registry, encode, get the archived SIDs back."""
    home, _ = materialized
    db = paths.warehouse_path(home)
    ad_ids, x = frame_to_embeddings(warehouse.read_table(db, "ad_text_embeddings"))
    uri = paths.mlflow_uri(home)
    for method, name in (("rq_kmeans", "rq_kmeans_tokenizer"), ("rq_vae", "rq_vae_tokenizer")):
        table = warehouse.read_table(db, f"{method}_sids")
        version = table["model_version"][0].split("/")[1]
        model = load_registered_model(uri, f"models:/{name}/{version}")
        stored = dict(zip(table["ad_id"].to_list(), table["raw_codes"].to_list()))
        codes = model.encode(x)
        assert all(list(codes[i]) == stored[a] for i, a in enumerate(ad_ids.tolist()))
    table = warehouse.read_table(db, "unisid_sids")
    model = load_registered_model(uri, f"models:/unisid_tokenizer/{table['model_version'][0].split('/')[1]}")
    ads = warehouse.read_table(db, "raw_ads")
    codes, emb, _ = model.encode(ads)
    stored = dict(zip(table["ad_id"].to_list(), table["raw_codes"].to_list()))
    assert all(list(codes[i]) == stored[a] for i, a in enumerate(ads["ad_id"].to_list()))
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)


def test_downstream_eval_compares_all_methods_and_names_a_champion(materialized):
    home, result = materialized
    table = warehouse.read_table(paths.warehouse_path(home), "downstream_eval")
    assert set(table["method"]) == {"rq_kmeans", "rq_vae", "unisid"}
    assert table["recall@10_mean"].is_between(0, 1).all()
    client = MlflowClient(tracking_uri=paths.mlflow_uri(home))
    champions = [n for n in ("rq_kmeans_tokenizer", "rq_vae_tokenizer", "unisid_tokenizer")
                 if "champion" in client.get_registered_model(n).aliases]
    assert len(champions) == 1


def test_rematerializing_a_tokenizer_adds_no_registry_version(materialized):
    home, _ = materialized
    defs = build_definitions(home=str(home))
    job = defs.resolve_job_def("full_pipeline").get_subset(asset_selection={AssetKey("rq_vae_model")})
    cfg = {"ops": {"rq_vae_model": RUN_CONFIG["ops"]["rq_vae_model"]}}
    assert job.execute_in_process(run_config=cfg, instance=DagsterInstance.ephemeral()).success
    client = MlflowClient(tracking_uri=paths.mlflow_uri(home))
    assert len(client.search_model_versions("name = 'rq_vae_tokenizer'")) == 1


def test_embedding_retrieval_reports_both_embedding_models(materialized):
    home, _ = materialized
    table = warehouse.read_table(paths.warehouse_path(home), "embedding_retrieval_eval")
    assert set(table["model"]) == {"text_encoder", "unisid"}
    assert (table["n_negatives"] == 148).all()  # 150 ads: capped at catalog size - 2
    assert (table["recall@1"] <= table["recall@20"]).all()


def _caches(home):
    import duckdb

    con = duckdb.connect(str(paths.cache_db(home)), read_only=True)
    try:
        return {t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").pl() for t in ("summary_cache", "embedding_cache")}
    finally:
        con.close()


def test_rematerializing_with_same_config_and_data_changes_nothing(materialized):
    """Ingestion -> summaries/embeddings -> tokenizers -> SID tables again: identical tables, no duplicated rows,
    cache entries or registry versions (the summaries now all come from the cache)."""
    home, _ = materialized
    db = paths.warehouse_path(home)
    names = ["raw_ads", "rejected_ads", "ad_interactions", "rejected_interactions", "user_sequences", "ad_summaries",
             "ad_text_embeddings", "ad_hierarchy_labels", "rq_kmeans_sids", "unisid_sids", "unisid_embeddings"]
    before = {n: warehouse.read_table(db, n) for n in names}
    caches = _caches(home)
    client = MlflowClient(tracking_uri=paths.mlflow_uri(home))
    registry = {n: sorted(v.version for v in client.search_model_versions(f"name = '{n}'"))
                for n in ("rq_kmeans_tokenizer", "rq_vae_tokenizer", "unisid_tokenizer")}

    keys = [AssetKey(n) for n in names] + [AssetKey("rq_kmeans_model"), AssetKey("unisid_model")]
    job = build_definitions(home=str(home)).resolve_job_def("full_pipeline").get_subset(asset_selection=set(keys))
    ops = ("ingested_tables", "ad_summaries", "ad_hierarchy_labels", "rq_kmeans_model", "rq_kmeans_sids", "unisid_model")
    cfg = {"ops": {k: RUN_CONFIG["ops"][k] for k in ops}}
    instance = DagsterInstance.ephemeral()
    result = job.execute_in_process(run_config=cfg, instance=instance)
    assert result.success
    assert not [e.user_message for e in instance.all_logs(result.run_id)
                if "another config or data" in (e.user_message or "")]  # same config and data: no drift warning

    for n in names:
        after = warehouse.read_table(db, n)
        if n == "ad_summaries":
            assert after["cached"].all()  # nothing regenerated
            after, before[n] = after.drop("cached"), before[n].drop("cached")
        assert after.equals(before[n]), n
    assert before["raw_ads"]["ad_id"].is_unique().all() and before["ad_summaries"]["ad_id"].is_unique().all()
    for name, frame in _caches(home).items():
        assert frame.equals(caches[name]), name  # same rows, no duplicates, created_at kept
    assert {n: sorted(v.version for v in client.search_model_versions(f"name = '{n}'")) for n in registry} == registry


def test_every_materialization_links_its_mlflow_run_and_training_assets_plot_their_loss(materialized):
    """What a person looks at in the UI: a link to the MLflow run on every asset, a loss curve on every trainer."""
    _, result = materialized
    mats = {m.asset_key.to_user_string(): m.metadata
            for m in (e.event_specific_data.materialization for e in result.get_asset_materialization_events())}
    every = {k.to_user_string() for k in build_definitions().resolve_asset_graph().get_all_asset_keys()}
    assert set(mats) == every  # the full graph materialized, and each asset's metadata is checked below
    for key, meta in mats.items():
        assert meta["mlflow_run"].value.startswith("http://127.0.0.1:5000/#/experiments/"), key
    plots = {key: ["loss_curve"] for key in ("rq_kmeans_model", "rq_vae_model", "unisid_model", "recommender_rq_kmeans",
                                             "recommender_rq_vae", "recommender_unisid")}
    plots.update(sid_collision_report=["bucket_sizes", "codebook_usage", "v_measure"], downstream_eval=["downstream_eval"])
    for key, names in plots.items():  # one "plots" entry per asset: all its plots behind one click in the UI
        assert meta_pngs(mats[key]["plots"].value) == names, key
    assert not [k for k, m in mats.items() for v in m.values() if "data:image" in str(v.value) and k not in plots]


def meta_pngs(markdown: str) -> list[str]:
    """The names of the decodable inline PNGs in a `plots` Markdown entry (assets.metadata.plots_metadata)."""
    import base64
    import re

    found = re.findall(r"!\[(\w+)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    return [name for name, data in found if base64.b64decode(data).startswith(b"\x89PNG")]


def test_every_model_stage_says_which_device_it_used(materialized, instance):
    """device defaults to 'auto': each stage that runs a model logs the device it resolved to and records it in
    its MLflow run (here, without a GPU: the CPU)."""
    import torch

    home, result = materialized
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    messages = [e.user_message for e in instance.all_logs(result.run_id)]
    for what in ("the text encoder", "rq_kmeans_model", "rq_vae_model", "unisid_model", "recommender_unisid"):
        assert any(m == f"{what} runs on {expected} (device 'auto', compute resource 'auto')" for m in messages), what
    client = MlflowClient(tracking_uri=paths.mlflow_uri(home))
    runs = client.search_runs([client.get_experiment_by_name("unisid_pipeline").experiment_id])
    used = {r.data.tags["dagster.asset_key"]: r.data.params["device_used"] for r in runs if "device_used" in r.data.params}
    assert {used[a] for a in ("ad_text_embeddings", "rq_kmeans_model", "unisid_model", "recommender_rq_vae")} == {expected}


def test_mlflow_runs_carry_their_inputs_and_commit_and_the_experiment_opens_on_training(materialized):
    """What MLflow's UI shows of a run: the datasets it read and the code's git commit; the experiment is a
    model-training one (its UI opens on runs, not on the GenAI overview). System metrics: test_tracking."""
    home, _ = materialized
    client = MlflowClient(tracking_uri=paths.mlflow_uri(home))
    exp = client.get_experiment_by_name("unisid_pipeline")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([exp.experiment_id])
    unisid = next(r for r in runs if r.data.tags["dagster.asset_key"] == "unisid_model")
    assert {d.dataset.name for d in unisid.inputs.dataset_inputs} == {"raw_ads", "user_sequences"}
    seed = next(r for r in runs if r.data.tags.get("method") == "rq_vae" and "seed" in r.data.tags)
    assert {d.dataset.name for d in seed.inputs.dataset_inputs} == {"user_sequences", "rq_vae_sids"}
    import subprocess
    from pathlib import Path

    head = subprocess.run(["git", "-C", str(Path(__file__).resolve().parents[2]), "rev-parse", "HEAD"],
                          capture_output=True, text=True)
    if head.returncode == 0:
        assert {r.data.tags["mlflow.source.git.commit"] for r in runs} == {head.stdout.strip()}


@contextlib.contextmanager
def served(home, model_uri: str):
    """`mlflow models serve -m model_uri` on a free loopback port; yields a function that POSTs a frame (and params)
    to /invocations and returns the predictions."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # mlflow starts `uvicorn` by name: the venv's bin must be on PATH (as it is with the venv activated)
    env = {**os.environ, "MLFLOW_TRACKING_URI": paths.mlflow_uri(home),
           "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}"}
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri,
                               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)

    def invoke(frame: pl.DataFrame, params: dict | None = None) -> list[dict]:
        payload = {"dataframe_split": {"columns": frame.columns, "data": frame.rows()}}
        if params:
            payload["params"] = params
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return json.loads(r.read())["predictions"]
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"HTTP {exc.code}: {exc.read().decode()[:3000]}") from None

    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, server.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "mlflow models serve did not come up in 180 s"
            time.sleep(1)
        yield invoke
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_mlflow_models_serve_answers_with_the_champion_tokenizers_sids(materialized):
    """`mlflow models serve` of `@champion` on loopback: a REST request with ads (UniSID) or their text embeddings
    (RQ tokenizers) gets back the SIDs the pipeline stored before collision resolution."""
    home, _ = materialized
    db = paths.warehouse_path(home)
    client = MlflowClient(tracking_uri=paths.mlflow_uri(home))
    name = next(n for n in ("rq_kmeans_tokenizer", "rq_vae_tokenizer", "unisid_tokenizer")
                if "champion" in client.get_registered_model(n).aliases)
    method = name.removesuffix("_tokenizer")
    if method == "unisid":
        frame = warehouse.read_table(db, "raw_ads").head(5)
    else:
        frame = warehouse.read_table(db, "ad_text_embeddings").head(5)
        frame = frame.with_columns(pl.col("embedding").cast(pl.List(pl.Float64)))
    with served(home, f"models:/{name}@champion") as invoke:
        predictions = invoke(frame)
    stored = dict(zip(*warehouse.read_table(db, f"{method}_sids").select("ad_id", "raw_codes").to_dict(as_series=False).values()))
    assert [p["ad_id"] for p in predictions] == frame["ad_id"].to_list()
    assert all(p["sid"] == stored[p["ad_id"]] for p in predictions)


def _test_users(home, n: int) -> pl.DataFrame:
    seqs = warehouse.read_table(paths.warehouse_path(home), "user_sequences").head(n)
    return seqs.select("user_id", pl.col("test_history").alias("history"), "test_target")


def test_each_method_registers_its_best_seed_as_a_recommender_that_ranks_like_the_evaluation(materialized):
    """recommender_<method>: the seed with the best validation R@10, a pyfunc (safetensors, signature with param k,
    input example) whose top-k for a user is the ranking the test metrics were computed from."""
    import mlflow

    from unisid_pipeline.recommender.evaluate import rank_split
    from unisid_pipeline.recommender.model import GenerativeRecommender
    from unisid_pipeline.tracking import fluent_tracking_uri

    home, _ = materialized
    client = MlflowClient(tracking_uri=paths.mlflow_uri(home))
    value = warehouse.read_object(home / "objects" / "recommender_unisid.safetensors")
    assert value["registered_model"] == "recommender_unisid/1"
    mv = client.get_model_version("recommender_unisid", "1")
    assert mv.tags["sid_model_version"] == value["sid_model_version"] and mv.tags["seed"] in ("0", "1")
    users = _test_users(home, 8)
    with fluent_tracking_uri(paths.mlflow_uri(home)):
        for method in ("rq_kmeans", "rq_vae", "unisid"):
            info = mlflow.models.get_model_info(f"models:/recommender_{method}/1")
            assert "python_function" in info.flavors and info.signature.params is not None
            assert info.saved_input_example_info is not None
        model = mlflow.pyfunc.load_model("models:/recommender_unisid/1")
        got = model.predict(users.select("user_id", "history").to_pandas(), params={"k": 5})
    rec = GenerativeRecommender.from_checkpoint(value["checkpoints"][int(mv.tags["seed"])])
    _, ranked, _, _ = rank_split(rec, warehouse.read_table(paths.warehouse_path(home), "user_sequences").head(8), "test")
    expected = [[int(a) for a in row[:5] if a >= 0] for row in ranked]
    assert [list(r) for r in got["ad_ids"]] == expected
    assert all(len(s) == len(a) and list(s) == sorted(s, reverse=True) for s, a in zip(got["scores"], got["ad_ids"]))


def test_mlflow_models_serve_answers_with_the_champion_recommenders_top_k(materialized):
    """`mlflow models serve` of the champion method's recommender: a REST request with users' histories gets back
    the top-k ad ids the registered model gives in process; an ad the SID table does not know is skipped and counted."""
    import mlflow

    from unisid_pipeline.tracking import fluent_tracking_uri

    home, _ = materialized
    client = MlflowClient(tracking_uri=paths.mlflow_uri(home))
    name = next(f"recommender_{m}" for m in ("rq_kmeans", "rq_vae", "unisid")
                if "champion" in client.get_registered_model(f"recommender_{m}").aliases)
    users = _test_users(home, 4).select("user_id", "history")
    users = users.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(pl.col("history").list.concat(pl.lit([99_999])))
                               .otherwise(pl.col("history")).alias("history"))
    with fluent_tracking_uri(paths.mlflow_uri(home)):
        local = mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(users.to_pandas(), params={"k": 7})
    with served(home, f"models:/{name}@champion") as invoke:
        predictions = invoke(users, {"k": 7})
    assert [p["ad_ids"] for p in predictions] == [list(map(int, r)) for r in local["ad_ids"]]
    assert all(len(p["ad_ids"]) == 7 for p in predictions)
    assert [p["n_unknown"] for p in predictions] == [1, 0, 0, 0]


def test_registered_tokenizers_are_pyfunc_models_with_safetensors_weights_and_no_pickle(materialized, tmp_path):
    import mlflow

    from unisid_pipeline.tracking import fluent_tracking_uri

    home, _ = materialized
    with fluent_tracking_uri(paths.mlflow_uri(home)):
        for name in ("rq_kmeans_tokenizer", "rq_vae_tokenizer", "unisid_tokenizer"):
            info = mlflow.models.get_model_info(f"models:/{name}/1")
            assert "python_function" in info.flavors and "pytorch" not in info.flavors
            assert info.signature is not None and info.saved_input_example_info is not None
            local = mlflow.artifacts.download_artifacts(f"models:/{name}/1", dst_path=str(tmp_path / name))
            files = [p.name for p in __import__("pathlib").Path(local).rglob("*") if p.is_file()]
            assert "weights.safetensors" in files and not [f for f in files if f.endswith((".pkl", ".pt", ".pth"))], files


def test_the_readme_python_example_runs_as_written(materialized, tmp_path):
    """The README's registry example, verbatim, from a folder whose `.unisid_home` is this test's home."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    home, _ = materialized
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    (tmp_path / ".unisid_home").symlink_to(home)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.search(r"ad_id\s+sid\s+embedding", out.stdout), out.stdout


def test_unisid_encode_gives_new_and_known_ads_their_sids_and_keeps_bad_rows(materialized, tmp_path, capsys):
    """`unisid encode` on an ads file: known ads get the SIDs the pipeline stored (raw, before resolution), a new
    ad gets one, a bad row is rejected with its reason into <out>.rejected.parquet; the output is Parquet."""
    from unisid_pipeline.cli.main import main

    home, _ = materialized
    db = paths.warehouse_path(home)
    known = warehouse.read_table(db, "raw_ads").head(2)
    new = known.head(1).with_columns(pl.lit(10_001).cast(known["ad_id"].dtype).alias("ad_id"),
                                     pl.lit("Brand-new ad never seen in training").alias("title"))
    bad = known.head(1).with_columns(pl.lit(10_002).cast(known["ad_id"].dtype).alias("ad_id"), pl.lit("  ").alias("title"))
    ads = tmp_path / "new_ads.jsonl"
    pl.concat([known, new, bad]).write_ndjson(ads)
    out = tmp_path / "sids.parquet"
    rc = main(["encode", "--ads", str(ads), "--out", str(out), "--model", "models:/unisid_tokenizer/latest",
               "--tracking-uri", paths.mlflow_uri(home)])
    assert rc == 0, capsys.readouterr().err
    got = pl.read_parquet(out)
    assert got["ad_id"].to_list() == [*known["ad_id"].to_list(), 10_001]
    stored = dict(zip(*warehouse.read_table(db, "unisid_sids").select("ad_id", "raw_codes").to_dict(as_series=False).values()))
    assert [got["sid"][i].to_list() for i in range(2)] == [stored[a] for a in known["ad_id"].to_list()]
    assert len(got["sid"][2]) == 3 and len(got["embedding"][2]) == 16
    rejected = pl.read_parquet(tmp_path / "sids.rejected.parquet")
    assert rejected.height == 1 and rejected["field"][0] == "title" and "empty" in rejected["reason"][0]
    assert "1 row(s)" in capsys.readouterr().err
    # a file that cannot be used: the ingestion readers' message and exit code 2, nothing written
    assert main(["encode", "--ads", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "x.parquet"),
                 "--tracking-uri", paths.mlflow_uri(home)]) == 2
    assert "missing.csv: file does not exist" in capsys.readouterr().err and not (tmp_path / "x.parquet").exists()


def test_a_new_version_that_is_not_the_champion_says_so(materialized, tmp_path):
    import shutil

    from unisid_pipeline.tracking import set_alias

    home, _ = materialized
    copy = tmp_path / "home"
    shutil.copytree(home, copy)
    set_alias(paths.mlflow_uri(copy), "rq_kmeans_tokenizer", "champion", "1")
    job = build_definitions(home=str(copy)).resolve_job_def("full_pipeline").get_subset(
        asset_selection={AssetKey("rq_kmeans_model")})
    cfg = {"ops": {"rq_kmeans_model": {"config": {**RUN_CONFIG["ops"]["rq_kmeans_model"]["config"], "seed": 7}}}}
    instance = DagsterInstance.ephemeral()
    result = job.execute_in_process(run_config=cfg, instance=instance)
    messages = [e.user_message for e in instance.all_logs(result.run_id)]
    assert any(m.startswith("rq_kmeans_tokenizer version 2 is not the champion: @champion still points at version 1")
               for m in messages), [m for m in messages if "registry" in m]
    # left-out or changed config files are not silent either: the run says what differs from the last one
    assert any(m.startswith("rq_kmeans_model runs with another config or data than its last materialization (seed 0 -> 7)")
               for m in messages), [m for m in messages if "config" in m]


def test_asset_checks_guard_the_sid_tables_and_the_summaries(materialized):
    _, result = materialized
    evals = {e.event_specific_data.check_name: e.event_specific_data.passed
             for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}
    for name in ("rq_kmeans_sids_distinct", "rq_vae_sids_distinct", "unisid_sids_distinct", "summaries_fallback_share",
                 "rq_kmeans_model_finite", "rq_vae_model_finite", "unisid_model_finite"):
        assert evals.get(name) is True, (name, evals)
    for method in ("rq_kmeans", "rq_vae", "unisid"):  # evaluated on every SID table (the demo's tiny codebooks pass)
        assert f"{method}_sids_utilization" in evals, evals


def test_a_sid_table_with_shared_sids_fails_its_blocking_check():
    from assets.analysis import sid_table_check

    check = sid_table_check("rq_vae")
    table = pl.DataFrame({"ad_id": [1, 2, 3], "codes": [[0, 1, 0], [0, 1, 0], [2, 3, 0]]})
    result = check(table)
    assert result.passed is False and result.metadata["ads_sharing_a_sid"].value == 1
    assert check.check_specs_by_output_name and all(s.blocking for s in check.check_specs)


def test_a_collapsed_sid_level_fails_its_utilization_check_and_a_diverged_tokenizer_blocks():
    import torch

    from assets.analysis import SidCheckThresholds, sid_utilization_check, tokenizer_model_check
    from unisid_pipeline.artifacts import TrainedTokenizer

    # level 1 uses 1 code of 256, level 2 all 256
    table = pl.DataFrame({"ad_id": list(range(256)), "raw_codes": [[0, i] for i in range(256)],
                          "codes": [[0, i] for i in range(256)]})
    result = sid_utilization_check("unisid")(table, SidCheckThresholds())
    assert result.passed is False and result.metadata["below_floor"].value == {"l1": 0.0039}
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    check = tokenizer_model_check("rq_vae")
    result = check(TrainedTokenizer(method="rq_vae", model=model, fingerprint="f"))
    assert result.passed is False and result.metadata["non_finite"].value == 1
    assert all(s.blocking for s in check.check_specs)


def test_unisid_recommend_and_evaluate_use_the_registered_recommender(materialized, tmp_path, capsys):
    """`unisid recommend`: a clicks file -> each user's top-k from the registered recommender, as its pyfunc gives them
    in process; a bad row is kept with its reason. `unisid evaluate`: leave-one-out on the clicks gives the test
    metrics the pipeline recorded for that model (the same split: last click held out)."""
    import json as json_

    import mlflow

    from unisid_pipeline.cli.main import main
    from unisid_pipeline.tracking import fluent_tracking_uri

    home, _ = materialized
    db, uri = paths.warehouse_path(home), paths.mlflow_uri(home)
    clicks = warehouse.read_table(db, "ad_interactions").select("user_id", "ad_id", "timestamp")
    few = clicks.filter(pl.col("user_id").is_in(clicks["user_id"].unique().sort().head(5).implode()))
    path = tmp_path / "clicks.csv"
    few.write_csv(path)
    with path.open("a") as f:
        f.write("7,not-a-number,5\n")
    out = tmp_path / "recs.parquet"
    assert main(["recommend", "--interactions", str(path), "--out", str(out), "--k", "5",
                 "--model", "models:/recommender_unisid/1", "--tracking-uri", uri]) == 0, capsys.readouterr().err
    got = pl.read_parquet(out)
    histories = few.sort("user_id", "timestamp").group_by("user_id", maintain_order=True).agg(pl.col("ad_id").alias("history"))
    assert got["user_id"].to_list() == histories["user_id"].to_list()
    with fluent_tracking_uri(uri):
        local = mlflow.pyfunc.load_model("models:/recommender_unisid/1").predict(histories.to_pandas(), params={"k": 5})
    assert [r.to_list() for r in got["ad_ids"]] == [list(map(int, r)) for r in local["ad_ids"]]
    rejected = pl.read_parquet(tmp_path / "recs.rejected.parquet")
    assert rejected.height == 1 and rejected["field"][0] == "ad_id"

    metrics = tmp_path / "metrics.json"
    clicks.write_parquet(tmp_path / "all.parquet")
    assert main(["evaluate", "--interactions", str(tmp_path / "all.parquet"), "--out", str(metrics),
                 "--model", "models:/recommender_unisid/1", "--tracking-uri", uri]) == 0, capsys.readouterr().err
    report = json_.loads(metrics.read_text())
    seed = int(MlflowClient(tracking_uri=uri).get_model_version("recommender_unisid", "1").tags["seed"])
    recorded = warehouse.read_object(home / "objects" / "recommender_unisid.safetensors")["results"].filter(pl.col("seed") == seed)
    assert report["users"] == warehouse.read_table(db, "user_sequences").height
    for k in ("recall@5", "recall@10", "ndcg@10"):
        assert report[k] == pytest.approx(recorded[k][0], abs=1e-4), k
    # a registry name that does not exist: one line naming it, exit code 2
    assert main(["evaluate", "--interactions", str(path), "--model", "models:/recommender_nope/1",
                 "--out", str(tmp_path / "nope.json"), "--tracking-uri", uri]) == 2
    assert "models:/recommender_nope/1" in capsys.readouterr().err


def test_the_readme_cli_examples_run_as_written(materialized, tmp_path):
    """The README's `unisid` block, verbatim, in a folder with its input files, on this test's home."""
    import re
    from pathlib import Path

    home, _ = materialized
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = next(b for b in re.findall(r"```bash\n(.*?)```", readme, re.S) if "unisid encode" in b)
    db = paths.warehouse_path(home)
    warehouse.read_table(db, "raw_ads").head(3).select("ad_id", "title").write_csv(tmp_path / "new_ads.csv")
    warehouse.read_table(db, "ad_interactions").select("user_id", "ad_id", "timestamp").write_csv(tmp_path / "clicks.csv")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env["UNISID_HOME"] = str(home)  # the venv points it at the checkout's .unisid_home; here: this test's home
    for line in [ln for ln in block.splitlines() if ln.strip()]:
        out = subprocess.run(line, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
        assert out.returncode == 0, (line, out.stderr[-3000:])
    assert pl.read_parquet(tmp_path / "new_sids.parquet").height == 3
    assert pl.read_parquet(tmp_path / "recs.parquet")["ad_ids"].list.len().max() == 10


def test_new_ads_get_unisid_sids_from_the_frozen_tokenizer_and_old_ones_never_change(materialized, tmp_path):
    """unisid_catalog_sids: ads added to raw_ads get SIDs from the stored UniSID (one forward pass, no retraining); a new
    ad whose text equals an existing ad's collides and gets a free code by the table's rule; every old row stays."""
    import shutil

    home, _ = materialized
    copy = tmp_path / "home"
    shutil.copytree(home, copy)
    db = paths.warehouse_path(copy)
    ads = warehouse.read_table(db, "raw_ads")
    before = warehouse.read_table(db, "unisid_catalog_sids")
    assert before.sort("ad_id").equals(warehouse.read_table(db, "unisid_sids").sort("ad_id"))  # nothing new yet
    twin = ads.head(1).with_columns(pl.lit(20_000).cast(ads["ad_id"].dtype).alias("ad_id"))  # same text as ad 1
    fresh = ads.slice(1, 1).with_columns(pl.lit(20_001).cast(ads["ad_id"].dtype).alias("ad_id"),
                                         pl.lit("An ad the tokenizer has never seen").alias("title"))
    warehouse.write_table(db, "raw_ads", pl.concat([ads, twin, fresh]))
    job = build_definitions(home=str(copy)).resolve_job_def("full_pipeline").get_subset(
        asset_selection={AssetKey("unisid_catalog_sids")})
    assert job.execute_in_process(instance=DagsterInstance.ephemeral()).success
    after = warehouse.read_table(db, "unisid_catalog_sids")
    assert after.filter(pl.col("ad_id") < 20_000).sort("ad_id").equals(before.sort("ad_id"))
    new = after.filter(pl.col("ad_id") >= 20_000).sort("ad_id")
    assert new["ad_id"].to_list() == [20_000, 20_001]
    original = before.filter(pl.col("ad_id") == ads["ad_id"][0])
    assert new["raw_codes"][0].to_list() == original["raw_codes"][0].to_list()  # same text, same raw SID...
    assert new["codes"][0].to_list() != original["codes"][0].to_list()  # ...resolved to a free one
    assert after["codes"].cast(pl.List(pl.Utf8)).list.join("-").is_unique().all()
    assert (after["model_version"] == before["model_version"][0]).all()
