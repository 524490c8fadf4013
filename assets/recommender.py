"""Downstream generative recommender per SID method, and the side-by-side evaluation."""
import hashlib
import time

import polars as pl
import pydantic
from dagster import (
    AssetExecutionContext,
    AssetIn,
    Config,
    DynamicOut,
    DynamicOutput,
    MetadataValue,
    OpExecutionContext,
    Out,
    Output,
    RetryPolicy,
    asset,
    graph_asset,
    op,
)
from pydantic import Field

from assets.config import graph_config, mirror, to_core
from assets.metadata import device_in_use, plots_metadata, readable, run_metadata, table_value
from assets.resources import ComputeDevice, MlflowTracking, ProjectHome, optional_input
from assets.tokenizers import loss_figure
from unisid_pipeline.embeddings import frame_to_embeddings
from unisid_pipeline.recommender import RecommenderConfig, evaluate_recommender, train_recommender
from unisid_pipeline.reporting import comparison_figure, summarize_runs
from unisid_pipeline.retrieval import heldout_pairs, retrieval_recall
from unisid_pipeline.artifacts import state_fingerprint
from unisid_pipeline.tracking import find_version, set_alias, version_tags

GROUP = "recommender"
SID_METHODS = ("rq_kmeans", "rq_vae", "unisid")
METRICS = ("recall@1", "recall@5", "recall@10", "recall@20", "ndcg@5", "ndcg@10", "mrr")

_RC = mirror(RecommenderConfig)
def _check_seeds(seeds: list[int]) -> list[int]:
    if not seeds:
        raise ValueError("seeds is empty: give at least one seed, e.g. seeds: [0]")
    if len(set(seeds)) < len(seeds) or min(seeds) < 0:
        raise ValueError(f"seeds must be distinct non-negative ints, got {seeds}")
    return seeds


RecommenderRun = pydantic.create_model(
    "RecommenderRun", __base__=Config, __doc__="TIGER-style recommender training; one model per seed.",
    __validators__={"seeds_ok": pydantic.field_validator("seeds")(_check_seeds)},
    model=(_RC, Field(default_factory=_RC, description="RecommenderConfig (its seed is replaced by each of seeds)")),
    seeds=(list[int], Field([0], description="one model per seed, each its own retried step and MLflow run; "
                            "downstream_eval reports mean ± std")),
    register_model=(bool, Field(True, description="register the seed with the best validation Recall@10 as a version "
                                "of recommender_<method> (a pyfunc: user history -> top-k ad ids)")),
)
SEED_RETRIES = RetryPolicy(max_retries=2, delay=2)  # a retried seed resumes from its last validated epoch


RegisterConfig = pydantic.create_model(  # the summary step's part of RecommenderRun (graph_config hands it over)
    "RegisterConfig", __base__=Config, __doc__="Whether the best seed goes to the MLflow model registry.",
    register_model=(bool, RecommenderRun.model_fields["register_model"]))


def serving_example(user_sequences: pl.DataFrame, cfg: RecommenderConfig) -> pl.DataFrame:
    """The input example of a registered recommender: three users' test histories (and ids, with user tokens)."""
    head = user_sequences.head(3)
    cols = {"history": head["test_history"]}
    if cfg.use_user_token:
        cols = {"user_id": head["user_id"], **cols}
    return pl.DataFrame(cols)


def register_best_seed(context: OpExecutionContext, run, method: str, seeds: list[dict], sid_version: str) -> str:
    """Register the seed with the best validation Recall@10 as `recommender_<method>` (reusing the version with the
    same weights and SID table); returns "recommender_<method>/<version>"."""
    name = f"recommender_{method}"
    best = max(seeds, key=lambda r: (r["valid_recall@10"], -r["row"]["seed"]))
    fingerprint = hashlib.sha256(f"{best['weights']}|{sid_version}".encode()).hexdigest()  # same weights, same table
    version = find_version(run, name, fingerprint)
    if version is None:
        version = run.register(best["model_uri"], name, version_tags(fingerprint, {
            "method": method, "seed": best["row"]["seed"], "sid_model_version": sid_version,
            "test_recall_at_10": round(best["row"]["recall@10"], 4)}))
        context.log.info(f"registry: {name} version {version} (seed {best['row']['seed']}, best validation "
                         f"R@10 {best['valid_recall@10']:.4f}; decodes into {sid_version}'s SIDs)")
    else:
        context.log.info(f"registry: {name} version {version} (unchanged weights, reused)")
    run.set_tags({"registered_model": name, "registered_version": version})
    return f"{name}/{version}"


