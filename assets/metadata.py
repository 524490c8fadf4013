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


def table_metadata(frame: pl.DataFrame, preview_columns: list[str] | None = None) -> dict[str, Any]:
    view = frame.select(preview_columns) if preview_columns else frame
    return {
        "dagster/row_count": MetadataValue.int(frame.height),
        "preview": MetadataValue.md(markdown_table(view)),
    }


def run_metadata(run: TrackedRun, ui_url: str) -> dict[str, Any]:
    return {"mlflow_run_id": run.run_id, "mlflow_run": MetadataValue.url(run.url(ui_url))}


def figure_metadata(figure: Any) -> MetadataValue:
    """A matplotlib figure as an inline PNG in Markdown (shown in the Dagster UI)."""
    buf = io.BytesIO()
    figure.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    data = base64.b64encode(buf.getvalue()).decode()
    return MetadataValue.md(f"![plot](data:image/png;base64,{data})")


def device_in_use(context, compute, requested: str, what: str) -> str:
    """The device `what` runs on (a stage's `device`; 'auto' = the `compute` resource's device, whose own
    'auto' = CUDA when present), said in the run's log and returned (e.g. "cuda"). A device that is not
    there fails with a clear error."""
    dev = compute.resolve(requested)
    chain = f"device '{requested}'" + (f", compute resource '{compute.device}'" if requested == "auto" else "")
    context.log.info(f"{what} runs on {dev} ({chain})")
    return dev
