"""bench/report.py: every bench CLI prints its table as markdown and logs it as a run of the MLflow experiment
`benchmarks`; logging never breaks a benchmark."""
import argparse
import importlib.util
import json
import math
import socket
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bench_report", REPO / "bench" / "report.py")
report = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = report  # (its dataclass looks its module up)
_spec.loader.exec_module(report)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench_mlflow")


@pytest.fixture
def tracked(store, monkeypatch) -> str:
    uri = f"sqlite:///{store / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv(report.ENV_SWITCH, raising=False)
    return uri


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-ads", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    report.add_report_args(parser)
    return parser.parse_args(argv)


def test_cells_are_rounded_for_people():
    cells = [0.061234, 12.34567, 1234.56, 1.2e-5, 0.0, 3, True, None, float("nan"), [0.5, 0.25], "a|b"]
    assert [report.format_cell(c) for c in cells] == [
        "0.0612", "12.3457", "1234.6", "1.2e-05", "0.0000", "3", "True", "-", "nan", "0.5000 / 0.2500", "a\\|b"]
    # columns in the order the rows give them; a key first seen in a later row goes last
    assert report.markdown([{"b": 1, "a": 2}, {"a": 3, "c": 4}]).splitlines() == [
        "| b | a | c |", "|---|---|---|", "| 1 | 2 | - |", "| - | 3 | 4 |"]


def test_emit_prints_the_table_and_logs_a_run(tracked, store, capsys):
    from mlflow import MlflowClient

    run_id = report.emit("unit_bench", [{"method": "x", "R@10": 0.061234, "train s": 1234.56, "n": 3}],
                         params={"note": "hi"}, title="setup line", args=_args(["--n-ads", "64"]))
    out, err = capsys.readouterr()
    assert out == "setup line\n\n| method | R@10 | train s | n |\n|---|---|---|---|\n| x | 0.0612 | 1234.6 | 3 |\n"
    assert run_id and "NOT logged" not in err

    client = MlflowClient(tracked)
    exp = client.get_experiment_by_name("benchmarks")
    assert exp is not None and exp.artifact_location.startswith(store.resolve().as_uri())  # beside the db, not ./mlruns
    run = client.get_run(run_id)
    assert run.info.experiment_id == exp.experiment_id and run.info.run_name == "unit_bench"
    assert run.info.status == "FINISHED"
    assert run.data.params == {"n_ads": "64", "device": "cpu", "note": "hi"}  # the script's args + params
    assert run.data.metrics["R_at_10"] == pytest.approx(0.061234) and run.data.metrics["n"] == 3
    tags = run.data.tags
    assert tags["unisid.bench"] == "unit_bench" and tags["mlflow.note.content"] == "setup line"
    assert {"unisid.host", "unisid.torch", "unisid.torch_cuda"} <= set(tags)
    if (REPO / ".git").exists():
        assert len(tags["mlflow.source.git.commit"]) == 40

    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"table.json", "table.md", "table.parquet"} <= names
    table = json.loads(Path(client.download_artifacts(run_id, "table.json", str(store))).read_text())
    assert table["columns"] == ["method", "R@10", "train s", "n"] and table["data"] == [["x", 0.061234, 1234.56, 3]]


def test_several_tables_one_run(tracked, store, capsys):
    from mlflow import MlflowClient

    rep = report.Report("unit_multi", {"k": [1, 2]})
    rep.table([{"split": "test", "R@10": 0.5}, {"split": "valid", "R@10": 0.4}])  # two rows: no metrics
    rep.table([{"bin": "share", "1": 0.25, "2-5": 0.5}], key="hit_ranks")
    run_id = rep.log()
    out = capsys.readouterr().out
    assert "| split | R@10 |" in out and "| bin | 1 | 2-5 |" in out
    run = MlflowClient(tracked).get_run(run_id)
    assert run.data.params == {"k": "[1, 2]"}
    assert run.data.metrics == {"hit_ranks/1": 0.25, "hit_ranks/2-5": 0.5}
    names = {a.path for a in MlflowClient(tracked).list_artifacts(run_id)}
    assert {"table.json", "hit_ranks.json", "hit_ranks.md"} <= names


def test_unreachable_server_does_not_raise(monkeypatch, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.delenv(report.ENV_SWITCH, raising=False)
    assert report.emit("unit_down", [{"a": 1.5}], args=_args([])) is None
    out, err = capsys.readouterr()
    assert out == "| a |\n|---|\n| 1.5000 |\n"
    assert len(err.strip().splitlines()) == 1 and "unit_down: results table NOT logged to MLflow" in err
    assert f"127.0.0.1:{port}" in err


@pytest.mark.parametrize("how", ["flag", "env"])
def test_logging_off(how, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # would fail loudly if it were tried
    if how == "env":
        monkeypatch.setenv(report.ENV_SWITCH, "0")
    args = _args(["--no-mlflow"] if how == "flag" else [])
    assert report.emit("unit_off", [{"a": math.pi}], args=args) is None
    out, err = capsys.readouterr()
    assert "| 3.1416 |" in out and err == ""
