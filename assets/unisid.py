"""UniSID: one model reads the raw ad and emits the SID tuple and a dense embedding."""
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pydantic
import torch
from dagster import AssetExecutionContext, AssetIn, Config, MetadataValue, Output, PipesSubprocessClient, asset
from pydantic import Field

from assets.config import DEVICE_HELP, mirror, to_core
from assets.launch import Launcher, check_launcher, fresh_dir, read_history, run_pipes, torchrun_command
from assets.metadata import device_in_use, plots_metadata, readable, run_metadata, table_value
from assets.resources import ComputeDevice, MlflowTracking, ProjectHome
from assets.tokenizers import GROUP, finish_tokenizer, loss_figure, sid_table_asset
from unisid_pipeline.artifacts import TrainedTokenizer, array_fingerprint
from unisid_pipeline.embeddings import embeddings_to_frame
from unisid_pipeline.cli.common import HISTORY_FILE, MODEL_FILE
from unisid_pipeline.warehouse import read_object
from unisid_pipeline.unisid import UniSIDModel, UniSIDTrainConfig, train_unisid
from unisid_pipeline.unisid.tables import aligned_inputs, sequence_inputs

_TC = mirror(UniSIDTrainConfig)
UniSIDRun = pydantic.create_model(
    "UniSIDRun", __base__=Config, __doc__="UniSID training (losses switchable for ablations).",
    train=(_TC, Field(default_factory=_TC, description="UniSIDTrainConfig: model, losses, optimiser, checkpoints")),
    seed=(int, Field(0, description="seed for torch, numpy and Python")),
    device=(str, Field("auto", description=DEVICE_HELP)),
    register_model=(bool, Field(True, description="log and register the model in the MLflow model registry")),
    encode_batch_size=(int, Field(64, description="ads per batch when encoding the catalog after training")),
    launcher=(Launcher, Field("in_process", description=(
        "in_process: train inside this Dagster process; pipes_subprocess: run `torchrun -m "
        "unisid_pipeline.cli.train_unisid` through Dagster Pipes (PipesSubprocessClient) with nproc processes"))),
    nproc=(int, Field(1, description="pipes_subprocess: processes torchrun starts (> 1 = DDP: gloo on the CPU, "
                                     "one GPU each with device 'cuda'); each step then takes nproc micro-batches")),
)


def _log_step(run, row: dict) -> None:
    run.log_metrics({k: v for k, v in row.items() if isinstance(v, (int, float)) and k not in ("step", "epoch")
                     and v == v}, step=int(row["step"]))


def _log_epoch(run, row: dict) -> None:
    run.log_metrics({f"epoch.{k}": v for k, v in row.items() if isinstance(v, (int, float)) and k != "epoch"
                     and v == v}, step=int(row["epoch"]))


def _train_with_pipes(context: AssetExecutionContext, config: Config, core: UniSIDTrainConfig,
                      client: PipesSubprocessClient, work: Path, ckpt_dir: Path, raw_ads: pl.DataFrame,
                      ad_summaries: pl.DataFrame, labels: pl.DataFrame,
                      user_sequences: pl.DataFrame) -> tuple[UniSIDModel, dict, dict[str, Any]]:
    """Train in `torchrun -m unisid_pipeline.cli.train_unisid` (config.nproc processes) through Dagster Pipes;
    load the model and history it wrote. Returns (model, history, the metadata the child reported)."""
    fresh_dir(work)
    out = work / "out"
    paths = {"ads": work / "ads.parquet", "labels": work / "labels.parquet", "summaries": work / "summaries.parquet",
             "sequences": work / "sequences.parquet"}
    raw_ads.write_parquet(paths["ads"])
    user_sequences.write_parquet(paths["sequences"])
    labels.write_parquet(paths["labels"])
    ad_summaries.select("ad_id", "summary").write_parquet(paths["summaries"])
    run_json = work / "run.json"
    run_json.write_text(json.dumps({"train": core.to_dict(), "seed": config.seed, "device": config.device,
                                    "checkpoint_dir": str(ckpt_dir)}))
    args = ["--config", str(run_json), "--out", str(out), *[x for k, p in paths.items() for x in (f"--{k}", str(p))]]
    meta = run_pipes(context, client, torchrun_command("unisid_pipeline.cli.train_unisid", config.nproc, args),
                     extras={"asset": "unisid_model", "nproc": config.nproc})
    model = read_object(out / MODEL_FILE)  # no pickle: a file of another format is refused unread
    if not isinstance(model, UniSIDModel):
        raise TypeError(f"{out / MODEL_FILE} holds a {type(model).__name__}, not a UniSID model")
    history = read_history(out / HISTORY_FILE)
    shutil.rmtree(work, ignore_errors=True)  # the model now lives in this process (and in MLflow below)
    return model, history, meta


