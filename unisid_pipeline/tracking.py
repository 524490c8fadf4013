"""MLflow tracking: with `serving` (the pyfunc tokenizers), the only core modules that import mlflow.

`open_run` starts one MLflow run (for one asset materialization), tags it, logs params, and ends
it FINISHED or FAILED. `TrackedRun` wraps the run with the logging calls the assets use, so asset
code never touches mlflow directly.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from unisid_pipeline.processes import pid_alive

log = logging.getLogger(__name__)

MAX_PARAM_CHARS = 6000
FORMAT_TAG, MODEL_FORMAT = "unisid.format", "pyfunc-safetensors/1"  # registry version tag: how the model is stored
HOST_TAG, PID_TAG = "unisid.host", "unisid.pid"  # who runs an MLflow run, to tell a killed run from a live one


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        out[prefix] = text[:MAX_PARAM_CHARS]


def flatten_params(params: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    _flatten("", params, out)
    return out


_SECRET_QUERY_KEYS = ("token", "password", "passwd", "secret", "key", "auth", "credential", "signature", "sig")


def redact_uri(uri: str) -> str:
    """`uri` with its credentials masked: the user info of the netloc (`user:pass@` -> `***@`) and the values of
    query parameters that look secret (token, password, key, ...). Anything that is not a URI comes back as is."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower().endswith(_SECRET_QUERY_KEYS) for k, _ in pairs):
            query = urlencode([(k, "***" if k.lower().endswith(_SECRET_QUERY_KEYS) else v) for k, v in pairs], safe="*")
    if netloc == parts.netloc and query == parts.query:
        return uri
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str, *uris: str) -> str:
    """`text` with every given URI, and each of its secret parts (password, user info, secret query values),
    replaced by the redacted URI / `***`: for error messages that quote a URI (MLflow's REST errors do)."""
    from urllib.parse import parse_qsl, unquote, urlsplit

    for uri in uris:
        if not uri:
            continue
        safe = redact_uri(uri)
        if safe == uri:
            continue
        text = text.replace(uri, safe)
        parts = urlsplit(uri)
        secrets = [parts.password, parts.username if parts.password is None else None,
                   *(v for k, v in parse_qsl(parts.query) if k.lower().endswith(_SECRET_QUERY_KEYS))]
        for secret in filter(None, secrets):
            for form in {secret, unquote(secret)}:
                if len(form) >= 3:
                    text = text.replace(form, "***")
    return text


@contextlib.contextmanager
def redacted_errors(*uris: str) -> Iterator[None]:
    """Re-raise an error whose message quotes a credential of `uris` as a RuntimeError with the credential masked
    (and no link to the original, whose message and traceback would print it)."""
    try:
        yield
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"
        safe = redact_text(message, *uris)
        if safe == message:
            raise
        raise RuntimeError(safe) from None


def check_tracking_uri(uri: str) -> None:
    """Fail before any work when the tracking server cannot be reached (http/https URIs)."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5):
            return
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ConnectionError(redact_text(
            f"MLflow tracking server {uri} is unreachable ({exc}). Start it, fix MLFLOW_TRACKING_URI, "
            "or unset it to track locally under the project home (credentials belong in MLFLOW_TRACKING_USERNAME / "
            "MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN, not in the URI).", uri)) from None


@contextlib.contextmanager
def fluent_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (log_model, register_model, load_model) at `uri` for the block.

    `mlflow.set_tracking_uri` also writes MLFLOW_TRACKING_URI into os.environ, where it outlived the
    call: the next run in the same process (another project home, a test) then tracked into this store.
    The variable is restored on exit.
    """
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before


EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # the UI opens on training runs, not GenAI


class TrackingStoreReplaced(RuntimeError):
    """The MLflow store a project home tracked to no longer holds that home's experiment (lost or replaced)."""


