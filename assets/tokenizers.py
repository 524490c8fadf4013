"""Tokenizer assets: RQ-KMeans (OneRec), RQ-VAE (TIGER) and their SID tables.

Each method is one `<method>_model` asset (trains, logs to MLflow, registers in the model
registry) and one `<method>_sids` table built by the shared collision resolution
(`unisid_pipeline.sid.build_sid_table`) and archived as an MLflow artifact. The UniSID model
lives in `assets/unisid.py` and uses the same SID-table step (`sid_table_asset`).
"""
import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import polars as pl
import pydantic
from dagster import AssetExecutionContext, AssetIn, Config, MetadataValue, Output, asset
from pydantic import Field

from assets.config import DEVICE_HELP, mirror, to_core
from assets.metadata import device_in_use, plots_metadata, readable, run_metadata, table_metadata, table_value
from assets.resources import ComputeDevice, MlflowTracking
from unisid_pipeline.artifacts import TrainedTokenizer, array_fingerprint, behaviour_fingerprint, state_fingerprint
from unisid_pipeline.embeddings import frame_to_embeddings
from unisid_pipeline.models.rq import RQKMeansConfig, RQVAEConfig, fit_rq_kmeans, train_rq_vae
from unisid_pipeline.sid import LazyRowCost, build_sid_table
from unisid_pipeline.tracking import alias_version, register_if_changed

GROUP = "tokenizers"
REGISTRY_NAMES = {"rq_kmeans": "rq_kmeans_tokenizer", "rq_vae": "rq_vae_tokenizer", "unisid": "unisid_tokenizer"}


def run_config(core_cls: type, name: str, doc: str) -> type[Config]:
    """Run config of a tokenizer asset: the model's mirrored config plus seed, device and registry switch."""
    model_cfg = mirror(core_cls)
    return pydantic.create_model(
        name, __base__=Config, __doc__=doc,
        model=(model_cfg, Field(default_factory=model_cfg, description=f"{core_cls.__name__} settings")),
        seed=(int, Field(0, description="seed for torch, numpy and Python")),
        device=(str, Field("auto", description=DEVICE_HELP)),
        register_model=(bool, Field(True, description="log and register the model in the MLflow model registry")),
    )


class SidTableConfig(Config):
    """How colliding SIDs are made unique."""

    resolution: Literal["suffix", "reassign", "none"] = Field(
        "suffix", description="suffix: TIGER's extra disambiguation level; reassign: move colliders to the nearest "
        "free last-level code of their prefix (falls back to suffix when a prefix is full); none: keep collisions")


def finish_tokenizer(context: AssetExecutionContext, run, method: str, model: Any, history: dict, info: dict,
                     register: bool, recipe: dict, codes: np.ndarray, example: pl.DataFrame) -> TrainedTokenizer:
    """Fingerprint, register (only when recipe or codes changed; a pyfunc model whose input example is the head
    of `example`, the table the tokenizer reads) and wrap a trained tokenizer."""
    fingerprint = behaviour_fingerprint({"method": method, **recipe}, codes)
    trained = TrainedTokenizer(method=method, model=model.cpu().eval(), fingerprint=fingerprint,
                               weights=state_fingerprint(model), history=history, info=info)
    run.set_tags({"weights_fingerprint": fingerprint, "state_sha256": trained.weights, "method": method})
    if register:
        version, created = register_if_changed(run, trained.model, "model", REGISTRY_NAMES[method], fingerprint,
                                               tags={"method": method}, example=example)
        trained.registered_name, trained.registered_version = REGISTRY_NAMES[method], version
        context.log.info(f"registry: {REGISTRY_NAMES[method]} version {version} ({'new' if created else 'unchanged weights, reused'})")
        champion = alias_version(run.tracking_uri, REGISTRY_NAMES[method], "champion")
        if champion is not None and champion != version:
            context.log.warning(f"{REGISTRY_NAMES[method]} version {version} is not the champion: @champion still points at "
                                f"version {champion} until downstream_eval picks again (materialize it, or set the alias "
                                "in the MLflow UI)")
    return trained


def _recipe(config: Config, *training_data: np.ndarray) -> dict:
    """What determines a trained tokenizer: its run config (device excluded: it must not change SIDs) and data."""
    return {**{k: v for k, v in config.model_dump().items() if k not in ("device", "register_model")},
            "data": array_fingerprint(*training_data)}


RQKMeansRun = run_config(RQKMeansConfig, "RQKMeansRun", "Residual k-means tokenizer (OneRec) on ad_text_embeddings.")
RQVAERun = run_config(RQVAEConfig, "RQVAERun", "RQ-VAE tokenizer (TIGER) on ad_text_embeddings.")