def recommender_asset(method: str):
    """recommender_<method>: a graph-backed asset. `<name>_seeds` fans out one `<name>_seed` step per seed
    (own MLflow run, checkpoints under <home>/checkpoints/recommender/<method>/, retried by SEED_RETRIES);
    `<name>_summary` gathers the seeds into the asset's value and its MLflow run (the seeds' parent)."""
    name = f"recommender_{method}"

    @op(name=f"{name}_seeds", out=DynamicOut(dict, io_manager_key="step_io_manager"), tags={"stage": "recommender"})
    def plan(context: OpExecutionContext, config: RecommenderRun, compute: ComputeDevice, sids: pl.DataFrame):
        """One training step per seed of `seeds`, on the device the compute resource resolves."""
        base = to_core(config.model, RecommenderConfig)
        used = device_in_use(context, compute, base.device, name)
        context.log.info(f"{method}: {len(config.seeds)} seed(s) {config.seeds} on {sids.height:,} ads' SIDs "
                         f"({sids['model_version'][0]})")
        for seed in config.seeds:
            yield DynamicOutput({**base.to_dict(), "seed": seed, "device": used}, mapping_key=f"seed{seed}")

    @op(name=f"{name}_seed", out=Out(dict, io_manager_key="step_io_manager"), retry_policy=SEED_RETRIES,
        tags={"stage": "recommender"})
    def train_seed(context: OpExecutionContext, mlflow: MlflowTracking, project_home: ProjectHome, spec: dict,
                   sids: pl.DataFrame, user_sequences: pl.DataFrame) -> dict:
        """Train and test one seed; a retry resumes from the seed's checkpoint."""
        cfg = RecommenderConfig.from_dict(spec)
        seed = cfg.seed
        if context.retry_number:
            context.log.info(f"{method} seed {seed}: attempt {context.retry_number + 1}, resuming from its checkpoint")
        version = sids["model_version"][0]
        with mlflow.run_for(context, params={**cfg.to_dict(), "method": method, "device_used": cfg.device,
                                             "sid_model_version": version},
                            tags={"method": method, "seed": str(seed)}, name_suffix=f"-seed{seed}") as run:
            run.log_input(user_sequences, "user_sequences")
            run.log_input(sids, f"{method}_sids")
            t0 = time.perf_counter()

            def on_epoch(row: dict) -> None:
                valid = row.get("valid_recall@10")
                context.log.info(f"{method} seed {seed} epoch {row['epoch']}: loss {row['train_loss']:.4f}"
                                 + (f", valid R@10 {valid:.4f}" if valid is not None else ""))
                run.log_metrics({k: v for k, v in row.items() if isinstance(v, (int, float)) and k not in ("epoch", "step")},
                                step=int(row["epoch"]))

            model, history = train_recommender(cfg, sids, user_sequences, on_epoch=on_epoch,
                                               checkpoint_dir=project_home.sub("checkpoints", "recommender", method))
            train_s = time.perf_counter() - t0
            test = evaluate_recommender(model, user_sequences, split="test")
            context.log.info(f"{method} seed {seed}: test " + ", ".join(f"{k} {test[k]:.4f}" for k in METRICS))
            run.log_metrics({f"test_{k}": test[k] for k in METRICS})
            model_uri, _ = run.log_model(model, "model", serving_example(user_sequences, cfg), kind="recommender")
        best = max((r for r in history if r["evaluated"]), key=lambda r: (r["valid_recall@10"], r["valid_ndcg@10"]))
        row = {"method": method, "seed": seed, **{k: float(test[k]) for k in METRICS}, "epochs_run": len(history),
               "best_epoch": int(best["epoch"]), "train_seconds": round(train_s, 1),
               "eval_users_per_s": round(float(test.get("users_per_s", 0.0)), 1)}
        return {"row": row, "checkpoint": model.to_checkpoint(), "train_loss": [r["train_loss"] for r in history],
                "mlflow_run_id": run.run_id, "model_uri": model_uri, "valid_recall@10": float(best["valid_recall@10"]),
                "weights": state_fingerprint(model)}

    @op(name=f"{name}_summary", tags={"stage": "recommender"})
    def summary(context: OpExecutionContext, config: RegisterConfig, mlflow: MlflowTracking, seeds: list[dict],
                sids: pl.DataFrame) -> Output[dict]:
        """The seeds side by side: the asset's value (per-seed test metrics and models) and MLflow run."""
        seeds = sorted(seeds, key=lambda r: r["row"]["seed"])
        results = pl.DataFrame([r["row"] for r in seeds])
        version = sids["model_version"][0]
        with mlflow.run_for(context, params={"method": method, "seeds": results["seed"].to_list(),
                                             "sid_model_version": version}) as run:
            for r in seeds:  # the seeds' runs show nested under this one in the MLflow UI
                run.client.set_tag(r["mlflow_run_id"], "mlflow.parentRunId", run.run_id)
            run.log_metrics({f"test_{k}_{stat}": float(getattr(results[k], stat)() or 0.0)
                             for k in METRICS for stat in ("mean", "std")})
            run.log_table(results, "test_metrics.parquet")
            curves = {f"seed{r['row']['seed']}_train_loss": r["train_loss"] for r in seeds}
            n = max(len(c) for c in curves.values())
            fig = loss_figure({"epoch": list(range(1, n + 1)),
                               **{k: c + [float("nan")] * (n - len(c)) for k, c in curves.items()}},
                              "epoch", list(curves), f"Recommender on {method} SIDs: training loss")
            run.log_figure(fig, "loss_curve.png")
            registered = register_best_seed(context, run, method, seeds, version) if config.register_model else None
            meta = run_metadata(run, mlflow.ui_base)
        context.log.info(f"{method}: {len(seeds)} seed(s), test R@10 {results['recall@10'].mean():.4f}, "
                         f"N@10 {results['ndcg@10'].mean():.4f}")
        return Output({"method": method, "results": results, "checkpoints": {r["row"]["seed"]: r["checkpoint"] for r in seeds},
                       "sid_model_version": version, "registered_model": registered},
                      metadata=readable({**plots_metadata({"loss_curve": fig}), **meta, "registered_model": registered or "not registered",
                                         "test_metrics": table_value(results),
                                         "seeds": results.height,
                                         **{f"test_{k}": float(results[k].mean()) for k in ("recall@10", "ndcg@10")}}))

    @graph_asset(name=name, group_name=GROUP, kinds={"torch", "mlflow"}, owners=["team:recommender"],
                 tags={"stage": "recommender"}, ins={"sids": AssetIn(f"{method}_sids"), "user_sequences": AssetIn()},
                 config=graph_config(RecommenderRun, plan.name, also={summary.name: ["register_model"]}),
                 description=f"TIGER-style T5 trained on {method} SIDs (constrained beam search over valid SIDs, item-level "
                             "leave-one-out evaluation); one step, MLflow run and model per seed, retried and resumed "
                             "from its checkpoint on failure, gathered with per-seed test metrics.")
    def _rec(sids, user_sequences):
        runs = plan(sids).map(lambda spec: train_seed(spec, sids, user_sequences))
        return summary(runs.collect(), sids)

    return _rec


