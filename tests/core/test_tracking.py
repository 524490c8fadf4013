"""MLflow tracking helpers: one run never leaks its store into the next (mlflow.set_tracking_uri writes os.environ);
system metrics follow a run and stop with it."""
import pytest
import os

from unisid_pipeline.tracking import open_run


def test_a_run_does_not_leave_its_tracking_uri_in_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with open_run(f"sqlite:///{tmp_path / 'a.db'}", "exp", "a", {}) as run:
        assert run.run_id
    assert "MLFLOW_TRACKING_URI" not in os.environ  # the next run's default store is still its own home
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///chosen-by-the-user.db")
    with open_run(f"sqlite:///{tmp_path / 'a.db'}", "exp", "b", {}):
        pass
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///chosen-by-the-user.db"


def test_a_long_run_gets_system_metrics_and_a_short_one_ends_at_once(tmp_path):
    import time

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with open_run(uri, "e", "long", {}, system_metrics_s=0.2) as run:
        time.sleep(1.0)
    t0 = time.perf_counter()
    with open_run(uri, "e", "short", {}, system_metrics_s=10.0):
        pass
    assert time.perf_counter() - t0 < 5  # the monitor stops with the run, not after its sampling interval
    metrics = MlflowClient(tracking_uri=uri).get_run(run.run_id).data.metrics
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(metrics)


def test_a_pickled_registered_version_is_refused_without_being_unpickled(tmp_path, monkeypatch):
    """A version stored as a pickle (mlflow.pytorch, the format before pyfunc + safetensors) would run whatever code
    its pickle names when loaded: loading it through the project fails with advice, and nothing is unpickled."""
    import pickle

    import mlflow
    import pytest
    import torch
    from mlflow import pytorch as mlflow_pytorch

    from unisid_pipeline.tracking import fluent_tracking_uri, load_registered_model

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with open_run(uri, "exp", "old", {}, artifact_root=tmp_path / "artifacts") as run, fluent_tracking_uri(uri):
        with mlflow.start_run(run_id=run.run_id):
            info = mlflow_pytorch.log_model(torch.nn.Linear(2, 2), name="model", serialization_format="pickle")
        mlflow.register_model(info.model_uri, "rq_kmeans_tokenizer")
    calls = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append("torch.load"))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: calls.append("pickle.load"))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: calls.append("pickle.loads"))
    with pytest.raises(RuntimeError, match="pickled object .* not loaded, because unpickling runs arbitrary code. "
                                           "Re-materialize its asset"):
        load_registered_model(uri, "models:/rq_kmeans_tokenizer/1")
    assert calls == []


def test_a_run_says_how_its_params_differ_from_the_last_run_of_the_same_step(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    step = {"dagster.asset_key": "unisid_model", "dagster.step": "unisid_model"}
    on = ("dagster.asset_key", "dagster.step")
    with open_run(uri, "e", "first", step, {"epochs": 2, "train": {"amp": True}}, compare_on=on) as run:
        assert run.config_changes is None  # nothing to compare with yet
    with open_run(uri, "e", "same", step, {"epochs": 2, "train": {"amp": True}}, compare_on=on) as run:
        assert run.config_changes is None
    with open_run(uri, "e", "other step", {**step, "dagster.step": "x"}, {"epochs": 9}, compare_on=on) as run:
        assert run.config_changes is None  # another step's runs are not compared
    with open_run(uri, "e", "changed", step, {"epochs": 10, "train": {"amp": False}}, compare_on=on) as run:
        assert run.config_changes == "epochs 2 -> 10, train.amp true -> false"


def test_a_cloudpickled_pyfunc_version_is_refused_too(tmp_path):
    """Only pyfunc models from code load: a PythonModel object that MLflow cloudpickled is refused unloaded."""
    import mlflow
    import pytest

    from unisid_pipeline.tracking import fluent_tracking_uri, load_registered_model

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input: list[str], params=None) -> list[str]:
            return model_input

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with open_run(uri, "exp", "foreign", {}, artifact_root=tmp_path / "artifacts") as run, fluent_tracking_uri(uri):
        with mlflow.start_run(run_id=run.run_id):
            info = mlflow.pyfunc.log_model(name="model", python_model=Echo())
        mlflow.register_model(info.model_uri, "unisid_tokenizer")
    with pytest.raises(RuntimeError, match="loader mlflow.pyfunc.model.*it is not loaded"):
        load_registered_model(uri, "models:/unisid_tokenizer/1")


def test_redact_uri_masks_user_info_and_secret_query_values_only():
    from unisid_pipeline.tracking import redact_text, redact_uri

    assert redact_uri("https://alice:pw@mlflow.example:5000/path?x=1") == "https://***@mlflow.example:5000/path?x=1"
    assert redact_uri("http://h:5000/?access_token=abc&run=7") == "http://h:5000/?access_token=***&run=7"
    for plain in ("sqlite:////tmp/home/mlflow.db", "http://127.0.0.1:5000", "file:///x/mlruns", "databricks"):
        assert redact_uri(plain) == plain
    uri = "https://alice:p%40ss@h/?token=t0k3n"
    msg = f"API request to {uri}api/2.0 failed; auth alice:p@ss, token t0k3n"
    safe = redact_text(msg, uri)
    assert "p%40ss" not in safe and "p@ss" not in safe and "t0k3n" not in safe and "https://***@h/" in safe


def test_open_run_errors_and_run_links_never_carry_credentials(tmp_path):
    import socket

    from unisid_pipeline.tracking import TrackedRun, check_tracking_uri

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://alice:hunter2@127.0.0.1:{port}"
    with pytest.raises(ConnectionError) as info:
        check_tracking_uri(uri)
    assert "hunter2" not in str(info.value) and "***@127.0.0.1" in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    run = TrackedRun(run_id="r1", experiment_id="1", tracking_uri="sqlite:///x.db")
    assert run.url("https://bob:pw9@ui.example") == "https://***@ui.example/#/experiments/1/runs/r1"