def _fit_rq_tokenizer(context: AssetExecutionContext, config: Config, mlflow: MlflowTracking, compute: ComputeDevice,
                      frame: pl.DataFrame,
                      method: str, core_cls: type, fit: Callable, step_key: str,
                      describe: Callable[[Any, dict], str | None],
                      extra: Callable[[Any, dict], dict] = lambda run, history: {}) -> Output[TrainedTokenizer]:
    """The body both RQ model assets share: train on the text embeddings with progress in the Dagster log and
    MLflow (one metric step per `step_key`), then fingerprint, register and wrap the tokenizer.

    fit(core_config, x, seed=, device=, callback) -> (model, history); describe(core, row) -> log line or None;
    extra(run, history) -> more materialization metadata, computed while the MLflow run is open.
    """
    core = to_core(config.model, core_cls)
    ad_ids, x = frame_to_embeddings(frame)
    used = device_in_use(context, compute, config.device, context.asset_key.to_user_string())
    params = {**core.__dict__, "seed": config.seed, "device": config.device, "n_items": len(ad_ids), "dim": x.shape[1],
              "device_used": used}
    with mlflow.run_for(context, params=params) as run:
        run.log_input(frame, "ad_text_embeddings")
        t0 = time.perf_counter()

        def progress(row: dict) -> None:
            line = describe(core, row)
            if line:
                context.log.info(line)
            run.log_metrics({k: v for k, v in row.items() if isinstance(v, (int, float)) and k != step_key},
                            step=int(row[step_key]))

        model, history = fit(core, x, seed=config.seed, device=used, callback=progress)
        seconds = time.perf_counter() - t0
        run.log_metrics({"train_seconds": seconds})
        trained = finish_tokenizer(context, run, method, model, history, {"train_seconds": seconds},
                                   config.register_model, recipe=_recipe(config, ad_ids, x), codes=model.encode(x),
                                   example=frame)
        metadata = {**run_metadata(run, mlflow.ui_base), "version": trained.version, "train_seconds": seconds,
                    **extra(run, history)}
    return Output(trained, metadata=metadata)


def _describe_level(core: RQKMeansConfig, row: dict) -> str:
    return (f"rq_kmeans level {row['level']}: usage {row['usage']:.3f}, perplexity {row['perplexity']:.1f}, "
            f"{row['n_iter']} iters, {row['seconds']:.1f}s")


