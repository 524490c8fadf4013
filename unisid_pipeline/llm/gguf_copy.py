"""A GGUF summary model, converted once into a plain safetensors folder that loads in about a second.

transformers reads a GGUF file by parsing its metadata in each `from_pretrained` (config twice, tokenizer, weights:
~590k field reads in all) and dequantizes every tensor into float32: ~30 s for the 135M-parameter SmolLM2 on
2 cores, on every run. `save_converted` keeps what that produced — the float32 weights, config, generation config
and tokenizer, written by `save_pretrained` — under `copy_folder(root, model id)`, so later loads read the same numbers from
safetensors. The model id holds a digest of the GGUF file (`cache.local_model_id`): another file never reuses a copy.

The folder is written next to its final place and renamed into it (a killed conversion leaves no half copy), and
only a folder with the `COMPLETE` marker is used.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from unisid_pipeline.hf_quiet import quiet_loading

logger = logging.getLogger(__name__)

COMPLETE = "COMPLETE"


def copy_folder(root: str | Path, model_id: str) -> Path:
    """Where the converted copy of the model `model_id` lives under `root`."""
    safe = re.sub(r"[^A-Za-z0-9._@-]", "_", model_id)
    return Path(root) / safe


def ready(folder: Path) -> bool:
    return (folder / COMPLETE).is_file()


def _save_dequantized(model, folder: Path) -> None:
    """`save_pretrained` of a GGUF-loaded model: its weights are plain float32 tensors already, but transformers
    refuses to serialize a model that still carries the GGUF quantizer, so it is detached for the call."""
    quantizer = getattr(model, "hf_quantizer", None)
    had_qc = hasattr(model.config, "quantization_config")
    qc = getattr(model.config, "quantization_config", None)
    model.hf_quantizer = None
    if had_qc:
        del model.config.quantization_config
    try:
        model.save_pretrained(folder, safe_serialization=True)
    finally:
        model.hf_quantizer = quantizer
        if had_qc:
            model.config.quantization_config = qc


def save_converted(folder: Path, model, tokenizer) -> Path:
    """Write `model` and `tokenizer` (loaded from the GGUF file) as the converted copy `folder`; returns it."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        with quiet_loading():  # no "Writing model shards" bar in the run's log
            _save_dequantized(model, tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / COMPLETE).write_text(f"converted from GGUF by transformers; model {folder.name}\n")
        if folder.exists() and not ready(folder):  # what a killed conversion of an older version left
            shutil.rmtree(folder)
        try:
            os.rename(tmp, folder)
        except OSError:  # another process finished the same copy first: keep theirs
            if not ready(folder):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("saved a converted copy of the GGUF model to %s (loads without re-parsing the GGUF)", folder)
    return folder