@asset(group_name=GROUP, kinds={"torch", "mlflow"}, owners=["team:tokenizers"], tags={"stage": "tokenizers"})
def unisid_model(context: AssetExecutionContext, config: UniSIDRun, mlflow: MlflowTracking, project_home: ProjectHome,
                 compute: ComputeDevice, pipes_subprocess_client: PipesSubprocessClient, raw_ads: pl.DataFrame, ad_summaries: pl.DataFrame,
                 ad_hierarchy_labels: pl.DataFrame, user_sequences: pl.DataFrame) -> Output[TrainedTokenizer]:
    """UniSID trained end-to-end from the raw ads: L_sid (multi-granularity SupCon on the per-level SID logits,
    positives share the category path to that depth) + L_emb (InfoNCE; positives: the ad's co-interacted ads
    in the training clicks, or its second view) + λ·L_rec (summary reconstruction). The SID is the heads' argmax
    or the residual quantizer fitted on UniSID's own embedding (`model.sid_source`).

    Checkpoints every `checkpoint_every` steps under `<home>/checkpoints/unisid/<recipe>`; a killed run resumes.
    launcher='pipes_subprocess' trains in an external torchrun job (nproc processes, DDP) through Dagster Pipes,
    then continues here exactly as in-process: encode, MLflow logging, registration.
    """
    check_launcher(config.launcher, config.nproc)
    world = config.nproc if config.launcher == "pipes_subprocess" else 1
    core = to_core(config.train, UniSIDTrainConfig)
    summaries, level_labels = aligned_inputs(raw_ads, ad_summaries, ad_hierarchy_labels)
    partners, retrieval_pairs = sequence_inputs(raw_ads, user_sequences, seed=config.seed)
    uses_pairs = core.emb_positives == "co_interaction"
    # the launcher does not change the model; the world size does (each step takes world micro-batches)
    recipe = {**{k: v for k, v in config.model_dump().items() if k not in ("device", "register_model", "launcher", "nproc")},
              **({"world_size": world} if world > 1 else {}),
              "data": array_fingerprint(raw_ads["ad_id"].to_numpy(), level_labels),
              "summaries": hashlib.sha256("\x1f".join(summaries).encode()).hexdigest(),
              **({"partners": array_fingerprint(partners.offsets, partners.values)} if uses_pairs else {})}
    recipe_id = hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]
    ckpt_dir = project_home.sub("checkpoints", "unisid", recipe_id)
    requested = config.device
    config = config.model_copy(update={"device": device_in_use(context, compute, requested, "unisid_model")})
    params = {"train": core.to_dict() if hasattr(core, "to_dict") else config.train.model_dump(), "seed": config.seed,
              "device": requested, "device_used": config.device,
              "n_ads": raw_ads.height, "checkpoint_dir": str(ckpt_dir),
              "launcher": config.launcher, "world_size": world,
              "summary_backend": ad_summaries["backend"][0] if "backend" in ad_summaries.columns else "unknown"}
    with mlflow.run_for(context, params=params) as run:
        run.log_input(raw_ads, "raw_ads")
        run.log_input(user_sequences, "user_sequences")
        t0 = time.perf_counter()
        last_log = [0.0]

        def on_step(row: dict) -> None:
            _log_step(run, row)
            now = time.monotonic()
            if now - last_log[0] > 10:
                last_log[0] = now
                context.log.info(f"unisid step {row['step']}: loss {row['loss']:.4f} (sid {row.get('loss_sid', 0):.4f}, "
                                 f"emb {row.get('loss_emb', 0):.4f}, rec {row.get('loss_rec', 0):.4f}), "
                                 f"{row.get('ads_per_s', 0):.1f} ads/s")

        def on_epoch(row: dict) -> None:
            context.log.info(f"unisid epoch {row['epoch']}: " + ", ".join(
                f"{k} {v:.3f}" for k, v in row.items() if isinstance(v, float)))
            _log_epoch(run, row)

        pipes_meta: dict[str, Any] = {}
        if config.launcher == "pipes_subprocess":
            model, history, pipes_meta = _train_with_pipes(
                context, config, core, pipes_subprocess_client, project_home.sub("pipes", "unisid", context.run_id),
                ckpt_dir, raw_ads, ad_summaries, ad_hierarchy_labels, user_sequences)
            for row in history["step"]:
                _log_step(run, row)
            for row in history["epoch"]:
                _log_epoch(run, row)
        else:
            model, history = train_unisid(core, raw_ads, summaries, level_labels, seed=config.seed,
                                          device=config.device, checkpoint_dir=ckpt_dir, on_step=on_step,
                                          on_epoch=on_epoch, partners=partners, retrieval_pairs=retrieval_pairs)
        train_s = time.perf_counter() - t0
        for row in history.get("quantizer", []):  # sid_source="embedding_rq": the quantizer fitted on the embedding
            run.log_metrics({f"quantizer.{k}_l{row['level']}": float(v) for k, v in row.items()
                             if k in ("usage", "perplexity", "relative_residual_norm")})
        context.log.info(f"unisid SIDs from {core.model.sid_source} ({'residual k-means on the UniSID embedding' if core.model.sid_source == 'embedding_rq' else 'argmax of the SID heads'}), "
                         f"L_emb positives: {core.emb_positives}")
        codes, emb, last_logits = model.encode(raw_ads, batch_size=config.encode_batch_size, device=config.device)
        steps = history["step"]
        hist_cols = {"step": [r["step"] for r in steps], **{k: [r.get(k, float("nan")) for r in steps]
                                                              for k in ("loss", "loss_sid", "loss_emb", "loss_rec")}}
        fig = loss_figure(hist_cols, "step", ["loss", "loss_sid", "loss_emb", "loss_rec"], "UniSID training")
        run.log_figure(fig, "loss_curve.png")
        run.log_metrics({"train_seconds": train_s})
        trained = finish_tokenizer(context, run, "unisid", model, history, {"train_seconds": train_s},
                                   config.register_model, recipe=recipe, codes=codes, example=raw_ads)
        trained.info["outputs"] = {"ad_ids": raw_ads["ad_id"].to_numpy(), "codes": codes, "embeddings": emb,
                                   "last_logits": last_logits}
        meta = run_metadata(run, mlflow.ui_base)
    epochs = pl.DataFrame(history["epoch"]) if history["epoch"] else pl.DataFrame()
    return Output(trained, metadata=readable({**plots_metadata({"loss_curve": fig}), **meta, **pipes_meta, "version": trained.version, "train_seconds": train_s,
                                     "launcher": config.launcher, "world_size": world,
                                     "steps": len(steps),
                                     "per_epoch": table_value(epochs, max_rows=20)}))


