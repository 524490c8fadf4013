import os
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")
# Tiny test models: one thread avoids oversubscription overhead (small ops were ~1000x slower
# with 2 threads on a loaded 2-core machine) and keeps CPU results deterministic.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent
BEAUTY_DIR = REPO.parent / "shared" / "data" / "amazon-beauty-2014"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh project home; the environment points at it so nothing touches the developer's home."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("UNISID_HOME", str(h))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return h


@pytest.fixture
def beauty_dir() -> Path:
    if not (BEAUTY_DIR / "sequential_data.txt").exists():
        pytest.skip(f"Amazon Beauty data not found at {BEAUTY_DIR} (it lives in ../shared/data beside the repo)")
    return BEAUTY_DIR


@pytest.fixture(autouse=True, scope="session")
def _tmp_dirs_are_input_roots(tmp_path_factory):
    """Ingestion reads only files under the working directory and $UNISID_INPUT_ROOTS (IngestionConfig.allowed_roots);
    tests write their input files under pytest's temp folder and read Amazon Beauty from ../shared/data, so both
    are input roots for the whole session (the temp folder last: tests take it from there)."""
    old = os.environ.get("UNISID_INPUT_ROOTS")
    os.environ["UNISID_INPUT_ROOTS"] = os.pathsep.join(filter(None, [old, str(BEAUTY_DIR.parent),
                                                                     str(tmp_path_factory.getbasetemp())]))
    yield
    if old is None:
        os.environ.pop("UNISID_INPUT_ROOTS", None)
    else:
        os.environ["UNISID_INPUT_ROOTS"] = old
