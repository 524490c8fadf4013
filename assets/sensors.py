"""`new_ad_files`: re-run ingestion -> SID tables when a new ad file lands in the incoming folder.

Off by default (turn it on under Automation in the UI). The folder holds `ads*` files and at
least one `interactions*` file (see `unisid_pipeline.data.dropfolder`); each new state of the folder
(a new or replaced ad file) starts one `ads_refresh_job` run with `ingested_tables` reading ALL the
ad files of the folder, oldest first, as one union in which a later file's row replaces an earlier
row of the same ad_id (`on_duplicate_ad="last_wins"`), and all the interactions files.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from dagster import (
    AssetSelection,
    ConfigurableResource,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    define_asset_job,
    sensor,
)
from pydantic import Field

from unisid_pipeline import paths
from unisid_pipeline.data.dropfolder import look

INCOMING_ENV = "UNISID_INCOMING"
SID_TABLES = ("rq_kmeans_sids", "rq_vae_sids", "unisid_sids")

ads_refresh_job = define_asset_job(
    "ads_refresh_job",
    selection=AssetSelection.groups("ingestion") | AssetSelection.assets(*SID_TABLES).upstream(),
    description="ingestion, summaries, embeddings, hierarchy, tokenizers and SID tables (what a new ad catalog changes)",
)


class IncomingAds(ConfigurableResource):
    """The folder `new_ad_files` watches, and the base run config of the runs it starts."""

    path: str = Field("", description='watched folder; "" = $UNISID_INCOMING, else <project home>/incoming')
    home: str = Field("", description='project home ("" = $UNISID_HOME or ./.unisid_home)')
    base_run_config: str = Field("", description="YAML run config (e.g. configs/demo.yaml) the runs start from; "
                                 "entries for ops outside ads_refresh_job are dropped")

    def folder(self) -> Path:
        raw = self.path or os.environ.get(INCOMING_ENV) or paths.project_home(self.home or None) / "incoming"
        return Path(raw).expanduser().resolve()

    def run_config(self, ads_paths: tuple[Path, ...], interactions_paths: tuple[Path, ...],
                   op_names: set[str] | None) -> dict[str, Any]:
        ops: dict[str, Any] = {}
        if self.base_run_config:
            loaded = yaml.safe_load(Path(self.base_run_config).read_text()) or {}
            ops = {k: v for k, v in (loaded.get("ops") or {}).items() if op_names is None or k in op_names}
        ingest_cfg = dict((ops.get("ingested_tables") or {}).get("config") or {})
        roots = [*ingest_cfg.get("allowed_roots", []), str(self.folder())]  # the watched folder is an input root
        ingest_cfg.update(source="files", ads_path=[str(p) for p in ads_paths],
                          interactions_path=[str(p) for p in interactions_paths], on_duplicate_ad="last_wins",
                          allowed_roots=list(dict.fromkeys(roots)))
        ops["ingested_tables"] = {"config": ingest_cfg}
        return {"ops": ops}


@sensor(job=ads_refresh_job, default_status=DefaultSensorStatus.STOPPED, minimum_interval_seconds=30,
        description="New or replaced ads* file in the incoming folder (`$UNISID_INCOMING`, default `<home>/incoming`) -> "
                    "re-run ingestion through the SID tables on all its ads* files (later ones winning) and interactions* files")
def new_ad_files(context: SensorEvaluationContext, incoming_ads: IncomingAds):
    folder = incoming_ads.folder()
    drop = look(folder, context.cursor)
    if not drop.ads_paths:
        return SkipReason(f"no new ads* file in {folder}")
    if not drop.interactions_paths:
        # cursor not advanced: the ad files are picked up once an interactions file arrives
        return SkipReason(f"new ad file(s) {', '.join(drop.new)} in {folder}, but no interactions* file to pair them "
                          "with: put one there (.csv/.tsv/.jsonl/.parquet) and the sensor will pick both up")
    context.log.info(f"new ad file(s) {', '.join(drop.new)}: ingesting all {len(drop.ads_paths)} ad file(s) of {folder}, "
                     "oldest first, later rows replacing earlier ones of the same ad_id")
    op_names = None
    if context.repository_def is not None:
        op_names = set(context.repository_def.get_job(ads_refresh_job.name).graph.node_dict)
    request = RunRequest(run_key=drop.run_key,
                         run_config=incoming_ads.run_config(drop.ads_paths, drop.interactions_paths, op_names),
                         tags={"unisid/ads_folder": str(folder), "unisid/new_ads_files": ",".join(drop.new)[:200]})
    return SensorResult(run_requests=[request], cursor=drop.cursor)


JOBS = [ads_refresh_job]
SENSORS = [new_ad_files]