def check_store_identity(marker: Path, uri: str, client: MlflowClient, experiment_id: str, name: str) -> None:
    """Detect a lost or replaced tracking store: the home's `marker` (JSON) records, per tracking URI (redacted), the
    id and creation time of the experiment its runs went to. A store that no longer has that experiment was lost
    (mlflow.db deleted) or replaced: its registry numbers versions from 1 again, so "version 1" in the warehouse's
    tables would name another model. Raise `TrackingStoreReplaced` with the two ways out; record it the first time."""
    from unisid_pipeline.files import atomic_write_bytes

    exp = client.get_experiment(experiment_id)
    identity = {"experiment": name, "experiment_id": str(experiment_id), "creation_time": int(exp.creation_time or 0)}
    key = redact_uri(uri)
    try:
        known = json.loads(marker.read_text()) if marker.exists() else {}
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    before = known.get(key)
    if before == identity:
        return
    if before is not None:
        when = _ms_to_text(before.get("creation_time", 0))
        raise TrackingStoreReplaced(
            f"the MLflow store {key} no longer holds experiment {name!r} (id {before.get('experiment_id')}, created "
            f"{when}) that earlier runs of this project home tracked to: it was lost or replaced, and its registry "
            "would number model versions from 1 again, so the SID tables' recorded versions would name other models. "
            f"Restore the store (e.g. mlflow.db from a backup) to keep the history, or, to start tracking afresh on "
            f"purpose, delete {marker} (the SID tables record their tokenizer's weights sha256 and refuse to mix)")
    known[key] = identity
    atomic_write_bytes(marker, json.dumps(known, indent=1, sort_keys=True).encode())


def _ms_to_text(ms: int) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if ms else "?"


def ensure_experiment(uri: str, name: str, artifact_root: Path | None) -> str:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        location = artifact_root.resolve().as_uri() if artifact_root is not None else None
        try:
            return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
        except mlflow.exceptions.MlflowException:  # created concurrently
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    for key, value in EXPERIMENT_KIND.items():  # an experiment made before the tag existed
        if exp.tags.get(key) != value:
            client.set_experiment_tag(exp.experiment_id, key, value)
    return exp.experiment_id


@functools.lru_cache(maxsize=1)
def source_tags() -> dict[str, str]:
    """MLflow's own source tags for the code that runs: the git commit (with a `-dirty` mark for uncommitted
    changes) of this checkout; none outside a git checkout."""
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"mlflow.source.git.commit": commit, "mlflow.source.git.dirty": str(bool(dirty)).lower()}


@dataclass
class TrackedRun:
    run_id: str
    experiment_id: str
    tracking_uri: str
    config_changes: str | None = None  # how the params differ from the previous run of the same step (open_run)

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.tracking_uri)

    def log_params(self, params: Mapping[str, Any]) -> None:
        flat = flatten_params(params)
        items = list(flat.items())
        for i in range(0, len(items), 100):
            mlflow.log_params(dict(items[i:i + 100]), run_id=self.run_id)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        clean = {k.replace("@", "_at_"): float(v) for k, v in metrics.items() if v is not None}
        if clean:
            mlflow.log_metrics(clean, step=step, run_id=self.run_id)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, data, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file)

    def log_table(self, frame: Any, artifact_file: str) -> None:
        """Log a polars frame as a Parquet artifact (and a small JSON preview for the UI)."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact_file).name
            frame.write_parquet(path)
            parent = str(Path(artifact_file).parent)
            self.log_artifact(path, None if parent == "." else parent)

    def log_input(self, frame: Any, name: str, context: str = "training") -> None:
        """Record a polars table this run read as an MLflow dataset input (name, digest, schema, row count)."""
        from mlflow.entities import DatasetInput, InputTag

        dataset = mlflow.data.from_polars(frame, name=name)
        self.client.log_inputs(self.run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(),
                                                                   tags=[InputTag("mlflow.data.context", context)])])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_model(self, model: Any, name: str, example: Any, registered_model_name: str | None = None,
                  tags: Mapping[str, str] | None = None, kind: str = "tokenizer") -> tuple[str, str | None]:
        """Log a tokenizer or (kind "recommender") a recommender as an MLflow pyfunc model (safetensors weights,
        signature, input example `example`, requirements pinned to this environment; `serving`); register it.
        Returns (model URI, registered version or None)."""
        from unisid_pipeline import serving

        log = {"tokenizer": serving.log_tokenizer, "recommender": serving.log_recommender}[kind]
        with mlflow.start_run(run_id=self.run_id):  # log_model logs into the active run: ours
            info = log(model, name, example, pinned_requirements())
        if not registered_model_name:
            return info.model_uri, None
        return info.model_uri, self.register(info.model_uri, registered_model_name, tags)

    def register(self, model_uri: str, registered_model_name: str, tags: Mapping[str, str] | None = None) -> str:
        """Register a logged model (`models:/m-...`) as a new version of `registered_model_name`; its version."""
        with fluent_tracking_uri(self.tracking_uri):
            mv = mlflow.register_model(model_uri, registered_model_name, tags=dict(tags or {}))
        return str(mv.version)

    def url(self, ui_base: str = "http://127.0.0.1:5000") -> str:
        """The run's page in the MLflow UI, without any credential of `ui_base` (it goes into logs and metadata)."""
        return f"{redact_uri(ui_base)}/#/experiments/{self.experiment_id}/runs/{self.run_id}"


