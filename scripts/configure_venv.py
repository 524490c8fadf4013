"""Make the venv find the project from any shell: DAGSTER_MODULE_NAME, DAGSTER_HOME and UNISID_HOME.

Writes (idempotently) a `.pth` start-up hook into the venv's site-packages, which sets the three
variables with os.environ.setdefault (values already in the environment win), and the same
exports into bin/activate. `dagster asset materialize --select X` then works from the repo root
without `-m`, activated or not (`.venv/bin/dagster ...`).
"""
from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

MARK = "# unisid_pipeline environment"


def main() -> None:
    repo = Path(__file__).resolve().parent.parent
    home = repo / ".unisid_home"
    dagster_home = home / "dagster"
    sys.path.insert(0, str(repo))
    from assets.dagster_home import link_instance_config  # imports no Dagster

    link_instance_config(dagster_home, replace=True)
    env = {
        "DAGSTER_MODULE_NAME": "unisid_pipeline.definitions",
        "DAGSTER_HOME": str(dagster_home),
        "UNISID_HOME": str(home),
    }
    site = Path(sysconfig.get_paths()["purelib"])
    pth = site / "unisid_pipeline_env.pth"
    body = "; ".join(f"os.environ.setdefault({k!r}, {v!r})" for k, v in env.items())
    # `dagster asset materialize` is the command this project documents; Dagster 1.13 calls it superseded by
    # `dg launch` on every call. The warning is filtered by its text (no dagster import at start-up).
    # Its selection parser also passes a beta parameter on every `--select '*'`: not ours to fix, filtered the same way.
    quiet = ("import warnings; warnings.filterwarnings('ignore', message='Function `asset_materialize_command` is superseded'); "
             "warnings.filterwarnings('ignore', message='Parameter `include_sources` of function')")
    # A fresh Dagster home gets its storages once, under a lock, before any program of the venv uses it: two
    # commands started at once on it would otherwise race Dagster's schema set-up (assets/dagster_home.py).
    ready = ("os.path.exists(os.path.join(os.environ['DAGSTER_HOME'], '.unisid-instance-ready')) or "
             "__import__('importlib.util').util.find_spec('assets.dagster_home') is None or "
             "__import__('assets.dagster_home').dagster_home.ensure_instance_at_start_up()")
    pth.write_text(f"import os; {body}; {quiet}; {ready}\n")
    activate = Path(sys.prefix) / "bin" / "activate"
    text = activate.read_text()
    if MARK in text:
        text = text[: text.index(MARK)].rstrip("\n") + "\n"
    exports = "\n".join(f'export {k}="${{{k}:-{v}}}"' for k, v in env.items())
    activate.write_text(f"{text}\n{MARK}\n{exports}\n")
    print(f"configured {pth} and {activate}: " + ", ".join(f"{k}={v}" for k, v in env.items()))


if __name__ == "__main__":
    main()
