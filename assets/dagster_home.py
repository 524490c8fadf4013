"""The first use of a Dagster home: its storages are created once, under a lock, before any command reads them.

Dagster creates its sqlite storages (run history, event logs, schedules) the first time an instance opens them and
stamps their schema version then. Two commands started at once on a fresh home (two `dagster asset materialize`, a
test run beside a UI) race there: one of the databases can end up with two schema heads, after which every command
fails ("Version table 'alembic_version' has more than one head present"). `ensure_instance` takes an exclusive
file lock, creates every storage in one process and leaves a marker; the venv's start-up hook
(`scripts/configure_venv.py`) calls it before any Python program of the venv runs while the marker is missing, so
the Dagster CLI, `dagster dev` and the tests all find the home ready. Dagster is imported only then.
"""
from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path

READY = ".unisid-instance-ready"
LOCK = ".unisid-instance.lock"
INSTANCE_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "dagster_instance.yaml"


def link_instance_config(dagster_home: str | os.PathLike, replace: bool = False) -> None:
    """Make `<dagster_home>/dagster.yaml` a link to the project's instance settings (configs/dagster_instance.yaml).

    An existing file is kept unless `replace`: a home with its own settings stays as it is. Without the link, Dagster
    would create the home with its defaults and say it found no dagster.yaml.
    """
    link = Path(dagster_home) / "dagster.yaml"
    if link.is_symlink() or link.exists():
        if not replace:
            return
        link.unlink()
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(INSTANCE_CONFIG)  # not ./dagster.yaml at the repo root: `dagster dev` would call it unused


def ensure_instance(dagster_home: str | os.PathLike) -> bool:
    """Create the Dagster instance storages of `dagster_home` unless its marker says they exist; True when this call
    created them. Safe to call from many processes at once: one creates, the others wait for it, then return."""
    home = Path(dagster_home)
    if (home / READY).exists():
        return False
    home.mkdir(parents=True, exist_ok=True)
    with open(home / LOCK, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes, also when this process dies
        if (home / READY).exists():
            return False
        link_instance_config(home)
        from dagster import DagsterInstance

        with DagsterInstance.from_config(str(home)) as instance:
            # touch each storage, so each creates its tables and stamps its schema now
            instance.get_runs(limit=1)
            instance.get_asset_keys()
            instance.all_instigator_state()
        (home / READY).write_text("created by assets.dagster_home.ensure_instance\n")
        return True


def ensure_instance_at_start_up() -> None:
    """The venv start-up hook's call: $DAGSTER_HOME's storages, created once; never breaks the program starting."""
    home = os.environ.get("DAGSTER_HOME")
    if not home or (Path(home) / READY).exists():
        return
    try:
        ensure_instance(home)
    except Exception as exc:  # a read-only or missing home: the program's own use of it will say what is wrong
        print(f"unisid_pipeline: could not prepare the Dagster home {home} ({type(exc).__name__}: {exc})", file=sys.stderr)
