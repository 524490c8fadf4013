"""The run-config files in configs/ are valid for the full graph: Dagster's schema and the launch-time value
check accept them, and the seed overlays change only the seeds (files listed later win, as on the CLI)."""
from pathlib import Path

import pytest
from dagster import validate_run_config
from dagster_shared.yaml_utils import load_yaml_from_glob_list

from assets import build_definitions
from assets.config import check_run_config, op_config_classes
from assets.definitions import ALL_ASSETS

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
CASES = [["cpu.yaml", "demo.yaml"], ["cpu.yaml", "demo.yaml", "unisid_paper.yaml"], ["beauty.yaml"], ["beauty.yaml", "gpu.yaml"], ["beauty.yaml", "gpu.yaml", "seed1.yaml"],
         ["beauty.yaml", "seed2.yaml"]]


@pytest.mark.parametrize("files", CASES, ids=["+".join(c) for c in CASES])
def test_config_files_are_valid_for_the_full_graph(files, tmp_path):
    run_config = load_yaml_from_glob_list([str(CONFIGS / f) for f in files])
    job = build_definitions(home=str(tmp_path)).resolve_job_def("full_pipeline")
    validate_run_config(job, run_config)  # raises DagsterInvalidConfigError on an unknown or mistyped field
    check_run_config(run_config, op_config_classes(ALL_ASSETS))


def test_seed_overlay_changes_only_the_seeds():
    files = [str(CONFIGS / f) for f in ("beauty.yaml", "gpu.yaml")]
    base = load_yaml_from_glob_list(files)["ops"]
    seeded = load_yaml_from_glob_list([*files, str(CONFIGS / "seed2.yaml")])["ops"]
    for op in ("unisid_model", "rq_kmeans_model", "rq_vae_model"):
        assert seeded[op]["config"] == {**base.get(op, {}).get("config", {}), "seed": 2}
    for m in ("rq_kmeans", "rq_vae", "unisid"):
        cfg = seeded[f"recommender_{m}"]["config"]
        assert cfg["seeds"] == [2] and cfg["model"] == base[f"recommender_{m}"]["config"]["model"]
    assert {k: v for k, v in seeded.items() if not k.startswith(("recommender_", "unisid_", "rq_"))} == \
           {k: v for k, v in base.items() if not k.startswith(("recommender_", "unisid_", "rq_"))}
