"""`quiet_loading()`: load Hugging Face models without progress bars in the run's logs.

transformers 5 draws a "Loading weights" tqdm bar for every from_pretrained, and its GGUF reader draws another that
ignores `disable_progress_bar()`; in a Dagster log each is a line of carriage returns. Every loader of the project
wraps its from_pretrained calls in this context, which restores the previous state on exit.
"""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # no GGUF support in this transformers build
        gguf_utils = None
    original = getattr(gguf_utils, "tqdm", None)
    if original is not None:
        gguf_utils.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        if original is not None:
            gguf_utils.tqdm = original
        if bars:
            hf_logging.enable_progress_bar()
