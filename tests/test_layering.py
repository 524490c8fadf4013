"""Core modules import no Dagster or MLflow (except the code location, the tracking module and the MLflow pyfunc
wrapper of the registered models: `serving` and its models-from-code entries `pyfunc_tokenizer`, `pyfunc_recommender`)."""
import ast
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent / "unisid_pipeline"
ALLOWED = {"definitions.py": {"assets"}, "tracking.py": {"mlflow"}, "serving.py": {"mlflow"},
           "pyfunc_tokenizer.py": {"mlflow"}, "pyfunc_recommender.py": {"mlflow"}}
FORBIDDEN = {"dagster", "mlflow", "assets", "dagster_webserver", "dagster_mlflow"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_core_imports_no_dagster_or_mlflow():
    offenders = {}
    for path in CORE.rglob("*.py"):
        bad = (_imports(path) & FORBIDDEN) - ALLOWED.get(path.name if path.parent == CORE else "", set())
        if bad:
            offenders[str(path.relative_to(CORE))] = sorted(bad)
    assert not offenders, f"core modules import orchestration/tracking code: {offenders}"


def test_layering_check_detects_an_offender(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("import dagster\nfrom mlflow.tracking import MlflowClient\n")
    assert _imports(bad) & FORBIDDEN == {"dagster", "mlflow"}
