"""Dagster wiring only: thin, noun-named assets, checks, resources and IO."""
from __future__ import annotations

from assets.definitions import build_definitions

__all__ = ["build_definitions"]
