"""Materialization metadata a person would rather look at than read: counts, previews, plots."""
from __future__ import annotations

import base64
import io
from typing import Any

import polars as pl
from dagster import MetadataValue

from unisid_pipeline.tracking import TrackedRun


def rounded(v: float) -> float:
    """A float as a person reads it: 4 decimals below 100 (0.010666... -> 0.0107), 1 above (841.41 -> 841.4)."""
    return v if v != v or v in (float("inf"), float("-inf")) else round(v, 4 if abs(v) < 100 else 1)


def readable(metadata: dict[str, Any]) -> dict[str, Any]:
    """Materialization metadata with its plain floats rounded (see `rounded`); other values unchanged."""
    return {k: rounded(v) if isinstance(v, float) else v for k, v in metadata.items()}


def markdown_table(frame: pl.DataFrame, max_rows: int = 10, max_chars: int = 60) -> str:
    head = frame.head(max_rows)
    cols = head.columns

    def cell(v: Any) -> str:
        if isinstance(v, float):
            v = rounded(v)
        text = "" if v is None else str(v)
        text = text.replace("|", "\\|").replace("\n", " ")
        return text if len(text) <= max_chars else text[: max_chars - 1] + "…"

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in head.iter_rows():
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    if frame.height > max_rows:
        lines.append(f"\n_{frame.height - max_rows:,} more rows_")
    return "\n".join(lines)


_TABLE_TYPES = {pl.Int8: "int", pl.Int16: "int", pl.Int32: "int", pl.Int64: "int", pl.UInt8: "int", pl.UInt16: "int",
                pl.UInt32: "int", pl.UInt64: "int", pl.Float32: "float", pl.Float64: "float", pl.Boolean: "bool"}


def _cell(v: Any, max_chars: int) -> Any:
    if isinstance(v, float):
        return rounded(v)
    if v is None or isinstance(v, (int, bool)):
        return v
    text = " ".join(str(x) for x in v) if isinstance(v, (list, tuple)) else str(v)
    text = text.replace("\n", " ")
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def table_value(frame: pl.DataFrame, max_rows: int = 10, max_chars: int = 80) -> MetadataValue:
    """The first rows of `frame` as a Dagster table (typed columns, scrolls sideways in the UI, unlike Markdown);
    floats rounded for people, lists written space-separated, long text cut at `max_chars`."""
    from dagster import TableColumn, TableRecord, TableSchema

    head = frame.head(max_rows)
    schema = TableSchema(columns=[TableColumn(name, _TABLE_TYPES.get(dtype.base_type(), "string"))
                                  for name, dtype in head.schema.items()])
    records = [TableRecord({k: _cell(v, max_chars) for k, v in row.items()}) for row in head.iter_rows(named=True)]
    return MetadataValue.table(records=records, schema=schema)


def column_schema(frame: pl.DataFrame) -> MetadataValue:
    """The table's columns and polars types, shown in the asset's Overview (Dagster's `dagster/column_schema`)."""
    from dagster import TableColumn, TableSchema

    return MetadataValue.table_schema(TableSchema(columns=[TableColumn(n, str(t)) for n, t in frame.schema.items()]))


def table_metadata(frame: pl.DataFrame, preview_columns: list[str] | None = None) -> dict[str, Any]:
    view = frame.select(preview_columns) if preview_columns else frame
    return {
        "dagster/row_count": MetadataValue.int(frame.height),
        "dagster/column_schema": column_schema(frame),
        "preview": table_value(view),
    }


def run_metadata(run: TrackedRun, ui_url: str) -> dict[str, Any]:
    """The MLflow run's id and page, and its experiment's training runs. MLflow 3.17's UI opens an experiment on
    the (empty) GenAI overview whatever its `mlflow.experimentKind` tag says, unless the URL (or the browser's
    last choice of the top-left toggle) asks for `workflowType=machine_learning`: the link asks for it."""
    run_url = run.url(ui_url)
    experiment = run_url.rsplit("/runs/", 1)[0] + "/runs?workflowType=machine_learning"
    return {"mlflow_run_id": run.run_id, "mlflow_run": MetadataValue.url(run_url),
            "mlflow_experiment": MetadataValue.url(experiment)}


def _png_data_url(figure: Any) -> str:
    buf = io.BytesIO()
    figure.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def plots_metadata(figures: dict[str, Any]) -> dict[str, MetadataValue]:
    """All of an asset's plots as ONE Markdown metadata entry, `plots`, each under its name as a heading.

    Spread it first into the materialization's metadata: the asset page's Overview lists metadata in that order,
    so `plots` is the top row and one click on its "[Show Markdown]" opens every plot of the materialization in
    one dialog (a Markdown entry renders inline only under 1,000 characters, which no PNG fits; an image served
    from elsewhere would break whenever that server is down). Each plot is also the run's MLflow artifact."""
    sections = [f"#### {name.replace('_', ' ')}\n\n![{name}]({_png_data_url(fig)})" for name, fig in figures.items()]
    return {"plots": MetadataValue.md("\n\n".join(sections))}


def device_in_use(context, compute, requested: str, what: str) -> str:
    """The device `what` runs on (a stage's `device`; 'auto' = the `compute` resource's device, whose own
    'auto' = CUDA when present), said in the run's log and returned (e.g. "cuda"). A device that is not
    there fails with a clear error."""
    dev = compute.resolve(requested)
    chain = f"device '{requested}'" + (f", compute resource '{compute.device}'" if requested == "auto" else "")
    context.log.info(f"{what} runs on {dev} ({chain})")
    return dev
