"""The registered tokenizers as MLflow pyfunc models: `mlflow models serve` and `mlflow.pyfunc.load_model` give SIDs.

With `tracking`, the only core modules that import mlflow. A registered tokenizer is a pyfunc model from code
(`pyfunc_tokenizer.py`, no pickled object) whose weights are a safetensors file plus JSON
(`checkpoint.save_checkpoint_dir`), with a signature, an input example and pinned requirements. Its input is what the method reads:
- UniSID: ads, the `raw_ads` columns (ad_id, title, description, ...); output ad_id, `sid` (one code per level,
  before collision resolution) and `embedding` (UniSID's L2-normalised ad embedding);
- RQ-KMeans / RQ-VAE: ad_id + `embedding` (the text embedding they quantize, as in `ad_text_embeddings`); output
  ad_id and `sid`.
"""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import polars as pl

from unisid_pipeline.checkpoint import load_checkpoint_dir, save_checkpoint_dir

CHECKPOINT_ARTIFACT = "checkpoint"
METHODS = ("rq_kmeans", "rq_vae", "unisid")


def method_of(model: Any) -> str:
    kind = getattr(model, "kind", None)
    return kind if kind in METHODS else "unisid"


def _model_class(method: str):
    if method == "unisid":
        from unisid_pipeline.unisid.model import UniSIDModel

        return UniSIDModel
    from unisid_pipeline.models.rq import RQKMeansTokenizer, RQVAETokenizer

    return {"rq_kmeans": RQKMeansTokenizer, "rq_vae": RQVAETokenizer}[method]


def encode_frame(method: str, model: Any, frame: pl.DataFrame) -> pd.DataFrame:
    """The pyfunc output for `frame` (see the module docstring), on the CPU."""
    if method == "unisid":
        codes, emb, _ = model.encode(frame, device="cpu")
        return pd.DataFrame({"ad_id": frame["ad_id"].cast(pl.Int64).to_list(), "sid": [list(map(int, c)) for c in codes],
                             "embedding": [e.astype(np.float32).tolist() for e in emb]})
    if "embedding" not in frame.columns:
        raise ValueError(f"the {method} tokenizer reads columns ad_id and embedding (the ad's text embedding, as in "
                         f"ad_text_embeddings); got {frame.columns}")
    x = np.asarray(frame["embedding"].to_list(), dtype=np.float32)
    codes = model.encode(x)
    return pd.DataFrame({"ad_id": frame["ad_id"].cast(pl.Int64).to_list(), "sid": [list(map(int, c)) for c in codes]})


class TokenizerModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of one tokenizer (the method named by the version's model_config); `tokenizer` is the model
    itself once loaded (`unwrap_python_model()`)."""

    def __init__(self) -> None:
        self.method: str | None = None
        self.tokenizer = None

    def load_context(self, context) -> None:
        method = (context.model_config or {}).get("method")
        if method not in METHODS:
            raise ValueError(f"model_config['method'] must be one of {METHODS}, got {method!r}")
        self.method = method
        self.tokenizer = _model_class(method).from_checkpoint(load_checkpoint_dir(context.artifacts[CHECKPOINT_ARTIFACT]))
        self.tokenizer.eval()

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pl.DataFrame) else pl.from_pandas(pd.DataFrame(model_input))
        return encode_frame(self.method, self.tokenizer, frame)


def log_tokenizer(model: Any, name: str, example: pl.DataFrame, pip_requirements: list[str]) -> Any:
    """Log `model` as a pyfunc tokenizer into the active MLflow run; returns mlflow's ModelInfo."""
    from mlflow.models import infer_signature

    method = method_of(model)
    example = example.head(3)
    output = encode_frame(method, model.cpu().eval(), example)
    example_pd = example.to_pandas()
    for col in example_pd.columns:  # numpy arrays in cells -> plain lists, which signatures and JSON understand
        if example_pd[col].dtype == object:
            example_pd[col] = example_pd[col].map(lambda v: v.tolist() if isinstance(v, np.ndarray) else v)
    with warnings.catch_warnings():  # ad_id is an int column by design: MLflow's hint about missing ints is noise here
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
        signature = infer_signature(example_pd, output)
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint_dir(model.to_checkpoint(), Path(tmp) / CHECKPOINT_ARTIFACT)
        return mlflow.pyfunc.log_model(
            name=name, python_model=str(Path(__file__).with_name("pyfunc_tokenizer.py")), model_config={"method": method},
            artifacts={CHECKPOINT_ARTIFACT: str(Path(tmp) / CHECKPOINT_ARTIFACT)},
            signature=signature, input_example=example_pd,
            pip_requirements=pip_requirements, code_paths=[str(Path(__file__).resolve().parent)],
        )


def load_pyfunc(model_uri: str) -> tuple[str | None, Any]:
    """(method, pyfunc model) of a registered version; method None for a model that is not one of ours."""
    model = mlflow.pyfunc.load_model(model_uri)
    try:
        return getattr(model.unwrap_python_model(), "method", None), model
    except mlflow.exceptions.MlflowException:  # a flavor with no Python model (an old pickled torch version)
        return None, model


def load_tokenizer(model_uri: str) -> Any:
    """The tokenizer object (with its `encode`) of a registered version: a pyfunc version's weights, or, for a
    version registered before the pyfunc format, its pickled torch model."""
    info = mlflow.models.get_model_info(model_uri)
    if "pytorch" not in info.flavors:
        return mlflow.pyfunc.load_model(model_uri).unwrap_python_model().tokenizer
    try:
        from mlflow import pytorch as mlflow_pytorch

        return mlflow_pytorch.load_model(model_uri, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any unpickling failure gets the same advice
        raise RuntimeError(f"{model_uri} is a pickled torch model from before the pyfunc format and does not load with "
                           f"this code ({type(exc).__name__}: {exc}); re-materialize its tokenizer asset to register a "
                           "pyfunc version") from exc
