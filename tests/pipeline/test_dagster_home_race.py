"""Several commands started at once on a fresh Dagster home never corrupt its storages.

Without the venv's start-up hook (`assets.dagster_home`), four processes opening a fresh home at once left
one of its sqlite databases with two schema heads in about one round of three here, after which every command failed
with "Version table 'alembic_version' has more than one head present".
"""
import sqlite3
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from assets.dagster_home import READY

REPO = Path(__file__).resolve().parents[2]
OPEN = "from dagster import DagsterInstance; i = DagsterInstance.get(); i.get_runs(limit=1); print('ok')"


@pytest.mark.skipif(not (Path(sysconfig.get_paths()["purelib"]) / "unisid_pipeline_env.pth").exists(),
                    reason="the venv start-up hook is installed by `make setup` (scripts/configure_venv.py)")
@pytest.mark.parametrize("round_", range(3))
def test_commands_started_together_on_a_fresh_dagster_home_leave_one_schema_head(tmp_path, round_):
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").symlink_to(REPO / "configs" / "dagster_instance.yaml")
    env = {"PATH": "/usr/bin:/bin", "DAGSTER_HOME": str(home), "HOME": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", OPEN], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(4)]
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and out.strip() == "ok", err[-2000:]
    assert (home / READY).exists()
    dbs = sorted(home.rglob("*.db"))
    assert dbs
    for db in dbs:
        with sqlite3.connect(db) as con:
            heads = con.execute("SELECT version_num FROM alembic_version").fetchall()
        assert len(heads) == 1, f"{db}: {heads}"


@pytest.mark.skipif(not (Path(sysconfig.get_paths()["purelib"]) / "unisid_pipeline_env.pth").exists(),
                    reason="the venv start-up hook is installed by `make setup` (scripts/configure_venv.py)")
def test_a_deleted_home_comes_back_with_the_project_instance_settings_and_no_warning(tmp_path):
    """`rm -rf .unisid_home` then any command: the hook links configs/dagster_instance.yaml before Dagster opens
    the home (it used to create it with Dagster's defaults, warning "No dagster instance configuration file")."""
    home = tmp_path / "dagster"
    env = {"PATH": "/usr/bin:/bin", "DAGSTER_HOME": str(home), "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", OPEN], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "No dagster instance configuration file" not in done.stderr
    assert (home / "dagster.yaml").resolve() == (REPO / "configs" / "dagster_instance.yaml").resolve()
