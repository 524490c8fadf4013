"""LLM ad summaries (the UniSID summary-reconstruction target) with a persistent DuckDB cache.

Importing this package does not import transformers; `TransformersSummarizer` does when built.
"""
from unisid_pipeline.llm.cache import SummaryCache, local_model_id
from unisid_pipeline.llm.prompts import PROMPT_VERSION, ad_content_hash, build_messages, render_prompt
from unisid_pipeline.llm.summarizer import (
    FALLBACK_SUMMARY,
    INSTALL_HINT,
    SUMMARY_COLUMNS,
    PostprocessConfig,
    Summarizer,
    SummarizerConfig,
    TemplateSummarizer,
    TransformersSummarizer,
    build_summarizer,
    default_summarizer_model,
    postprocess_summary,
    prompt_version_for,
    summarize_ads,
)

__all__ = [
    "FALLBACK_SUMMARY",
    "INSTALL_HINT",
    "PROMPT_VERSION",
    "SUMMARY_COLUMNS",
    "PostprocessConfig",
    "Summarizer",
    "SummarizerConfig",
    "SummaryCache",
    "TemplateSummarizer",
    "TransformersSummarizer",
    "ad_content_hash",
    "build_messages",
    "build_summarizer",
    "default_summarizer_model",
    "local_model_id",
    "postprocess_summary",
    "prompt_version_for",
    "render_prompt",
    "summarize_ads",
]
