"""The product as a person uses it: `dagster dev` and `mlflow ui` in a real (headless) Chromium.

Starts both servers on loopback with a temporary project home, opens the asset graph and the
asset catalog, launches the ingestion job from the UI and waits for its success, then finds the
ingestion's MLflow run and a registered tokenizer in the MLflow UI. Screenshots go to
$UNISID_TEST_ARTIFACTS (default tests/artifacts/, git-ignored).

Needs Debian's chromium (`apt-get install -y chromium chromium-driver`) and playwright (test extra).
"""
from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from ui_servers import free_port, server, wait_http

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
TIMEOUT_MS = 90_000

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
if not os.path.exists(CHROMIUM):
    pytest.skip(f"no chromium at {CHROMIUM}: apt-get install -y chromium chromium-driver", allow_module_level=True)

ALL_ASSETS = ("raw_ads", "rejected_ads", "ad_interactions", "rejected_interactions", "user_sequences", "ad_summaries",
              "ad_text_embeddings", "ad_hierarchy_labels", "rq_kmeans_model", "rq_vae_model", "unisid_model",
              "rq_kmeans_sids", "rq_vae_sids", "unisid_sids", "unisid_embeddings", "sid_collision_report",
              "recommender_rq_kmeans", "recommender_rq_vae", "recommender_unisid", "downstream_eval",
              "embedding_retrieval_eval", "rq_kmeans_catalog_sids", "rq_vae_catalog_sids", "unisid_catalog_sids")


def artifacts_dir() -> Path:
    d = Path(os.environ.get("UNISID_TEST_ARTIFACTS") or REPO / "tests" / "artifacts")
    d.mkdir(parents=True, exist_ok=True)
    return d


def register_tiny_tokenizer(home: Path) -> str:
    """A real (tiny) RQ-KMeans tokenizer in the MLflow registry, through the same core code the assets use."""
    from unisid_pipeline import paths
    from unisid_pipeline.artifacts import behaviour_fingerprint
    from unisid_pipeline.models.rq import RQKMeansConfig, fit_rq_kmeans
    from unisid_pipeline.tracking import open_run, register_if_changed

    x = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
    cfg = RQKMeansConfig(n_levels=2, codebook_size=4, n_iter=5)
    model, _ = fit_rq_kmeans(cfg, x, seed=0, device="cpu")
    with open_run(paths.mlflow_uri(home), "unisid_pipeline", "browser-test-tokenizer", {"source": "browser test"},
                  artifact_root=paths.mlflow_artifacts(home)) as run:
        fingerprint = behaviour_fingerprint({"method": "rq_kmeans"}, model.encode(x))
        register_if_changed(run, model.cpu().eval(), "model", "rq_kmeans_tokenizer", fingerprint)
    return "rq_kmeans_tokenizer"


def record_plot_materialization(dagster_home: Path) -> None:
    """A loss-curve plot as the training assets attach it (assets.metadata.figure_metadata), recorded as a
    runless materialization of rq_vae_model, so the test can check that such plots render in the UI."""
    from dagster import AssetMaterialization, DagsterInstance

    from assets.metadata import figure_metadata
    from assets.tokenizers import loss_figure

    fig = loss_figure({"epoch": [1, 2, 3], "loss": [1.0, 0.5, 0.3]}, "epoch", ["loss"], "browser test")
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        instance.report_runless_asset_event(AssetMaterialization("rq_vae_model", metadata={
            "loss_curve": figure_metadata(fig)}))


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    root = tmp_path_factory.mktemp("ui")
    home, dagster_home, logs = root / "home", root / "dagster_home", artifacts_dir() / "logs"
    home.mkdir()
    dagster_home.mkdir()
    shutil.copy(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    record_plot_materialization(dagster_home)
    d_port, m_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(UNISID_HOME=str(home), DAGSTER_HOME=str(dagster_home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               UNISID_MLFLOW_UI_URL=f"http://127.0.0.1:{m_port}",  # run links in asset metadata point at this UI
               DAGSTER_MODULE_NAME="")  # dev reads [tool.dagster]; the module variable makes it hang
    bin_dir = Path(sys.executable).parent
    dagster_cmd = [str(bin_dir / "dagster"), "dev", "-h", "127.0.0.1", "-p", str(d_port)]
    mlflow_cmd = [str(bin_dir / "mlflow"), "ui", "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
                  "--host", "127.0.0.1", "--port", str(m_port), "--workers", "1"]
    # dagster dev is the slow one to start: the registry is filled while it boots, before mlflow ui opens the store
    with server(dagster_cmd, env, REPO, logs / "dagster.log") as dagster_proc:
        # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI: keep it from leaking into later tests
        before = os.environ.get("MLFLOW_TRACKING_URI")
        try:
            registered = register_tiny_tokenizer(home)
        finally:
            if before is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = before
        with server(mlflow_cmd, env, REPO, logs / "mlflow.log") as mlflow_proc:
            wait_http(f"http://127.0.0.1:{m_port}/health", mlflow_proc, logs / "mlflow.log", 120)
            wait_http(f"http://127.0.0.1:{d_port}/server_info", dagster_proc, logs / "dagster.log", 180)
            yield {"dagster": f"http://127.0.0.1:{d_port}", "mlflow": f"http://127.0.0.1:{m_port}",
                   "registered": registered, "home": home}


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1600, "height": 1000})
    ctx.set_default_timeout(TIMEOUT_MS)
    pg = ctx.new_page()
    dismiss_dagster_dialogs(pg)
    try:
        yield pg
    finally:
        ctx.close()


