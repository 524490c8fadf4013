import dataclasses

import pytest

from assets.config import Ingestion, SyntheticWorld, to_core
from unisid_pipeline.data.ingest import IngestionConfig
from unisid_pipeline.data.synthetic import SyntheticWorldConfig

MIRRORS = [(SyntheticWorld, SyntheticWorldConfig), (Ingestion, IngestionConfig)]


def test_definitions_load_with_jobs_and_checks():
    from unisid_pipeline.definitions import defs

    repo = defs.get_repository_def()
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    assert {"raw_ads", "rejected_ads", "ad_interactions", "rejected_interactions", "user_sequences"} <= keys
    assert {"full_pipeline", "ingestion_job"} <= {j.name for j in repo.get_all_jobs()}
    assert len(list(repo.asset_graph.asset_check_keys)) >= 4


@pytest.mark.parametrize("mirror,core", MIRRORS)
def test_dagster_config_mirrors_core_dataclass(mirror, core):
    core_fields = {f.name for f in dataclasses.fields(core)}
    assert set(mirror.model_fields) == core_fields
    # defaults agree, so the launchpad shows what the core would do
    assert to_core(mirror(), core) == core()


def test_mirror_passes_values_through():
    cfg = Ingestion(synthetic=SyntheticWorld(n_ads=50, seed=9), timestamp_order="sort")
    core = to_core(cfg, IngestionConfig)
    assert core.synthetic.n_ads == 50 and core.synthetic.seed == 9 and core.timestamp_order == "sort"


def test_mlflow_ui_base_url_is_configurable(monkeypatch):
    from assets.resources import MlflowTracking

    monkeypatch.delenv("UNISID_MLFLOW_UI_URL", raising=False)
    assert MlflowTracking().ui_base == "http://127.0.0.1:5000"  # make mlflow-ui
    monkeypatch.setenv("UNISID_MLFLOW_UI_URL", "http://mlflow.internal:8080/")
    assert MlflowTracking().ui_base == "http://mlflow.internal:8080"
    assert MlflowTracking(ui_url="http://other:5001").ui_base == "http://other:5001"  # resource config wins


def _core_configs():
    from unisid_pipeline.embeddings import TextEncoderConfig
    from unisid_pipeline.llm import SummarizerConfig
    from unisid_pipeline.models.rq import RQKMeansConfig, RQVAEConfig
    from unisid_pipeline.recommender import RecommenderConfig
    from unisid_pipeline.unisid import UniSIDTrainConfig

    return [SummarizerConfig, TextEncoderConfig, RQKMeansConfig, RQVAEConfig, UniSIDTrainConfig, RecommenderConfig]


@pytest.mark.parametrize("core", _core_configs(), ids=lambda c: c.__name__)
def test_generated_launchpad_configs_mirror_their_core_dataclass(core):
    """The launchpad shows exactly the core fields with the core defaults (nested configs included)."""
    from assets.config import mirror

    generated = mirror(core)
    assert set(generated.model_fields) == {f.name for f in dataclasses.fields(core)}
    assert to_core(generated(), core) == core()


def test_every_launchpad_field_is_described():
    """Each run config field shown in the launchpad has its own description (the core field's attribute docstring
    for mirrored configs), none of them the generic pointer."""
    from dagster import Config

    from assets.config import op_config_classes
    from assets.definitions import ALL_ASSETS

    undescribed = []

    def walk(cls, where):
        for name, f in cls.model_fields.items():
            if not f.description or "see unisid_pipeline docs" in f.description:
                undescribed.append(f"{where}.{name}")
            if isinstance(f.annotation, type) and issubclass(f.annotation, Config):
                walk(f.annotation, f"{where}.{name}")

    for op, cls in op_config_classes(ALL_ASSETS).items():
        walk(cls, op)
    assert not undescribed, undescribed


def test_every_place_that_names_the_code_location_names_the_same_module():
    """`dagster` reads pyproject's [tool.dagster] (or workspace.yaml), `dg` reads [tool.dg.project], and the venv's
    start-up hook sets DAGSTER_MODULE_NAME: a module renamed in one of them would load another code location, or none."""
    import re
    import sysconfig
    import tomllib
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2]
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    workspace = yaml.safe_load((root / "workspace.yaml").read_text())["load_from"][0]["python_module"]
    named = {
        "pyproject [tool.dagster]": pyproject["tool"]["dagster"]["module_name"],
        "pyproject [tool.dg.project]": pyproject["tool"]["dg"]["project"]["code_location_target_module"],
        "workspace.yaml": workspace["module_name"],
    }
    pth = Path(sysconfig.get_paths()["purelib"]) / "unisid_pipeline_env.pth"
    if pth.exists():  # written by `make setup` (scripts/configure_venv.py)
        named["the venv's .pth"] = re.search(r"'DAGSTER_MODULE_NAME', '([^']+)'", pth.read_text()).group(1)
    assert set(named.values()) == {"unisid_pipeline.definitions"}, named
    names = {pyproject["tool"]["dagster"]["code_location_name"], pyproject["tool"]["dg"]["project"]["code_location_name"],
             workspace["location_name"]}
    assert names == {"unisid_pipeline"}
