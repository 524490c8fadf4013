"""Results tables of the bench/ CLIs: printed as markdown and logged as one run of the MLflow experiment `benchmarks`.

    from bench.report import add_report_args, emit

    add_report_args(parser)                        # --no-mlflow
    args = parser.parse_args()
    ...
    emit("bench_x", rows, args=args, title="what was measured, on what")   # rows: list of dicts, one per table row

`emit` prints `title` (when given), a blank line and the rows as a markdown table (columns in the order the dicts
give them; floats rounded for people: 4 decimals below 100, 1 decimal from 100, 4 significant digits below 0.001),
then logs one MLflow run into the experiment `benchmarks` (created if missing) at $MLFLOW_TRACKING_URI, else the
project home's store (`make mlflow-ui`, experiment benchmarks):

- run name: the benchmark's name; description: `title`;
- params: the script's arguments (`args`, flattened and stringified) and `params`;
- tags: git commit (and whether the checkout was dirty), host, torch / numpy / CUDA build, the command line;
- metrics: the numeric cells of a one-row table;
- artifacts: the table as `table.json` (MLflow's table format: the UI shows it, runs can be compared), `table.parquet`
  (where its columns have one type each) and `table.md`, and the files in `artifacts`.

Scripts with several tables use `Report`: `rep.table(rows, key=...)` once per table (printed at once; logged as
`<key>.json` / `.md`, a one-row table's metrics named `<key>/<column>`), then `rep.log()` for the one run.

Logging never breaks a benchmark: when it fails (no write access, server down) one line on stderr says the table
was not logged and why, and the script goes on. `--no-mlflow` or UNISID_BENCH_MLFLOW=0 turns it off.
"""
from __future__ import annotations

import argparse
import json
import math
import numbers
import os
import re
import shlex
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXPERIMENT = "benchmarks"
ENV_SWITCH = "UNISID_BENCH_MLFLOW"  # 0 / false / no / off: do not log
MAIN_KEY = "table"


def add_report_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add --no-mlflow to a benchmark's argument parser."""
    parser.add_argument("--no-mlflow", action="store_true",
                        help=f"do not log the results table to the MLflow experiment '{EXPERIMENT}' "
                             f"(also: {ENV_SWITCH}=0)")
    return parser


def logging_enabled(args: argparse.Namespace | None = None) -> bool:
    if args is not None and getattr(args, "no_mlflow", False):
        return False
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


# ---------------------------------------------------------------------------------------------- markdown


