"""The product as a person uses it: `dg dev` (or `dagster dev`) and `mlflow ui` in a real (headless) Chromium.

Starts both servers on loopback with a temporary project home and walks the README's tour: the asset graph,
an asset's plots in one click, the launchpad with its described fields, a run launched from the UI to its
success, then the MLflow experiment opening on its training runs, the runs view and Compare.
Screenshots go to $UNISID_TEST_ARTIFACTS (default tests/artifacts/, git-ignored); with
UNISID_REFRESH_DOCS_IMG=1 the ones the README shows are written into docs/img/ as well.

Needs Debian's chromium (`apt-get install -y chromium chromium-driver`) and playwright (test extra); skipped
without them. Takes ~2 min on 2 cores.
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


DOCS_IMG = REPO / "docs" / "img"
# the screenshots the README shows (docs/img/<name>.png), refreshed from this test with UNISID_REFRESH_DOCS_IMG=1
README_SHOTS = ("dagster_asset_graph", "dagster_asset_plots", "dagster_launchpad", "mlflow_runs", "mlflow_compare")


def artifacts_dir() -> Path:
    d = Path(os.environ.get("UNISID_TEST_ARTIFACTS") or REPO / "tests" / "artifacts")
    d.mkdir(parents=True, exist_ok=True)
    return d


def shot(page, name: str, **kwargs) -> None:
    """A screenshot into the artifacts folder; a README one also into docs/img when UNISID_REFRESH_DOCS_IMG=1."""
    page.screenshot(path=str(artifacts_dir() / f"{name}.png"), **kwargs)
    if name in README_SHOTS and os.environ.get("UNISID_REFRESH_DOCS_IMG") == "1":
        page.screenshot(path=str(DOCS_IMG / f"{name}.png"), **kwargs)


def register_tiny_tokenizers(home: Path) -> tuple[str, list[str]]:
    """Real (tiny) RQ-KMeans tokenizers, seeds 0 and 1, each its own MLflow run with the same metrics (so Compare
    lines them up) and a registry version, through the same core code the assets use."""
    from unisid_pipeline import paths
    from unisid_pipeline.artifacts import behaviour_fingerprint
    from unisid_pipeline.models.rq import RQKMeansConfig, fit_rq_kmeans
    from unisid_pipeline.tracking import open_run, register_if_changed

    x = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
    cfg = RQKMeansConfig(n_levels=2, codebook_size=4, n_iter=5)
    run_ids = []
    for seed in (0, 1):
        model, history = fit_rq_kmeans(cfg, x, seed=seed, device="cpu")
        with open_run(paths.mlflow_uri(home), "unisid_pipeline", f"rq_kmeans_model-seed{seed}",
                      {"source": "browser test", "seed": seed}, artifact_root=paths.mlflow_artifacts(home)) as run:
            run.log_metrics({f"usage_l{l}": float(u) for l, u in zip(history["level"], history["usage"])})
            fingerprint = behaviour_fingerprint({"method": "rq_kmeans", "seed": seed}, model.encode(x))
            register_if_changed(run, model.cpu().eval(), "model", "rq_kmeans_tokenizer", fingerprint)
            run_ids.append(run.run_id)
    return "rq_kmeans_tokenizer", run_ids


def record_plot_materialization(dagster_home: Path) -> None:
    """Plots as the training assets attach them (assets.metadata.plots_metadata: one `plots` entry), recorded as a
    runless materialization of rq_vae_model, so the test can check that they open with one click in the UI."""
    from dagster import AssetMaterialization, DagsterInstance

    from assets.metadata import plots_metadata
    from assets.tokenizers import loss_figure

    epochs = list(range(1, 31))
    loss = [1.2 * 0.9 ** e + 0.05 for e in epochs]
    fig = loss_figure({"epoch": epochs, "loss": loss, "recon_loss": [0.8 * v for v in loss],
                       "commitment_loss": [0.2 * v for v in loss]}, "epoch", ["loss", "recon_loss", "commitment_loss"],
                      "RQ-VAE training (browser test)")
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        instance.report_runless_asset_event(AssetMaterialization("rq_vae_model", metadata={
            **plots_metadata({"loss_curve": fig}), "final_loss": round(loss[-1], 4)}))


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    root = tmp_path_factory.mktemp("ui")
    home, dagster_home, logs = root / "home", root / "dagster_home", artifacts_dir() / "logs"
    home.mkdir()
    dagster_home.mkdir()
    shutil.copy(REPO / "configs" / "dagster_instance.yaml", dagster_home / "dagster.yaml")
    record_plot_materialization(dagster_home)
    d_port, m_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(UNISID_HOME=str(home), DAGSTER_HOME=str(dagster_home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               UNISID_MLFLOW_UI_URL=f"http://127.0.0.1:{m_port}",  # run links in asset metadata point at this UI
               DAGSTER_MODULE_NAME="")  # dev reads pyproject ([tool.dg] / [tool.dagster]); the variable makes it hang
    bin_dir = Path(sys.executable).parent
    # what `make dagster-ui` runs: dg dev (dagster-dg-cli) where installed, else dagster dev
    dev = [str(bin_dir / "dg"), "dev"] if (bin_dir / "dg").exists() else [str(bin_dir / "dagster"), "dev"]
    dagster_cmd = [*dev, "-h", "127.0.0.1", "-p", str(d_port)]
    mlflow_cmd = [str(bin_dir / "mlflow"), "ui", "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
                  "--host", "127.0.0.1", "--port", str(m_port), "--workers", "1"]
    # dagster dev is the slow one to start: the registry is filled while it boots, before mlflow ui opens the store
    with server(dagster_cmd, env, REPO, logs / "dagster.log") as dagster_proc:
        # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI: keep it from leaking into later tests
        before = os.environ.get("MLFLOW_TRACKING_URI")
        try:
            registered, tokenizer_runs = register_tiny_tokenizers(home)
        finally:
            if before is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = before
        with server(mlflow_cmd, env, REPO, logs / "mlflow.log") as mlflow_proc:
            wait_http(f"http://127.0.0.1:{m_port}/health", mlflow_proc, logs / "mlflow.log", 120)
            wait_http(f"http://127.0.0.1:{d_port}/server_info", dagster_proc, logs / "dagster.log", 180)
            yield {"dagster": f"http://127.0.0.1:{d_port}", "mlflow": f"http://127.0.0.1:{m_port}",
                   "registered": registered, "tokenizer_runs": tokenizer_runs, "home": home}


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


def test_ui_tour_graph_plots_launchpad_run_and_mlflow_runs(ui, page):
    """What a person does: browse the asset graph, open an asset's plots, read the launchpad, materialize
    ingestion from the UI, follow its MLflow link, then the experiment's runs and their comparison."""
    shots = artifacts_dir()
    d, m = ui["dagster"], ui["mlflow"]
    try:
        page.goto(f"{d}/asset-groups")  # Lineage, as it opens
        try:  # a fresh instance shows the dialog once, a few seconds after the first page loads
            page.get_by_role("button", name="Skip").click(timeout=15_000)
        except sync_api.TimeoutError:
            pass
        for group in ("ingestion", "summaries", "tokenizers", "analysis", "recommender"):
            visible_text(page, group).wait_for()
        shot(page, "dagster_asset_graph")

        page.set_viewport_size({"width": 1600, "height": 2600})  # the catalog renders only the rows in view
        page.goto(f"{d}/assets")
        for key in ALL_ASSETS:
            visible_text(page, key).wait_for()
        shot(page, "dagster_asset_catalog")
        page.set_viewport_size({"width": 1600, "height": 1000})

        # an asset's plots: one `plots` row in its Overview's metadata, one click opens them all
        page.goto(f"{d}/assets/rq_vae_model")
        row = page.locator("tr", has=page.get_by_text("plots", exact=True)).first
        row.wait_for()
        row.get_by_text("[Show Markdown]").click()  # the one click
        dialog = page.get_by_role("dialog")
        img = dialog.locator("img[src^='data:image/png;base64,']").first
        img.wait_for()
        page.wait_for_function("img => img.complete && img.naturalWidth > 100", arg=img.element_handle())
        page.wait_for_timeout(500)  # the dialog's fade-in
        shot(page, "dagster_asset_plots")
        page.keyboard.press("Escape")

        # the launchpad: every config field carries the description written beside its core dataclass field
        page.goto(f"{d}/locations/unisid_pipeline/jobs/full_pipeline/playground")
        page.get_by_text("All defaults expanded").wait_for()  # the editor opens on every field with its default
        page.locator(".CodeMirror-line", has_text=re.compile(r"^\s*backend: transformers")).first.click()
        # the panel beside the editor describes the field under the cursor, in the core dataclass's words
        page.get_by_text(re.compile(r"an LLM; default SmolLM2")).filter(visible=True).first.wait_for()
        assert not page.get_by_text("(see unisid_pipeline docs)").count()
        shot(page, "dagster_launchpad")

        # a run launched from the UI, to its success
        page.goto(f"{d}/locations/unisid_pipeline/jobs/ingestion_job")
        page.get_by_role("button", name=re.compile("Materialize all")).click()
        page.get_by_text(re.compile(r"Launched run [0-9a-f]{8}")).wait_for()
        page.get_by_role("link", name="View", exact=True).first.click()  # the toast's link to the run
        page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}"))
        status = page.get_by_text(re.compile(r"^(Success|Failure|Canceled)$")).first
        status.wait_for(timeout=180_000)  # queued, then started, then done
        shot(page, "dagster_ingestion_run")
        assert status.inner_text() == "Success", f"ingestion run ended {status.inner_text()}; see {shots}"

        page.goto(f"{d}/assets/raw_ads")
        visible_text(page, "mlflow_run").wait_for()
        shot(page, "dagster_raw_ads", full_page=True)
        href = page.locator(f"a[href^='{m}/#/experiments/']").first.get_attribute("href")
        run_id = href.rsplit("/", 1)[-1]

        page.goto(href)  # the materialization's link into the MLflow UI (which never goes network-idle: wait for text)
        page.get_by_text(re.compile(r"^ingested_tables-[0-9a-f]{8}$")).first.wait_for()
        visible_text(page, run_id).wait_for()
        shot(page, "mlflow_ingestion_run")

        # the experiment's link (asset metadata `mlflow_experiment`) opens on its training runs, not the GenAI overview
        page.goto(f"{d}/assets/raw_ads")
        experiment = page.locator(f"a[href*='workflowType=machine_learning']").first.get_attribute("href")
        page.goto(experiment)
        for name in ("rq_kmeans_model-seed0", "rq_kmeans_model-seed1"):
            page.get_by_text(name, exact=True).first.wait_for()
        page.get_by_text(re.compile(r"^ingested_tables-[0-9a-f]{8}$")).first.wait_for()
        assert not page.get_by_text("No data available for the selected time range").count()  # GenAI's empty charts
        page.wait_for_timeout(1000)  # the table settles
        shot(page, "mlflow_runs")

        # Compare: tick the two tokenizer runs, press Compare
        for name in ("rq_kmeans_model-seed0", "rq_kmeans_model-seed1"):
            row = page.locator("[role=row]", has=page.get_by_text(name, exact=True)).first
            row.get_by_role("checkbox").first.check()
        page.get_by_role("button", name=re.compile("^Compare")).click()
        page.wait_for_url(re.compile(r"compare-runs"))
        for rid in ui["tokenizer_runs"]:
            assert rid in page.url
        page.get_by_text("usage_l0", exact=True).first.wait_for()
        # the run details: parameters and metrics of the runs side by side
        page.get_by_text("Run details", exact=True).first.evaluate("e => e.scrollIntoView({block: 'start'})")
        page.wait_for_timeout(500)
        shot(page, "mlflow_compare")

        page.goto(f"{m}/#/models")
        page.get_by_text(ui["registered"], exact=True).first.wait_for()
        shot(page, "mlflow_models")
    except Exception:
        page.screenshot(path=str(shots / "failure.png"), full_page=True)
        raise
