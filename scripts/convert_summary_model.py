"""Convert the default summary model's GGUF file once into the project home (`make setup` runs this).

transformers re-parses a GGUF file on every load (~30 s for SmolLM2 on 2 cores); the converted copy under
`<home>/models/` (`unisid_pipeline.llm.gguf_copy`) loads in under a second and writes the same summaries.
Without the default model installed there is nothing to convert, and this says so.

    .venv/bin/python scripts/convert_summary_model.py
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from unisid_pipeline import paths
    from unisid_pipeline.llm.summarizer import SummarizerConfig, build_summarizer

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = paths.converted_models(paths.project_home())
    try:
        summarizer = build_summarizer(SummarizerConfig(device="cpu"), converted_root=root)
    except FileNotFoundError as exc:
        print(f"no summary model converted: {exc}")
        return 0
    print(f"summary model {summarizer.model_id} loads from {summarizer.loaded_from}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
