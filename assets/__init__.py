"""Dagster wiring only: thin, noun-named assets, checks, resources and IO.

`build_definitions` is imported on first use, so a light module of this package (`assets.dagster_home`, which the
venv's start-up hook loads) does not pull in every asset.
"""
from __future__ import annotations

__all__ = ["build_definitions"]


def __getattr__(name: str):
    if name == "build_definitions":
        from assets.definitions import build_definitions

        return build_definitions
    raise AttributeError(f"module 'assets' has no attribute {name!r}")
