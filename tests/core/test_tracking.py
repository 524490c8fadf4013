"""MLflow tracking helpers: one run never leaks its store into the next (mlflow.set_tracking_uri writes os.environ);
system metrics follow a run and stop with it."""
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