@contextlib.contextmanager
def open_run(
    tracking_uri: str,
    experiment: str,
    run_name: str,
    tags: Mapping[str, str],
    params: Mapping[str, Any] | None = None,
    artifact_root: Path | None = None,
    system_metrics_s: float = 0.0,
    compare_on: Sequence[str] = (),
    store_marker: Path | None = None,
) -> Iterator[TrackedRun]:
    """One MLflow run: created, tagged (with the git commit), params logged; FINISHED on success, FAILED on
    error. system_metrics_s > 0: MLflow's system metrics (CPU, memory, disk, network; GPU where pynvml is
    installed) sampled every that many seconds while the run is open. compare_on: tag names; the run's
    `config_changes` then says how `params` differ from those of the last finished run with the same values of
    those tags (None: no such run, or no difference). store_marker: a file of the project home that remembers
    the store's experiment (`check_store_identity`): a lost or replaced store fails the run before it starts."""
    check_tracking_uri(tracking_uri)
    with redacted_errors(tracking_uri), fluent_tracking_uri(tracking_uri):
        exp_id = ensure_experiment(tracking_uri, experiment, artifact_root)
        client = MlflowClient(tracking_uri=tracking_uri)
        if store_marker is not None:
            check_store_identity(store_marker, tracking_uri, client, exp_id, experiment)
        mark_killed_runs(client, exp_id)
        owner = {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
        changes = config_changes(client, exp_id, {k: str(tags[k]) for k in compare_on if k in tags}, params or {}) \
            if compare_on else None
        run = client.create_run(exp_id, run_name=run_name,
                                tags={**source_tags(), **{k: str(v) for k, v in tags.items()}, **owner})
        tracked = TrackedRun(run_id=run.info.run_id, experiment_id=exp_id, tracking_uri=tracking_uri,
                             config_changes=changes)
        monitor = _system_metrics(run.info.run_id, tracking_uri, system_metrics_s) if system_metrics_s > 0 else None
        try:
            try:
                if params:
                    tracked.log_params(params)
                yield tracked
            finally:
                if monitor is not None:
                    monitor.finish()  # its last samples go in before the run ends
        except BaseException:
            client.set_terminated(run.info.run_id, status="FAILED")
            raise
        else:
            client.set_terminated(run.info.run_id, status="FINISHED")


def config_changes(client: MlflowClient, experiment_id: str, match: Mapping[str, str], params: Mapping[str, Any],
                   limit: int = 6) -> str | None:
    """'key old -> new, ...' for the params that differ from the last FINISHED run whose tags equal `match`
    (None when there is no such run or nothing differs), e.g. a materialization that left out the config
    files of the previous one."""
    def quote(v: str) -> str:
        return v.replace("'", "\\'")

    query = " and ".join([*(f"tags.`{k}` = '{quote(v)}'" for k, v in match.items()), "attributes.status = 'FINISHED'"])
    try:
        runs = client.search_runs([experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1)
    except mlflow.exceptions.MlflowException:
        return None
    if not runs:
        return None
    old, new = runs[0].data.params, flatten_params(params)
    diff = [k for k in sorted(new) if old.get(k) != new[k]]  # params logged later (e.g. by log_model) are not config
    if not diff:
        return None
    shown = ", ".join(f"{k} {old.get(k, '(unset)')} -> {new.get(k, '(unset)')}" for k in diff[:limit])
    return shown + (f" and {len(diff) - limit} more" if len(diff) > limit else "")


def _system_metrics(run_id: str, tracking_uri: str, interval_s: float):
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # no start/stop lines per run
    monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, tracking_uri=tracking_uri)
    monitor.start()
    return monitor


def mark_killed_runs(client: MlflowClient, experiment_id: str) -> list[str]:
    """Set status KILLED on RUNNING runs started on this host by a process that no longer exists.

    A materialization killed by SIGKILL never ends its MLflow run; left alone it would look in progress
    forever. Returns the ids of the runs marked.
    """
    host = socket.gethostname().replace("'", "")
    try:
        runs = client.search_runs([experiment_id], f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'")
    except mlflow.exceptions.MlflowException:
        return []
    marked = []
    for r in runs:
        pid = r.data.tags.get(PID_TAG, "")
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            client.set_tag(r.info.run_id, "unisid.killed", f"process {pid} on {host} ended without finishing the run")
            client.set_terminated(r.info.run_id, status="KILLED")
            marked.append(r.info.run_id)
    if marked:
        log.warning("marked %d MLflow run(s) of killed processes as KILLED: %s", len(marked), marked)
    return marked


def pinned_requirements() -> list[str]:
    """The packages a served tokenizer imports, pinned to the versions that trained it."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("torch", "numpy", "polars", "pandas", "transformers", "safetensors", "mlflow"):
        try:
            out.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            out.append(pkg)
    return out


def find_version(run: TrackedRun, registered_model_name: str, fingerprint: str) -> str | None:
    """The version of `registered_model_name` with this weights fingerprint in the current format, or None (a
    version of an older format, a pickled torch model, is never reused: it gets a pyfunc successor)."""
    try:
        existing = run.client.search_model_versions(f"name = '{registered_model_name}'")
    except mlflow.exceptions.MlflowException:
        existing = []
    for mv in existing:
        if mv.tags.get("weights_fingerprint") == fingerprint and mv.tags.get(FORMAT_TAG) == MODEL_FORMAT:
            return str(mv.version)
    return None


def register_if_changed(run: TrackedRun, model: Any, name: str, registered_model_name: str, fingerprint: str,
                        tags: Mapping[str, str] | None = None, example: Any = None) -> tuple[str, bool]:
    """Log + register `model` (a pyfunc tokenizer, input example `example`: ads for UniSID, ad_id + embedding
    for the RQ tokenizers; None = a one-row zero embedding) unless a version with the same weights fingerprint exists.

    Returns (version, created). Re-materializing with the same config and data therefore adds no
    registry version; a changed model always gets a new one.
    """
    found = find_version(run, registered_model_name, fingerprint)
    if found is not None:
        run.set_tags({"registered_model": registered_model_name, "registered_version": found, "registry_reused": "true"})
        return found, False
    if example is None:
        import polars as pl

        example = pl.DataFrame({"ad_id": [0], "embedding": [[0.0] * int(model.input_dim)]})
    _, version = run.log_model(model, name, example, registered_model_name=registered_model_name,
                               tags=version_tags(fingerprint, tags))
    run.set_tags({"registered_model": registered_model_name, "registered_version": version})
    return str(version), True


def version_tags(fingerprint: str, tags: Mapping[str, str] | None = None) -> dict[str, str]:
    """The tags every registered version carries: its weights fingerprint and storage format."""
    return {"weights_fingerprint": fingerprint, FORMAT_TAG: MODEL_FORMAT, **{k: str(v) for k, v in (tags or {}).items()}}


def alias_version(tracking_uri: str, registered_model_name: str, alias: str) -> str | None:
    """The version an alias points at, or None (no such alias or model)."""
    try:
        return str(MlflowClient(tracking_uri=tracking_uri).get_model_version_by_alias(registered_model_name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


def set_alias(tracking_uri: str, registered_model_name: str, alias: str, version: str) -> None:
    MlflowClient(tracking_uri=tracking_uri).set_registered_model_alias(registered_model_name, alias, version)


def load_registered_model(tracking_uri: str, model_uri: str) -> Any:
    """A registered tokenizer with its `encode`, e.g. `models:/rq_kmeans_tokenizer/1` or
    `models:/unisid_tokenizer@champion` (pyfunc versions; older pickled versions where they still load)."""
    from unisid_pipeline.serving import load_tokenizer

    with fluent_tracking_uri(tracking_uri):
        return load_tokenizer(model_uri)