def dismiss_dagster_dialogs(page) -> None:
    """Dagster's one-time "Join the community" dialog covers the page of a fresh instance, shown some time after
    the page loads: whenever it is there before an action, "Skip" it."""
    page.add_locator_handler(page.get_by_text("Join the Dagster community"),
                             lambda _: page.get_by_role("button", name="Skip").click())


def visible_text(page, text: str):
    return page.get_by_text(text, exact=True).filter(visible=True).first


def test_ui_tour_assets_ingestion_run_and_mlflow(ui, page):
    """What a person does: browse the asset graph, materialize ingestion, follow its MLflow link, find the model."""
    shots = artifacts_dir()
    d, m = ui["dagster"], ui["mlflow"]
    try:
        page.goto(f"{d}/asset-groups")
        try:  # a fresh instance shows the dialog once, a few seconds after the first page loads
            page.get_by_role("button", name="Skip").click(timeout=15_000)
        except sync_api.TimeoutError:
            pass
        for group in ("ingestion", "summaries", "tokenizers", "analysis", "recommender"):
            visible_text(page, group).wait_for()
        page.screenshot(path=str(shots / "dagster_asset_graph.png"))

        page.set_viewport_size({"width": 1600, "height": 2600})  # the catalog renders only the rows in view
        page.goto(f"{d}/assets")
        for key in ALL_ASSETS:
            visible_text(page, key).wait_for()
        page.screenshot(path=str(shots / "dagster_asset_catalog.png"))
        page.set_viewport_size({"width": 1600, "height": 1000})

        page.goto(f"{d}/locations/unisid_pipeline/jobs/ingestion_job")
        page.get_by_role("button", name=re.compile("Materialize all")).click()
        page.get_by_text(re.compile(r"Launched run [0-9a-f]{8}")).wait_for()
        page.get_by_role("link", name="View", exact=True).first.click()  # the toast's link to the run
        page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}"))
        status = page.get_by_text(re.compile(r"^(Success|Failure|Canceled)$")).first
        status.wait_for(timeout=180_000)  # queued, then started, then done
        page.screenshot(path=str(shots / "dagster_ingestion_run.png"))
        assert status.inner_text() == "Success", f"ingestion run ended {status.inner_text()}; see {shots}"

        page.goto(f"{d}/assets/raw_ads")
        visible_text(page, "mlflow_run").wait_for()
        page.screenshot(path=str(shots / "dagster_raw_ads.png"), full_page=True)
        link = page.locator(f"a[href^='{m}/#/experiments/']").first
        href = link.get_attribute("href")
        run_id = href.rsplit("/", 1)[-1]

        # plots in metadata are Markdown with an inline PNG: they open (and must decode) in the Markdown dialog
        page.goto(f"{d}/assets/rq_vae_model")
        visible_text(page, "loss_curve").wait_for()
        page.get_by_text("[Show Markdown]").first.click()
        img = page.locator("img[src^='data:image/png;base64,']").first
        img.wait_for()
        page.wait_for_function("img => img.complete && img.naturalWidth > 100", arg=img.element_handle())
        page.screenshot(path=str(shots / "dagster_plot.png"))

        page.goto(href)  # the materialization's link into the MLflow UI (which never goes network-idle: wait for text)
        page.get_by_text(re.compile(r"^ingested_tables-[0-9a-f]{8}$")).first.wait_for()
        visible_text(page, run_id).wait_for()
        page.screenshot(path=str(shots / "mlflow_ingestion_run.png"))

        page.goto(f"{m}/#/models")
        page.get_by_text(ui["registered"], exact=True).first.wait_for()
        page.screenshot(path=str(shots / "mlflow_models.png"))
    except Exception:
        page.screenshot(path=str(shots / "failure.png"), full_page=True)
        raise