def format_cell(value: Any) -> str:
    """A cell for people: floats 4 decimals below 100 (4 significant digits below 0.001), 1 decimal from 100."""
    if value is None:
        return "-"
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return str(bool(value))
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        x = float(value)
        if not math.isfinite(x):
            return str(x)
        if abs(x) >= 100:
            return f"{x:.1f}"
        if x != 0 and abs(x) < 0.001:
            return f"{x:.4g}"
        return f"{x:.4f}"
    if isinstance(value, (list, tuple)):
        return " / ".join(format_cell(v) for v in value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The column names in the order the rows give them (a key first seen in a later row goes last)."""
    out: dict[str, None] = {}
    for row in rows:
        out.update(dict.fromkeys(row))
    return list(out)


def markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    cols = columns(rows)
    if not cols:
        return "(no rows)"
    lines = ["| " + " | ".join(format_cell(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(format_cell(row.get(c)) for c in cols) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- the report


@dataclass
class _Table:
    key: str
    rows: list[dict[str, Any]]
    title: str | None
    text: str


class Report:
    """The tables of one benchmark invocation, logged together as one MLflow run by `log`."""

    def __init__(self, name: str, params: Mapping[str, Any] | None = None, *,
                 args: argparse.Namespace | None = None) -> None:
        self.name = name
        self.params = dict(params or {})
        self.args = args
        self.tables: list[_Table] = []
        self.texts: dict[str, str] = {}

    def table(self, rows: Iterable[Mapping[str, Any]], title: str | None = None, key: str = MAIN_KEY,
              show: bool = True) -> str:
        """Print `title`, a blank line and the markdown table (show=False: the caller prints it) and keep it for
        `log`; returns the printed text."""
        rows = [dict(r) for r in rows]
        if any(t.key == key for t in self.tables):
            raise ValueError(f"{self.name}: a table {key!r} was added already")
        text = (f"{title}\n\n" if title else "") + markdown(rows)
        if show:
            print(text, flush=True)
        self.tables.append(_Table(key, rows, title, text))
        return text

    def attach_text(self, text: str, artifact_file: str) -> None:
        """Log `text` as the artifact `artifact_file` with the run (e.g. a profiler table printed beside the tables)."""
        self.texts[artifact_file] = text

    def log(self, artifacts: Iterable[str | os.PathLike] = ()) -> str | None:
        """Log the tables as one run of the experiment `benchmarks`; its run id, or None (off, or failed: one
        line on stderr)."""
        if not logging_enabled(self.args) or not self.tables:
            return None
        uri = "?"
        try:
            uri, root = tracking_target()
            return _log_run(self, uri, root, [Path(a) for a in artifacts])
        except Exception as exc:  # never break a benchmark over its bookkeeping
            message = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:600] if str(exc) else type(exc).__name__
            try:
                from unisid_pipeline.tracking import redact_text, redact_uri

                message, uri = redact_text(message, uri), redact_uri(uri)
            except Exception:
                pass
            print(f"{self.name}: results table NOT logged to MLflow (experiment {EXPERIMENT!r} at {uri}): {message}",
                  file=sys.stderr, flush=True)
            return None


def emit(name: str, rows: Iterable[Mapping[str, Any]], params: Mapping[str, Any] | None = None,
         title: str | None = None, artifacts: Iterable[str | os.PathLike] = (), *,
         args: argparse.Namespace | None = None) -> str | None:
    """Print `rows` as a markdown table (after `title`) and log them as one run of the MLflow experiment
    `benchmarks` (module docstring); the run id, or None when not logged."""
    rep = Report(name, params, args=args)
    rep.table(rows, title=title)
    return rep.log(artifacts)


# ---------------------------------------------------------------------------------------------- MLflow


def tracking_target() -> tuple[str, Path | None]:
    """(tracking URI, artifact root for a new experiment): $MLFLOW_TRACKING_URI (a sqlite store keeps its artifacts
    beside its file, not in ./mlruns), else the project home's store and artifact folder."""
    from unisid_pipeline import paths

    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not uri:
        home = paths.project_home(None)
        return paths.mlflow_uri(home), paths.mlflow_artifacts(home)
    if uri.startswith("sqlite:///") and not uri.endswith(":memory:"):
        db = Path(uri[len("sqlite:///"):].split("?", 1)[0]).resolve()
        db.parent.mkdir(parents=True, exist_ok=True)
        return uri, db.parent / "mlartifacts"
    return uri, None


def _name(text: str) -> str:
    """A valid MLflow param / metric name."""
    text = text.replace("@", "_at_").replace("%", "pct")
    text = re.sub(r"[^/\w.\- :]", "_", text)
    text = re.sub(r"/+", "/", text).strip("/ ") or "_"
    return text


def _plain(value: Any) -> Any:
    """JSON-friendly: numpy scalars to Python, paths to str."""
    if hasattr(value, "item") and not isinstance(value, (list, tuple, dict, str)):
        try:
            return value.item()
        except (TypeError, ValueError):
            pass
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _param_values(rep: Report) -> dict[str, Any]:
    raw = {k: v for k, v in vars(rep.args).items() if k != "no_mlflow"} if rep.args is not None else {}
    raw.update(rep.params)
    return {_name(str(k)): _plain(v) for k, v in raw.items()}


def _metrics(table: _Table) -> dict[str, float]:
    if len(table.rows) != 1:
        return {}
    prefix = "" if table.key == MAIN_KEY else f"{table.key}/"
    out = {}
    for k, v in table.rows[0].items():
        if isinstance(v, bool) or type(v).__name__ == "bool_" or not isinstance(v, numbers.Real):
            continue
        if math.isfinite(float(v)):
            out[_name(prefix + str(k))] = float(v)
    return out


def _log_run(rep: Report, uri: str, root: Path | None, artifacts: list[Path]) -> str:
    import logging

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # a failing server: a few seconds, not minutes
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")

    from unisid_pipeline.seeding import environment_tags
    from unisid_pipeline.tracking import open_run

    for noisy in ("alembic", "mlflow"):  # a new sqlite store's migrations log at INFO (mlflow sets its level on import)
        logging.getLogger(noisy).setLevel(logging.WARNING)
    notes = "\n\n".join(t.title.strip() for t in rep.tables if t.title and t.title.strip())
    tags = {**environment_tags(), "unisid.bench": rep.name, "mlflow.source.name": sys.argv[0],
            "mlflow.source.type": "LOCAL", "unisid.command": shlex.join([sys.executable, *sys.argv])[:4000]}
    if notes:
        tags["mlflow.note.content"] = notes[:4000]
    with open_run(uri, EXPERIMENT, rep.name, tags, params=_param_values(rep), artifact_root=root) as run:
        metrics: dict[str, float] = {}
        for table in rep.tables:
            metrics.update(_metrics(table))
            _log_table(run, table)
        if metrics:
            run.log_metrics(metrics)
        for artifact_file, text in rep.texts.items():
            run.log_text(text, artifact_file)
        for path in artifacts:
            if path.is_file():
                run.log_artifact(path)
            elif path.is_dir():
                run.client.log_artifacts(run.run_id, str(path), path.name)
        return run.run_id


def _log_table(run: Any, table: _Table) -> None:
    cols = columns(table.rows)
    data = {c: [_plain(r.get(c)) for r in table.rows] for c in cols}
    try:  # MLflow's table artifact (the UI renders it and compares runs on it)
        run.client.log_table(run.run_id, data=data, artifact_file=f"{table.key}.json")
    except Exception:  # cells pandas will not take: plain records
        run.log_dict({"columns": cols, "rows": [{c: _plain(r.get(c)) for c in cols} for r in table.rows]},
                     f"{table.key}.json")
    run.log_text(table.text.strip() + "\n", f"{table.key}.md")
    try:
        import polars as pl

        frame = pl.DataFrame(data, strict=True)
    except Exception:  # mixed cell types in a column: the JSON holds the table
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{table.key}.parquet"
        frame.write_parquet(path)
        run.log_artifact(path)
