"""The project home folder: DuckDB warehouse, MLflow store, checkpoints and caches live under it."""
from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "UNISID_HOME"


def project_home(explicit: str | os.PathLike | None = None) -> Path:
    """Resolve the home folder: `explicit`, else $UNISID_HOME, else ./.unisid_home; absolute, created, writable.

    A home that cannot be created or written raises PermissionError / NotADirectoryError naming the folder and
    the fix, before any store (DuckDB, MLflow's sqlite) fails on it with its own bare error."""
    raw = explicit or os.environ.get(HOME_ENV) or ".unisid_home"
    home = Path(raw).expanduser().resolve()
    fix = f"or set {HOME_ENV} to a writable folder (export {HOME_ENV}=/path/to/folder)"
    try:
        home.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise NotADirectoryError(f"project home {home} is not a folder (a file is in its place or on its path): "
                                 f"move that file, {fix}") from None
    except PermissionError:
        parent = next((p for p in home.parents if p.exists()), home.parent)
        raise PermissionError(f"project home {home} cannot be created: {parent} is not writable. Fix: create it "
                              f"(mkdir -p {home}) as a user who may, {fix}") from None
    if not home.is_dir():
        raise NotADirectoryError(f"project home {home} is not a folder: {fix}")
    if not os.access(home, os.W_OK | os.X_OK):
        raise PermissionError(f"project home {home} is not writable (the warehouse, the MLflow store, checkpoints and "
                              f"caches are written there). Fix: chmod u+w {home} (or chown it to this user), {fix}")
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


def converted_models(home: Path) -> Path:
    """Converted copies of GGUF summary models (`llm.gguf_copy`): a cache, rebuilt when missing."""
    return home / "models"
