"""Plots of SID quality, one method per colour. Pure matplotlib (Agg canvas, no pyplot state).

Each function returns a `matplotlib.figure.Figure`; `save_png` writes one atomically.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from unisid_pipeline.analysis.sid_metrics import code_counts, codes_matrix, group_sizes  # noqa: E402


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _check_tables(tables: Mapping[str, pl.DataFrame], column: str) -> None:
    if not tables:
        raise ValueError("tables is empty: give {method: sid_table}")
    for method, table in tables.items():
        if column not in table.columns:
            raise ValueError(f"SID table of method {method!r} lacks column {column!r}")


def plot_bucket_sizes(tables: Mapping[str, pl.DataFrame], column: str = "raw_codes") -> Figure:
    """Histogram of SID bucket sizes (items per full SID, singletons included) per method, log y.

    Default `column="raw_codes"`: the collision groups before resolution. Integer bins up to size
    50, log-spaced bins (and log x) beyond.
    """
    _check_tables(tables, column)
    sizes = {m: group_sizes(t[column]) for m, t in tables.items()}
    max_size = max(int(s[0]) for s in sizes.values())
    if max_size <= 50:
        edges = np.arange(0.5, max_size + 1.5)
        log_x = False
    else:
        edges = np.unique(np.round(np.geomspace(1, max_size + 1, 50))) - 0.5
        edges = np.append(edges, max_size + 0.5) if edges[-1] < max_size + 0.5 else edges
        log_x = True
    fig = _new_figure(7, 4.5)
    ax = fig.add_subplot()
    for method, s in sizes.items():
        ax.hist(s, bins=edges, histtype="step", linewidth=1.5, label=f"{method} (max {int(s[0])})")
    ax.set_yscale("log")
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel("items per SID bucket")
    ax.set_ylabel("number of buckets")
    ax.set_title(f"SID bucket sizes ({column})")
    ax.legend(fontsize="small")
    return fig


def plot_codebook_usage(
    tables: Mapping[str, pl.DataFrame],
    codebook_size: int | Sequence[int] | None = None,
    column: str = "raw_codes",
) -> Figure:
    """Per level, sorted code counts (descending, log y) per method; utilization in the legend."""
    _check_tables(tables, column)
    arrs = {m: codes_matrix(t[column], column) for m, t in tables.items()}
    n_levels = max(a.shape[1] for a in arrs.values())
    fig = _new_figure(4.2 * n_levels, 4)
    axes = fig.subplots(1, n_levels, squeeze=False)[0]
    for level in range(1, n_levels + 1):
        ax = axes[level - 1]
        for method, arr in arrs.items():
            if arr.shape[1] < level:
                continue
            counts = code_counts(arr, level, codebook_size)
            used = np.sort(counts[counts > 0])[::-1]
            ax.plot(np.arange(1, used.size + 1), used, drawstyle="steps-mid", label=f"{method} ({used.size}/{counts.size})")
        ax.set_yscale("log")
        ax.set_xlabel("code rank")
        ax.set_ylabel("items")
        ax.set_title(f"level {level} codebook usage")
        ax.legend(fontsize="small")
    return fig


def plot_v_measure(reports: Mapping[str, Mapping[str, float]] | pl.DataFrame, variant: str = "") -> Figure:
    """Grouped bars: V-measure per level (x) by method (bars). `variant="_code"` plots the
    code-at-level variant. Accepts {method: sid_report} or the `compare_methods` frame."""
    if isinstance(reports, pl.DataFrame):
        if "method" not in reports.columns:
            raise ValueError("frame lacks column 'method': pass the output of compare_methods")
        reports = {row["method"]: row for row in reports.iter_rows(named=True)}
    if not reports:
        raise ValueError("reports is empty")
    levels = sorted(
        {
            int(key[1 : key.index("_")])
            for rep in reports.values()
            for key, val in rep.items()
            if key.startswith("l") and key.endswith(f"_v_measure{variant}") and val is not None
            and key[1 : key.index("_")].isdigit()
        }
    )
    if not levels:
        raise ValueError(f"no report holds l*_v_measure{variant}: run sid_report with labels")
    fig = _new_figure(max(5.0, 1.6 * len(levels) * max(1, len(reports)) / 2 + 2), 4)
    ax = fig.add_subplot()
    width = 0.8 / len(reports)
    x = np.arange(len(levels))
    for i, (method, rep) in enumerate(reports.items()):
        vals = [rep.get(f"l{lv}_v_measure{variant}") for lv in levels]
        vals = [np.nan if v is None else float(v) for v in vals]
        bars = ax.bar(x + (i - (len(reports) - 1) / 2) * width, vals, width, label=method)
        ax.bar_label(bars, fmt="%.3f", fontsize="x-small")
    ax.set_xticks(x, [f"L{lv}" for lv in levels])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("V-measure")
    ax.set_title("SID prefix V-measure vs category levels" if not variant else f"V-measure ({variant.strip('_')})")
    ax.legend(fontsize="small")
    return fig


def save_png(fig: Figure, path: str | os.PathLike[str], dpi: int = 120) -> Path:
    """Write `fig` as PNG to `path` atomically (temporary file in the same folder, then os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png", dpi=dpi)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
