"""The registered models as MLflow pyfunc models: `mlflow models serve` and `mlflow.pyfunc.load_model` give SIDs
(tokenizers) and recommendations (recommenders).

With `tracking`, the only core modules that import mlflow. A registered model is a pyfunc model from code
(`pyfunc_tokenizer.py`, `pyfunc_recommender.py`; no pickled object) whose weights are a safetensors file plus JSON
(`checkpoint.save_checkpoint_dir`), with a signature, an input example and pinned requirements.

A tokenizer's input is what the method reads:
- UniSID: ads, the `raw_ads` columns (ad_id, title, description, ...); output ad_id, `sid` (one code per level,
  before collision resolution) and `embedding` (UniSID's L2-normalised ad embedding);
- RQ-KMeans / RQ-VAE: ad_id + `embedding` (the text embedding they quantize, as in `ad_text_embeddings`); output
  ad_id and `sid`.

A recommender (`recommender_<method>`: the TIGER-style model of one SID method with the SID table it decodes into)
takes one row per user: `history` (the user's ad_ids, oldest first; ads the table does not know are skipped and
counted) and, for a model trained with user tokens, `user_id`; param `k` (default 10). Output per row: `ad_ids` (the
top-k, best first), `scores` (their beam log-probabilities) and `n_unknown` (history ads skipped).
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
from unisid_pipeline.data.schema import AD_REQUIRED

CHECKPOINT_ARTIFACT = "checkpoint"
METHODS = ("rq_kmeans", "rq_vae", "unisid")
DEFAULT_K = 10


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


def _plain_lists(frame: pd.DataFrame) -> pd.DataFrame:
    """numpy arrays in object cells -> plain lists, which signatures and JSON understand."""
    frame = frame.copy()
    for col in frame.columns:
        if frame[col].dtype == object:
            frame[col] = frame[col].map(lambda v: v.tolist() if isinstance(v, np.ndarray) else v)
    return frame


def _log_pyfunc(code_file: str, name: str, checkpoint: dict, model_config: dict, example: pd.DataFrame,
                output: pd.DataFrame, pip_requirements: list[str], params: dict | None = None,
                required: tuple[str, ...] | None = None) -> Any:
    """Log a pyfunc model from code (`code_file` next to this module) into the active MLflow run: the checkpoint as
    safetensors + JSON, signature inferred from `example` -> `output` (and `params`; input columns outside
    `required` optional), the example stored."""
    from mlflow.models import infer_signature

    with warnings.catch_warnings():  # ad_id is an int column by design: MLflow's hint about missing ints is noise here
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
        signature = infer_signature(example, output, params=params)
    if required is not None:  # the other input columns may be left out (an ads file with ad_id and title only)
        from mlflow.types.schema import ColSpec, Schema

        signature.inputs = Schema([ColSpec(c.type, c.name, required=c.name in required) for c in signature.inputs.inputs])
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint_dir(checkpoint, Path(tmp) / CHECKPOINT_ARTIFACT)
        return mlflow.pyfunc.log_model(
            name=name, python_model=str(Path(__file__).with_name(code_file)), model_config=model_config,
            artifacts={CHECKPOINT_ARTIFACT: str(Path(tmp) / CHECKPOINT_ARTIFACT)},
            signature=signature, input_example=(example, params) if params else example,
            pip_requirements=pip_requirements, code_paths=[str(Path(__file__).resolve().parent)],
        )


def log_tokenizer(model: Any, name: str, example: pl.DataFrame, pip_requirements: list[str]) -> Any:
    """Log `model` as a pyfunc tokenizer into the active MLflow run; returns mlflow's ModelInfo."""
    method = method_of(model)
    example = example.head(3)
    output = encode_frame(method, model.cpu().eval(), example)
    required = AD_REQUIRED if method == "unisid" else ("ad_id", "embedding")
    return _log_pyfunc("pyfunc_tokenizer.py", name, model.to_checkpoint(), {"method": method},
                       _plain_lists(example.to_pandas()), output, pip_requirements, required=required)


