"""The project home folder: DuckDB warehouse, MLflow store, checkpoints and caches live under it."""
from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "UNISID_HOME"


def project_home(explicit: str | os.PathLike | None = None) -> Path:
    """Resolve the home folder: `explicit`, else $UNISID_HOME, else ./.unisid_home; absolute, created."""
    raw = explicit or os.environ.get(HOME_ENV) or ".unisid_home"
    home = Path(raw).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def warehouse_path(home: Path) -> Path:
    return home / "warehouse.duckdb"


def mlflow_uri(home: Path) -> str:
    return f"sqlite:///{home / 'mlflow.db'}"


def mlflow_artifacts(home: Path) -> Path:
    return home / "mlartifacts"


def cache_db(home: Path) -> Path:
    """Summary and embedding caches: a DuckDB file of their own, so cache connections never meet the warehouse's."""
    return home / "cache.duckdb"