def _encode_unisid(trained: TrainedTokenizer, inputs: dict):
    out = trained.info["outputs"]
    return out["ad_ids"], out["codes"], -out["last_logits"]


unisid_sids = sid_table_asset("unisid", "unisid_model", {}, _encode_unisid)


@asset(group_name=GROUP, kinds={"polars", "duckdb", "mlflow"}, owners=["team:tokenizers"], tags={"stage": "tokenizers"},
       ins={"trained": AssetIn("unisid_model")})
def unisid_embeddings(context: AssetExecutionContext, mlflow: MlflowTracking, trained: TrainedTokenizer) -> Output[pl.DataFrame]:
    """The dense ad embedding UniSID emits beside the SID (L2-normalised), for ad-to-ad retrieval."""
    out = trained.info["outputs"]
    x = np.asarray(out["embeddings"], dtype=np.float32)
    frame = embeddings_to_frame(out["ad_ids"], x)
    with mlflow.run_for(context, params={"model_version": trained.version}) as run:
        norms = np.linalg.norm(x, axis=1)
        run.log_metrics({"n_ads": frame.height, "dim": x.shape[1], "min_norm": float(norms.min()),
                         "max_norm": float(norms.max())})
        meta = run_metadata(run, mlflow.ui_base)
    return Output(frame, metadata=readable({**meta, "dagster/row_count": frame.height, "dim": int(x.shape[1]),
                                   "model_version": trained.version}))


ASSETS = [unisid_model, unisid_sids, unisid_embeddings]
