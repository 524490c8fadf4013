"""Build the Dagster Definitions (resources bound to one project home)."""
from __future__ import annotations

from dagster import AssetSelection, Definitions, PipesSubprocessClient, define_asset_job, multi_or_in_process_executor

from assets import analysis, incremental, ingestion, labels, recommender, sensors, text, tokenizers, unisid
from assets.analysis import SidCheckThresholds
from assets.resources import ComputeDevice, MlflowTracking, ProjectHome, StepIOManager, WarehouseIOManager
from assets.sensors import IncomingAds

ALL_ASSETS = [*ingestion.ASSETS, *text.ASSETS, *labels.ASSETS, *tokenizers.ASSETS, *unisid.ASSETS,
              *analysis.ASSETS, *recommender.ASSETS, *incremental.ASSETS]
ALL_CHECKS = [*ingestion.CHECKS, *analysis.CHECKS]


def build_definitions(home: str = "", tracking_uri: str = "") -> Definitions:
    """home "" = $UNISID_HOME or ./.unisid_home; tracking_uri "" = $MLFLOW_TRACKING_URI or sqlite under home."""
    jobs = [
        define_asset_job("full_pipeline", selection=AssetSelection.all(), description="everything, ingestion to comparison report"),
        define_asset_job("ingestion_job", selection=AssetSelection.groups("ingestion"),
                         description="ingest and validate ads and interactions, build user sequences"),
        define_asset_job("summaries_job", selection=AssetSelection.groups("summaries"),
                         description="LLM ad summaries and text embeddings (cached)"),
        define_asset_job("tokenizers_job", selection=AssetSelection.groups("tokenizers"),
                         description="train every tokenizer and build the SID tables"),
        define_asset_job("analysis_job", selection=AssetSelection.groups("analysis"), description="SID collision and quality report"),
        define_asset_job("recommender_job", selection=AssetSelection.groups("recommender"),
                         description="train and evaluate the generative recommender per SID method"),
        define_asset_job("assign_new_ad_sids",
                         selection=AssetSelection.assets("raw_ads", "rejected_ads", "ad_text_embeddings",
                                                         *incremental.NAMES),
                         description="re-ingest ads, embed the new ones and give them SIDs with every frozen "
                                     "tokenizer that has been trained; existing SIDs never change"),
        *sensors.JOBS,
    ]
    return Definitions(
        assets=ALL_ASSETS,
        asset_checks=ALL_CHECKS,
        jobs=jobs,
        sensors=sensors.SENSORS,
        # run config `execution: {config: {in_process: {}}}` (configs/demo.yaml) or `{multiprocess: {max_concurrent: N}}`
        # (the default; configs/beauty.yaml trains the recommender seeds side by side on one GPU)
        executor=multi_or_in_process_executor,
        resources={
            "io_manager": WarehouseIOManager(home=home),
            "step_io_manager": StepIOManager(home=home),
            "compute": ComputeDevice(),
            "mlflow": MlflowTracking(home=home, tracking_uri=tracking_uri),
            "project_home": ProjectHome(path=home),
            "sid_check_thresholds": SidCheckThresholds(),
            "pipes_subprocess_client": PipesSubprocessClient(),  # launcher='pipes_subprocess' of unisid_model
            "incoming_ads": IncomingAds(home=home),
        },
    )
