"""The Dagster code location (the only core module that may import Dagster wiring)."""
from assets import build_definitions

defs = build_definitions()