def _describe_epoch(core: RQVAEConfig, row: dict) -> str | None:
    if not (row["epoch"] == 1 or row["epoch"] % max(1, core.epochs // 10) == 0 or row["epoch"] == core.epochs):
        return None
    usage = [round(row[k], 3) for k in sorted(row) if k.startswith("usage_level_")]
    return f"rq_vae epoch {row['epoch']}/{core.epochs}: loss {row['loss']:.4f} recon {row['recon_loss']:.4f} usage {usage}"


def _rq_kmeans_plots(run, history: dict) -> dict:
    """Per-level table and the k-means loss curve: inertia per Lloyd iteration, one line per level."""
    curves = {f"inertia_level_{l}": [float(v) for v in c] for l, c in zip(history["level"], history["inertia_curve"])}
    n = max((len(c) for c in curves.values()), default=0)
    padded = {"iteration": list(range(1, n + 1)), **{k: c + [float("nan")] * (n - len(c)) for k, c in curves.items()}}
    fig = loss_figure(padded, "iteration", list(curves), "RQ-KMeans: inertia per Lloyd iteration")
    run.log_figure(fig, "loss_curve.png")
    return {"per_level": table_value(pl.DataFrame({k: v for k, v in history.items() if k != "inertia_curve"})),
            **plots_metadata({"loss_curve": fig})}


def _rq_vae_plots(run, history: dict) -> dict:
    fig = loss_figure(history, "epoch", ["loss", "recon_loss", "commitment_loss"], "RQ-VAE training")
    run.log_figure(fig, "loss_curve.png")
    return {"final_loss": float(history["loss"][-1]), **plots_metadata({"loss_curve": fig})}


@asset(group_name=GROUP, kinds={"torch", "mlflow"}, owners=["team:tokenizers"], tags={"stage": "tokenizers"})
def rq_kmeans_model(context: AssetExecutionContext, config: RQKMeansRun, mlflow: MlflowTracking, compute: ComputeDevice,
                    ad_text_embeddings: pl.DataFrame) -> Output[TrainedTokenizer]:
    """RQ-KMeans tokenizer (OneRec): residual k-means per level on the ad text embeddings."""
    return _fit_rq_tokenizer(
        context, config, mlflow, compute, ad_text_embeddings, "rq_kmeans", RQKMeansConfig,
        lambda core, x, seed, device, callback: fit_rq_kmeans(core, x, seed=seed, device=device, on_level=callback),
        "level", _describe_level, _rq_kmeans_plots)


@asset(group_name=GROUP, kinds={"torch", "mlflow"}, owners=["team:tokenizers"], tags={"stage": "tokenizers"})
def rq_vae_model(context: AssetExecutionContext, config: RQVAERun, mlflow: MlflowTracking, compute: ComputeDevice,
                 ad_text_embeddings: pl.DataFrame) -> Output[TrainedTokenizer]:
    """RQ-VAE tokenizer (TIGER): MLP encoder, residual quantizer with k-means init and dead-code reinit, MLP decoder."""
    return _fit_rq_tokenizer(
        context, config, mlflow, compute, ad_text_embeddings, "rq_vae", RQVAEConfig,
        lambda core, x, seed, device, callback: train_rq_vae(core, x, seed=seed, device=device, on_epoch=callback),
        "epoch", _describe_epoch, _rq_vae_plots)


def loss_figure(history: dict, x_key: str, keys: list[str], title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    for k in keys:
        if k in history:
            ax.plot(history[x_key], history[k], label=k)
    ax.set_xlabel(x_key)
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    plt.close(fig)
    return fig


def sid_table_asset(method: str, model_asset: str, inputs: dict[str, AssetIn],
                    encode: Callable[[TrainedTokenizer, dict[str, Any]], tuple[np.ndarray, np.ndarray, np.ndarray]]):
    """Build the `<method>_sids` asset: encode all ads, resolve collisions, store and archive the table.

    `encode(trained, inputs) -> (ad_ids, raw_codes (n, L), last_level_cost (n, K) array or LazyRowCost)`.
    """

    @asset(name=f"{method}_sids", group_name=GROUP, kinds={"polars", "duckdb", "mlflow"},
           ins={"trained": AssetIn(model_asset), **inputs}, owners=["team:tokenizers"], tags={"stage": "tokenizers"},
           description=f"SID table of {method}: ad_id -> codes (collision-free after resolution), raw_codes, "
                       "method, model_version, weights_sha256 (sha256 of the tokenizer's weights). Archived as an MLflow "
                       "artifact so SIDs never silently change.")
    def _sids(context: AssetExecutionContext, config: SidTableConfig, mlflow: MlflowTracking,
              trained: TrainedTokenizer, **kwargs) -> Output[pl.DataFrame]:
        ad_ids, raw, cost = encode(trained, kwargs)
        table, info = build_sid_table(ad_ids, raw, method=method, model_version=trained.version,
                                      resolution=config.resolution, last_level_cost=cost,
                                      weights_sha256=trained.weights)
        pre, post = info["pre"], info["post"]
        with mlflow.run_for(context, params={"resolution": config.resolution, "model_version": trained.version,
                                             "method": method}) as run:
            run.log_metrics({"collision_rate_pre": pre["collision_rate"], "collision_rate_post": post["collision_rate"],
                             "max_group_size_pre": pre["max_group_size"], "n_unique_sids_pre": pre["n_unique_sids"],
                             "sid_length": info["sid_length"], "n_reassigned": info["n_reassigned"]})
            run.log_dict(info, "sid_info.json")
            run.log_table(table, f"{method}_sids.parquet")
            meta = run_metadata(run, mlflow.ui_base)
        context.log.info(f"{method}: collision rate {pre['collision_rate']:.4f} -> {post['collision_rate']:.4f} "
                         f"({info['resolution_used']}; SID length {info['sid_length']})")
        if info["fallback_reason"]:
            context.log.warning(f"{method}: reassign fell back to suffix: {info['fallback_reason']}")
        preview = table.head(10).with_columns(pl.col("codes").cast(pl.List(pl.Utf8)).list.join("-"),
                                              pl.col("raw_codes").cast(pl.List(pl.Utf8)).list.join("-"))
        return Output(table, metadata=readable({**table_metadata(preview), **meta, "dagster/row_count": table.height,
                                       "collision_rate_pre": pre["collision_rate"],
                                       "collision_rate_post": post["collision_rate"],
                                       "resolution_used": info["resolution_used"], "sid_length": info["sid_length"],
                                       "model_version": trained.version}))

    return _sids


def _encode_embeddings(trained: TrainedTokenizer, inputs: dict[str, Any]):
    """Codes of every ad, chunk by chunk; the reassign cost is computed only for the rows that collide."""
    ad_ids, x = frame_to_embeddings(inputs["ad_text_embeddings"])
    model = trained.model
    codes = model.encode(x)
    cost = LazyRowCost(len(ad_ids), model.rq.codebook_size,
                       lambda rows: model.last_level_distances(x[rows], codes=codes[rows]))
    return ad_ids, codes, cost


rq_kmeans_sids = sid_table_asset("rq_kmeans", "rq_kmeans_model", {"ad_text_embeddings": AssetIn()}, _encode_embeddings)
rq_vae_sids = sid_table_asset("rq_vae", "rq_vae_model", {"ad_text_embeddings": AssetIn()}, _encode_embeddings)

ASSETS = [rq_kmeans_model, rq_vae_model, rq_kmeans_sids, rq_vae_sids]
