"""Dagster resources: the project home, the DuckDB warehouse IO manager and MLflow tracking."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
from dagster import AssetIn, ConfigurableIOManager, ConfigurableResource, InitResourceContext, InputContext, OutputContext
from pydantic import Field

from assets.config import check_run_config, op_config_classes
from unisid_pipeline import paths, table_diff, warehouse
from unisid_pipeline.tracking import TrackedRun, check_tracking_uri, open_run


class ProjectHome(ConfigurableResource):
    """Where the warehouse, MLflow store, checkpoints and caches live ("" = $UNISID_HOME or ./.unisid_home)."""

    path: str = ""

    @property
    def root(self) -> Path:
        return paths.project_home(self.path or None)

    def sub(self, *parts: str) -> Path:
        p = self.root.joinpath(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p


OPTIONAL_INPUT = "unisid/optional"  # AssetIn metadata: load None, not an error, when the upstream asset is absent


def optional_input(key: str) -> AssetIn:
    """An asset input that may be missing (e.g. one of several methods not trained yet): the asset gets None."""
    return AssetIn(key, metadata={OPTIONAL_INPUT: True})


KEEP_PREVIOUS = "unisid/keep_previous"  # output metadata: the key column; a changed re-run keeps <table>_previous
MAY_SHRINK = "unisid/may_shrink"  # output metadata: this table may legitimately shrink or empty (no shrink guard)
# reports whose rows are the methods / models materialized so far: fewer of them is no data loss
MAY_SHRINK_TABLES = frozenset({"sid_collision_report", "downstream_eval", "embedding_retrieval_eval"})
SHRINK_FIX = ("If the smaller table is meant (a smaller source or synthetic world), re-run with this in the run "
              "config (-c file or the launchpad):\nresources:\n  io_manager:\n    config:\n      allow_shrink: true")


class WarehouseIOManager(ConfigurableIOManager):
    """polars DataFrames -> DuckDB tables (atomic replace; an output with KEEP_PREVIOUS metadata keeps the
    replaced version as <table>_previous and the diff as <table>_changes in the same transaction: `table_diff`);
    anything else -> atomic no-pickle object files
    (<home>/objects/<asset>.safetensors: `warehouse.write_object`). A table is only ever loaded from DuckDB; a
    legacy or planted pickle under objects/ is refused, never unpickled."""

    home: str = ""
    lock_timeout_s: float = warehouse.DEFAULT_LOCK_TIMEOUT_S  # wait this long for another process's lock, then fail
    allow_shrink: bool = Field(False, description="let a materialization replace a non-empty table with an empty one "
                               "or one of fewer than half its rows (refused by default: a broken source would "
                               "otherwise wipe the table); per run: resources: {io_manager: {config: "
                               "{allow_shrink: true}}}")

    def _db(self) -> Path:
        return paths.warehouse_path(paths.project_home(self.home or None))

    def _obj(self, key: list[str]) -> Path:
        return paths.project_home(self.home or None) / "objects" / f"{warehouse.table_name(key)}{OBJECT_SUFFIX}"

    def _guards_shrink(self, name: str, context: OutputContext) -> bool:
        """Whether a shrink of this table is refused: not when allowed for the run, nor for the tables that are
        legitimately small or empty (rejected rows, reports, tables whose output says MAY_SHRINK)."""
        if self.allow_shrink or name.startswith("rejected_") or name in MAY_SHRINK_TABLES:
            return False
        return not (context.definition_metadata or {}).get(MAY_SHRINK)

    def _legacy(self, key: list[str]) -> Path:
        return self._obj(key).with_suffix(".pkl")

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        if obj is None:
            return
        key = list(context.asset_key.path)
        name = warehouse.table_name(key)
        if isinstance(obj, pl.DataFrame):
            keyed = (context.definition_metadata or {}).get(KEEP_PREVIOUS)
            change = (table_diff.compare_with_stored(self._db(), name, obj, getattr(keyed, "value", keyed),
                                                     self.lock_timeout_s) if keyed else None)
            if change is not None:  # new table, <name>_previous and <name>_changes in one transaction
                change.replace(obj, lock_timeout_s=self.lock_timeout_s,
                               guard_shrink=self._guards_shrink(name, context), shrink_fix=SHRINK_FIX)
            else:
                warehouse.write_table(self._db(), name, obj, lock_timeout_s=self.lock_timeout_s,
                                      guard_shrink=self._guards_shrink(name, context), shrink_fix=SHRINK_FIX)
            self._obj(key).unlink(missing_ok=True)  # a stale object of the same name is never read for a table
            context.add_output_metadata({"duckdb_table": f"{self._db()}::{name}"})
        else:
            warehouse.write_object(self._obj(key), obj)
            context.add_output_metadata({"object_path": str(self._obj(key))})
        self._legacy(key).unlink(missing_ok=True)  # a pickle of an older version: never read, removed when replaced

    def load_input(self, context: InputContext) -> Any:
        key = list(context.asset_key.path)
        name = warehouse.table_name(key)
        if warehouse.has_table(self._db(), name, lock_timeout_s=self.lock_timeout_s):
            return warehouse.read_table(self._db(), name, lock_timeout_s=self.lock_timeout_s)
        obj_path = self._obj(key)
        if obj_path.exists():
            return warehouse.read_object(obj_path)
        if self._legacy(key).exists():
            raise warehouse.UnsafeObjectError(
                f"asset {'/'.join(key)} is stored as a pickle ({self._legacy(key)}), written by an older version; "
                "pickles are never loaded (unpickling runs any code in the file). Re-materialize that asset: "
                f"`dagster asset materialize --select {'/'.join(key)}` (then the .pkl file is removed)")
        if (context.definition_metadata or {}).get(OPTIONAL_INPUT):
            context.log.info(f"{'/'.join(key)} has not been materialized: left out")
            return None
        raise FileNotFoundError(
            f"asset {'/'.join(key)} has not been materialized in {self._db().parent}; "
            f"run `dagster asset materialize --select {'/'.join(key)}` (or its upstream) first")


OBJECT_SUFFIX = ".safetensors"  # objects and step outputs: safetensors + JSON (warehouse.write_object), no pickle


class StepIOManager(ConfigurableIOManager):
    """Outputs of the ops inside a graph-backed asset (e.g. one recommender seed): atomic no-pickle object files
    under <home>/steps/<run id>/ (`warehouse.write_object`), readable by later steps in other processes and by a
    retried or re-executed run."""

    home: str = ""

    def _path(self, run_id: str, step_key: str, output: str, mapping_key: str | None) -> Path:
        name = f"{step_key}.{output}" + (f"[{mapping_key}]" if mapping_key and mapping_key not in step_key else "")
        return paths.project_home(self.home or None) / "steps" / run_id / f"{name}{OBJECT_SUFFIX}"

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        path = self._path(context.run_id, context.step_key, context.name, context.mapping_key)
        warehouse.write_object(path, obj)

    def load_input(self, context: InputContext) -> Any:
        up = context.upstream_output
        return warehouse.read_object(self._path(up.run_id, up.step_key, up.name, up.mapping_key))


class ComputeDevice(ConfigurableResource):
    """The device of every model stage whose config says device 'auto' (the default); a stage's own
    `device` ("cpu", "cuda:1") overrides it for that stage."""

    device: str = Field("auto", description="'auto' = CUDA when present, else CPU; or 'cpu', 'cuda', 'cuda:N', 'mps'. "
                        "Asking for CUDA on a machine without it fails at launch")

    def setup_for_execution(self, context: InitResourceContext) -> None:
        from unisid_pipeline.seeding import resolve_device

        try:
            resolve_device(self.device)
        except ValueError as exc:
            raise ValueError(f"invalid resource config compute.device: {exc}") from None

    def resolve(self, requested: str) -> str:
        """The device a stage runs on: its own setting unless that is 'auto', then this resource's."""
        from unisid_pipeline.seeding import resolve_device

        return str(resolve_device(self.device if requested == "auto" else requested))