RECOMMENDERS = [recommender_asset(m) for m in SID_METHODS]


class EvalConfig(Config):
    """Which metric picks the champion tokenizer."""

    champion_metric: str = Field("recall@10", description="mean test metric that picks the champion")
    set_champion_alias: bool = Field(True, description="give the best method's registered tokenizer the 'champion' alias")


@asset(group_name=GROUP, kinds={"polars", "duckdb", "mlflow"}, owners=["team:recommender"], tags={"stage": "evaluation"},
       ins={f"recommender_{m}": optional_input(f"recommender_{m}") for m in SID_METHODS})
def downstream_eval(context: AssetExecutionContext, config: EvalConfig, mlflow: MlflowTracking,
                    **recommenders: dict | None) -> Output[pl.DataFrame]:
    """The SID methods side by side on the downstream task: mean ± std over seeds of Recall@1/5/10/20, NDCG@5/10,
    MRR. Compares whichever recommenders are materialized (at least one)."""
    recommenders = {k: r for k, r in recommenders.items() if r is not None}
    if not recommenders:
        raise ValueError("no recommender has been materialized: run e.g. `dagster asset materialize --select "
                         "'recommender_rq_kmeans'` (or '*') first")
    context.log.info("comparing " + ", ".join(f"{r['method']} ({r['results'].height} seed(s))" for r in recommenders.values()))
    per_seed = pl.concat([r["results"] for r in recommenders.values()], how="diagonal_relaxed")
    table = summarize_runs(per_seed, METRICS)
    for row in table.iter_rows(named=True):
        context.log.info(f"{row['method']} ({row['n_seeds']} seed(s)): " + ", ".join(
            f"{k} {row[f'{k}_mean']:.4f} ± {row[f'{k}_std']:.4f}" for k in ("recall@5", "recall@10", "ndcg@5", "ndcg@10")))
    best = table.sort(f"{config.champion_metric}_mean", descending=True)["method"][0]
    with mlflow.run_for(context, params=config.model_dump()) as run:
        for row in table.iter_rows(named=True):
            run.log_metrics({f"{row['method']}.{k}": v for k, v in row.items() if isinstance(v, float)})
        run.log_table(per_seed, "per_seed.parquet")
        run.log_table(table, "downstream_eval.parquet")
        fig = comparison_figure(table, ("recall@5", "recall@10", "ndcg@5", "ndcg@10"), "Downstream recommendation (test)")
        run.log_figure(fig, "downstream_eval.png")
        version = next(r["sid_model_version"] for r in recommenders.values() if r["method"] == best)
        champion = None
        if config.set_champion_alias and "/" in version:
            name, ver = version.split("/", 1)
            set_alias(mlflow.resolved_uri(), name, "champion", ver)
            champion = f"models:/{name}@champion (version {ver})"
            context.log.info(f"champion tokenizer: {best} -> {champion}")
            registered = next(r.get("registered_model") for r in recommenders.values() if r["method"] == best)
            if registered:
                rec_name, rec_ver = registered.split("/", 1)
                set_alias(mlflow.resolved_uri(), rec_name, "champion", rec_ver)
                context.log.info(f"champion recommender: models:/{rec_name}@champion (version {rec_ver})")
        run.set_tags({"champion_method": best})
        meta = run_metadata(run, mlflow.ui_base)
    return Output(table, metadata=readable({**plots_metadata({"downstream_eval": fig}), **meta,
                                   "comparison": table_value(table),
                                   "champion_method": best, "champion_model": champion or "not registered",
                                   "dagster/row_count": table.height}))


