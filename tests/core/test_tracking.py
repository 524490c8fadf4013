"""MLflow tracking helpers: one run never leaks its store into the next (mlflow.set_tracking_uri writes os.environ)."""
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
