"""Side-by-side tables and plots of methods evaluated over several seeds."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl


def summarize_runs(per_seed: pl.DataFrame, metrics: Sequence[str], group: str = "method") -> pl.DataFrame:
    """Mean, sample std and count over seeds for each metric, one row per `group` value (input order kept)."""
    missing = [m for m in (group, *metrics) if m not in per_seed.columns]
    if missing:
        raise ValueError(f"per-seed table lacks columns {missing}")
    aggs = [pl.len().alias("n_seeds")]
    for m in metrics:
        aggs += [pl.col(m).mean().alias(f"{m}_mean"), pl.col(m).std(ddof=1).fill_null(0.0).alias(f"{m}_std")]
    return per_seed.group_by(group, maintain_order=True).agg(aggs)


def format_mean_std(table: pl.DataFrame, metrics: Sequence[str], digits: int = 4) -> pl.DataFrame:
    """`method` plus one "mean ± std" text column per metric."""
    return table.select(
        "method",
        *[pl.format("{} ± {}", pl.col(f"{m}_mean").round(digits), pl.col(f"{m}_std").round(digits)).alias(m) for m in metrics],
    )


def comparison_figure(table: pl.DataFrame, metrics: Sequence[str], title: str):
    """Grouped bars (one group per metric, one bar per method) with std error bars."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    methods = table["method"].to_list()
    width = 0.8 / max(1, len(methods))
    xs = np.arange(len(metrics))
    for i, method in enumerate(methods):
        row = table.row(i, named=True)
        ax.bar(xs + i * width, [row[f"{m}_mean"] for m in metrics], width,
               yerr=[row[f"{m}_std"] for m in metrics], capsize=3, label=method)
    ax.set_xticks(xs + width * (len(methods) - 1) / 2, list(metrics))
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