ASSETS = [*RECOMMENDERS, downstream_eval]


class RetrievalConfig(Config):
    """Ad-to-ad retrieval: 1 positive (the held-out test click) among n_negatives random ads."""

    n_negatives: int = Field(999, description="negatives per query (paper: 999); capped at catalog size - 2")
    max_pairs: int = Field(5000, description="query/positive pairs sampled from the test split (last history ad, test target)")
    seed: int = Field(0, description="pair and negative sampling seed")


@asset(group_name=GROUP, kinds={"polars", "duckdb", "mlflow"}, owners=["team:recommender"], tags={"stage": "evaluation"})
def embedding_retrieval_eval(context: AssetExecutionContext, config: RetrievalConfig, mlflow: MlflowTracking,
                             ad_text_embeddings: pl.DataFrame, unisid_embeddings: pl.DataFrame,
                             user_sequences: pl.DataFrame) -> Output[pl.DataFrame]:
    """Recall@1/5/10/20 of ad-to-ad retrieval (query: the user's last history ad, positive: the test click,
    1 among 1 + n_negatives) for every model that emits an ad embedding: UniSID and the text encoder. Held-out
    pairs, because UniSID may learn from the training clicks (emb_positives='co_interaction')."""
    pairs = heldout_pairs(user_sequences, "test", config.max_pairs, config.seed)
    rows = []
    with mlflow.run_for(context, params=config.model_dump()) as run:
        for name, frame in (("text_encoder", ad_text_embeddings), ("unisid", unisid_embeddings)):
            ad_ids, x = frame_to_embeddings(frame)
            n_neg = min(config.n_negatives, len(ad_ids) - 2)
            if n_neg < config.n_negatives and not rows:  # said once: every model here embeds the same catalog
                context.log.warning(f"catalog of {len(ad_ids)} ads: {n_neg} negatives per query instead of {config.n_negatives}")
            res = retrieval_recall(ad_ids, x, pairs, n_negatives=n_neg, seed=config.seed)
            context.log.info(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in res.items() if k.startswith("recall@"))
                             + f" ({len(pairs):,} held-out pairs, 1 positive vs {n_neg} negatives)")
            rows.append({"model": name, "n_negatives": n_neg, **res})
            run.log_metrics({f"{name}.{k}": v for k, v in res.items()})
        table = pl.DataFrame(rows)
        run.log_table(table, "embedding_retrieval.parquet")
        meta = run_metadata(run, mlflow.ui_base)
    return Output(table, metadata=readable({**meta, "results": table_value(table),
                                   "dagster/row_count": table.height}))


ASSETS.append(embedding_retrieval_eval)