def recommend_frame(model: Any, frame: pl.DataFrame, k: int = DEFAULT_K) -> pd.DataFrame:
    """The recommender pyfunc's output for `frame` (see the module docstring), on the model's device."""
    if "history" not in frame.columns:
        raise ValueError(f"a recommender reads column history (the user's ad_ids, oldest first), got {frame.columns}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    histories, n_unknown = [], []
    for hist in frame["history"].to_list():
        hist = [int(a) for a in (hist or [])]
        kept = [a for a in hist if model.vocab.knows(a)]
        histories.append(kept)
        n_unknown.append(len(hist) - len(kept))
    user_ids = None
    if model.config.use_user_token:
        if "user_id" not in frame.columns:
            raise ValueError("this recommender was trained with user tokens: give column user_id beside history")
        user_ids = np.asarray(frame["user_id"].cast(pl.Int64).to_list(), dtype=np.int64)
    k = min(k, model.vocab.n_items)
    width = max(k, model.config.beam_size)  # the evaluation's beam: top-k of it, as the reported metrics are
    ids = np.full((len(histories), k), -1, dtype=np.int64)
    scores = np.full((len(histories), k), np.nan, dtype=np.float32)
    rows = [i for i, h in enumerate(histories) if h or user_ids is not None]
    if rows:
        top, sc = model.recommend([histories[i] for i in rows], None if user_ids is None else user_ids[rows], k=width)
        ids[rows], scores[rows] = top[:, :k], sc[:, :k]
    return pd.DataFrame({"ad_ids": [[int(a) for a in r if a >= 0] for r in ids],
                         "scores": [[round(float(s), 5) for s, a in zip(sr, r) if a >= 0] for sr, r in zip(scores, ids)],
                         "n_unknown": n_unknown})


class RecommenderModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of one recommender; `recommender` is the GenerativeRecommender once loaded."""

    def __init__(self) -> None:
        self.recommender = None

    def load_context(self, context) -> None:
        from unisid_pipeline.recommender.model import GenerativeRecommender

        self.recommender = GenerativeRecommender.from_checkpoint(
            load_checkpoint_dir(context.artifacts[CHECKPOINT_ARTIFACT]))

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pl.DataFrame) else pl.from_pandas(pd.DataFrame(model_input))
        return recommend_frame(self.recommender, frame, int((params or {}).get("k", DEFAULT_K)))


def log_recommender(model: Any, name: str, example: pl.DataFrame, pip_requirements: list[str]) -> Any:
    """Log a GenerativeRecommender as a pyfunc into the active MLflow run (input example: `example`, rows with
    `history` [+ `user_id`]); returns mlflow's ModelInfo."""
    model = model.cpu().eval()
    example = example.head(3)
    output = recommend_frame(model, example, DEFAULT_K)
    return _log_pyfunc("pyfunc_recommender.py", name, model.to_checkpoint(), {"kind": "recommender"},
                       _plain_lists(example.to_pandas()), output, pip_requirements, params={"k": DEFAULT_K})


CODE_LOADER = "mlflow.pyfunc.loaders.code_model"  # a pyfunc model from code: no pickled Python object in it


def _refuse_pickles(model_uri: str) -> None:
    """Only pyfunc models from code load: anything else (a pickled torch model from before this format, a
    cloudpickled PythonModel) is refused before a byte of it is unpickled."""
    info = mlflow.models.get_model_info(model_uri)
    loader = info.flavors.get("python_function", {}).get("loader_module")
    if loader != CODE_LOADER:
        raise RuntimeError(f"{model_uri} is stored as a pickled object (flavors {sorted(info.flavors)}, loader {loader}), "
                           "not as this project's safetensors pyfunc; it is not loaded, because unpickling runs "
                           "arbitrary code. Re-materialize its asset to register a pyfunc version")


def load_pyfunc(model_uri: str) -> tuple[str | None, Any]:
    """(method, pyfunc model) of a registered version: method is the tokenizer's method, "recommender", or None for
    a pyfunc that is not one of ours. A pickled version is refused unloaded (`load_tokenizer`)."""
    _refuse_pickles(model_uri)
    model = mlflow.pyfunc.load_model(model_uri)
    python_model = model.unwrap_python_model()
    if isinstance(python_model, RecommenderModel):
        return "recommender", model
    return getattr(python_model, "method", None), model


def load_tokenizer(model_uri: str) -> Any:
    """The tokenizer object (with its `encode`) of a registered pyfunc version. A version registered before the
    pyfunc format is a pickled torch model: it is refused with a clear message and never unpickled (a pickle runs
    whatever code it names)."""
    _refuse_pickles(model_uri)
    return mlflow.pyfunc.load_model(model_uri).unwrap_python_model().tokenizer