UI_URL_ENV = "UNISID_MLFLOW_UI_URL"
DEFAULT_UI_URL = "http://127.0.0.1:5000"  # `make mlflow-ui`


class MlflowTracking(ConfigurableResource):
    """One MLflow run per asset materialization, tagged with the Dagster run id and asset key.

    tracking_uri "" = $MLFLOW_TRACKING_URI, else a sqlite store under the project home with local
    artifacts beside it (`mlflow ui --backend-store-uri sqlite:///<home>/mlflow.db`).
    """

    home: str = ""
    tracking_uri: str = ""
    experiment_name: str = "unisid_pipeline"
    ui_url: str = Field("", description=f'MLflow UI base URL for the run links in asset metadata; "" = ${UI_URL_ENV}, '
                        f"else {DEFAULT_UI_URL}")
    system_metrics_s: float = Field(10.0, description="sample CPU, memory, disk and network (GPU with pynvml) into "
                                    "every run every this many seconds; 0 = off")

    @property
    def ui_base(self) -> str:
        return (self.ui_url or os.environ.get(UI_URL_ENV) or DEFAULT_UI_URL).rstrip("/")

    def resolved_uri(self) -> str:
        return self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or paths.mlflow_uri(paths.project_home(self.home or None))

    def setup_for_execution(self, context: InitResourceContext) -> None:
        """At run start, before any step (every tracked asset holds this resource): the run config of every op
        is valid, and the tracking server answers. A bad value or a dead server fails the launch, not step 9."""
        run = context.run
        if run is not None and run.run_config:
            from assets.definitions import ALL_ASSETS  # the module that imports this one

            check_run_config(run.run_config, op_config_classes(ALL_ASSETS))
        check_tracking_uri(self.resolved_uri())

    @contextlib.contextmanager
    def run_for(self, context, params: dict[str, Any] | None = None, tags: dict[str, str] | None = None,
                name_suffix: str = "") -> Iterator[TrackedRun]:
        """Open the MLflow run for this materialization (or for one step of it: `tags` and `name_suffix`
        tell it apart, e.g. one recommender seed); adds the run id/url to the asset metadata."""
        extra = tags or {}
        op_context = getattr(context, "op_execution_context", context)  # the op's view, asset context or not
        keys = sorted("/".join(k.path) for k in context.selected_asset_keys)
        home = paths.project_home(self.home or None)
        step = op_context.op_handle.name if hasattr(op_context, "op_handle") else ""
        tags = {
            "dagster.run_id": op_context.run_id,
            "dagster.asset_key": ",".join(keys),
            "dagster.job": op_context.job_name or "",
            "dagster.step": step,
        }
        if context.has_partition_key:
            tags["dagster.partition"] = context.partition_key
        from unisid_pipeline.seeding import environment_tags  # torch: imported when a run opens, not with the module

        tags.update(environment_tags())
        tags.update(extra)
        run_name = f"{step or keys[0]}{name_suffix}-{op_context.run_id[:8]}"
        same_step = ["dagster.asset_key", "dagster.step", *extra]  # a seed's run is compared with that seed's
        with open_run(self.resolved_uri(), self.experiment_name, run_name, tags, params,
                      artifact_root=paths.mlflow_artifacts(home), system_metrics_s=self.system_metrics_s,
                      compare_on=same_step if params else (), store_marker=home / "tracking_store.json") as run:
            context.log.info(f"MLflow run {run.run_id} ({run.url(self.ui_base)})")
            if run.config_changes:
                context.log.warning(f"{step or keys[0]} runs with another config or data than its last materialization "
                                    f"({run.config_changes}); if that is not meant, pass the same -c config files as "
                                    "then (the demo: -c configs/cpu.yaml -c configs/demo.yaml)")
            yield run
