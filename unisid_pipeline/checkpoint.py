"""What every resumable training loop shares: atomic torch checkpoints and the global RNG state.

A checkpoint is written to `<name>.tmp<pid>` and renamed, so a run killed mid-write leaves the previous
checkpoint whole (`files.remove_dead_temps` cleans up the temp of a dead writer). The RNG state covers
torch (CPU and every CUDA device), numpy's and Python's global generators: restored, a resumed run draws
the same dropout masks and samples as an uninterrupted one.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unisid_pipeline.files import disk_full_error, is_no_space


def _weights_only(obj: Any) -> Any:
    """`obj` with numpy arrays as tensors and numpy scalars as Python numbers: what `torch.load(weights_only=True)`
    reads back without unpickling any Python object."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return type(obj)((k, _weights_only(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_weights_only(v) for v in obj)
    return obj


def atomic_save(obj: Any, path: Path, what: str = "a training checkpoint") -> None:
    """torch.save `obj` to `path` through a temp file and a rename; a full disk raises DiskFullError.
    numpy values are stored as tensors / numbers, so `load_training_checkpoint` reads it with weights_only=True."""
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        torch.save(_weights_only(obj), tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if is_no_space(exc):
            raise disk_full_error(path, what, exc) from exc
        raise


def load_training_checkpoint(path: Path, what: str = "training checkpoint") -> dict[str, Any]:
    """The dict `atomic_save` wrote, loaded with `weights_only=True`: tensors, numbers, strings and containers only,
    never an unpickled Python object. A file that needs more (an older checkpoint format, a planted pickle) raises
    ValueError telling to delete it; nothing in it runs."""
    import pickle

    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, TypeError, ValueError) as exc:
        raise ValueError(
            f"{path} cannot be read as a {what} without unpickling Python objects (an older checkpoint format, or not "
            f"a checkpoint of this pipeline: {str(exc).splitlines()[0][:200]}); it is not unpickled. delete it and "
            "re-run (training starts afresh)") from None
    if not isinstance(ck, dict):
        raise ValueError(f"{path} is not a {what} ({type(ck).__name__}): delete it and re-run")
    return ck


def rng_state() -> dict[str, Any]:
    """The global RNG states, as tensors and numbers only (a checkpoint holding them loads with weights_only)."""
    bit_generator, key, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": {"bit_generator": str(bit_generator), "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "python": random.getstate(),
    }


def set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    state = s["numpy"]
    if isinstance(state, dict):
        key = state["key"]
        key = key.numpy() if isinstance(key, torch.Tensor) else np.asarray(key)
        state = (state["bit_generator"], key.astype(np.uint32), state["pos"], state["has_gauss"], state["cached_gaussian"])
    np.random.set_state(state)
    version, internal, gauss = s["python"]
    random.setstate((version, tuple(internal), gauss))


TENSORS_FILE, STRUCTURE_FILE = "weights.safetensors", "checkpoint.json"


def _model_classes() -> dict[str, type]:
    """The model types a stored object may contain, by tag: rebuilt through their `from_checkpoint`, nothing else."""
    from unisid_pipeline.models.rq import RQKMeansTokenizer, RQVAETokenizer
    from unisid_pipeline.recommender.model import GenerativeRecommender
    from unisid_pipeline.unisid.model import UniSIDModel

    return {"unisid": UniSIDModel, "rq_kmeans": RQKMeansTokenizer, "rq_vae": RQVAETokenizer,
            "recommender": GenerativeRecommender}


def _dataclasses() -> dict[str, type]:
    """The dataclasses a stored object may contain, by tag (their fields are stored, then passed to the class)."""
    from unisid_pipeline.artifacts import TrainedTokenizer

    return {"TrainedTokenizer": TrainedTokenizer}


def _encode(obj: Any, tensors: dict[str, torch.Tensor], key: str) -> Any:
    """`obj` as JSON-able structure; its tensors and numpy arrays go into `tensors` (named after their place)."""
    import base64
    import dataclasses

    def put(t: torch.Tensor) -> str:
        name, i = key or "/", 1
        while name in tensors:
            name, i = f"{key}#{i}", i + 1
        tensors[name] = t
        return name

    if isinstance(obj, torch.Tensor):
        return {"__tensor__": put(obj.detach().cpu().contiguous().clone())}
    if isinstance(obj, np.ndarray):
        try:
            t = torch.from_numpy(np.array(obj, order="C", copy=True))  # a writable copy: read-only arrays (from polars) warn
        except TypeError:
            raise TypeError(f"cannot store a numpy array of dtype {obj.dtype} at {key!r} without pickle") from None
        return {"__ndarray__": put(t)}
    if isinstance(obj, np.generic) and not isinstance(obj, (np.str_, np.bytes_, np.void, np.object_)):
        return {"__npscalar__": obj.dtype.str, "value": obj.item()}
    if isinstance(obj, bytes):
        return {"__bytes__": base64.b64encode(obj).decode("ascii")}
    if isinstance(obj, dict):
        for k in obj:
            if not (isinstance(k, (str, int, float, bool)) or k is None):
                raise TypeError(f"cannot store a dict key of type {type(k).__name__} at {key!r} without pickle")
        return {"__dict__": [[k, _encode(v, tensors, f"{key}/{k}")] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{key}/{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{key}/{i}") for i, v in enumerate(obj)]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if type(obj).__module__.startswith("polars") and type(obj).__name__ == "DataFrame":
        import io

        buf = io.BytesIO()
        obj.write_ipc(buf)
        return {"__polars__": put(torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8))}
    if isinstance(obj, torch.nn.Module):
        tag = next((t for t, cls in _model_classes().items() if type(obj) is cls), None)
        if tag is None:
            raise TypeError(f"cannot store a {type(obj).__name__} model at {key!r} without pickle (known models: "
                            f"{sorted(c.__name__ for c in _model_classes().values())})")
        return {"__model__": tag, "training": obj.training, "checkpoint": _encode(obj.to_checkpoint(), tensors, f"{key}/{tag}")}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        tag = next((t for t, cls in _dataclasses().items() if type(obj) is cls), None)
        if tag is not None:
            return {"__dataclass__": tag, "fields": _encode(
                {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}, tensors, f"{key}/{tag}")}
    raise TypeError(f"cannot store {type(obj).__name__} at {key!r} without pickle: store tensors, numpy arrays, "
                    "polars DataFrames, known models and plain data (dict, list, tuple, str, numbers, bytes, None)")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The value `_encode` described; only the tags below are understood, anything else is an error."""
    import base64

    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return tensors[obj["__ndarray__"]].numpy()
    if "__npscalar__" in obj:
        return np.dtype(obj["__npscalar__"]).type(obj["value"])
    if "__bytes__" in obj:
        return base64.b64decode(obj["__bytes__"])
    if "__dict__" in obj:
        return {k: _decode(v, tensors) for k, v in obj["__dict__"]}
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__polars__" in obj:
        import io

        import polars as pl

        return pl.read_ipc(io.BytesIO(tensors[obj["__polars__"]].numpy().tobytes()))
    if "__model__" in obj:
        cls = _model_classes().get(obj["__model__"])
        if cls is None:
            raise ValueError(f"unknown model type {obj['__model__']!r} in a stored object")
        model = cls.from_checkpoint(_decode(obj["checkpoint"], tensors))
        return model.train(bool(obj.get("training", False)))
    if "__dataclass__" in obj:
        cls = _dataclasses().get(obj["__dataclass__"])
        if cls is None:
            raise ValueError(f"unknown type {obj['__dataclass__']!r} in a stored object")
        return cls(**_decode(obj["fields"], tensors))
    raise ValueError(f"unknown entry {sorted(obj)[:3]} in a stored object")


def save_checkpoint_dir(checkpoint: dict[str, Any], directory: Path) -> None:
    """Write a model's `to_checkpoint()` dict without pickle: its tensors (and numpy arrays) into one
    safetensors file, everything else (configs, ids, bytes as base64) into JSON that points at them.
    `load_checkpoint_dir` gives the same dict back; nothing in either file can run code when loaded."""
    import json

    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(checkpoint, tensors, "")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / TENSORS_FILE))
    (directory / STRUCTURE_FILE).write_text(json.dumps(structure))


def load_checkpoint_dir(directory: Path) -> dict[str, Any]:
    """The dict `save_checkpoint_dir` wrote (tensors on the CPU)."""
    import json

    from safetensors.torch import load_file

    directory = Path(directory)
    tensors = load_file(str(directory / TENSORS_FILE))
    return _decode(json.loads((directory / STRUCTURE_FILE).read_text()), tensors)


# ------------------------------------------------------------------------------------- stored objects
OBJECT_FORMAT = "unisid_pipeline.object/1"  # the type tag of a stored object file (safetensors metadata "format")


class UnsafeObjectError(ValueError):
    """A stored object file that is not in the no-pickle format (a legacy pickle, a planted file): never loaded."""


def object_type(obj: Any) -> str:
    """The type tag stored with an object (checked again on load)."""
    return type(obj).__name__


def dumps_object(obj: Any) -> bytes:
    """`obj` (models, TrainedTokenizer, dicts/lists of plain data, tensors, numpy arrays, polars DataFrames) as one
    safetensors file: the tensors, and in its metadata the JSON structure that points at them plus the format and
    type tags. Loading it (`loads_object`) cannot run code: no pickle anywhere."""
    import json

    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(obj, tensors, "")
    return save(tensors, metadata={"format": OBJECT_FORMAT, "type": object_type(obj), "structure": json.dumps(structure)})


def _header(data: bytes) -> dict[str, Any] | None:
    """The JSON header of a safetensors file, or None when `data` is not one."""
    import json

    if len(data) < 8:
        return None
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or 8 + n > len(data) or data[8:9] != b"{":
        return None
    try:
        header = json.loads(data[8:8 + n])
    except ValueError:
        return None
    return header if isinstance(header, dict) else None


def loads_object(data: bytes, where: str = "a stored object") -> Any:
    """The object `dumps_object` wrote. Anything else (a pickle above all) raises UnsafeObjectError, unread."""
    import json

    from safetensors.torch import load

    header = _header(data)
    meta = (header or {}).get("__metadata__") or {}
    if meta.get("format") != OBJECT_FORMAT:
        kind = "a pickle" if data[:1] == b"\x80" else "not a stored object of this version"
        raise UnsafeObjectError(
            f"{where} is {kind} (format {meta.get('format')!r}, expected {OBJECT_FORMAT!r}); it is never unpickled, "
            "since unpickling a file can run any code. Delete it and re-materialize that asset "
            "(dagster asset materialize --select <asset>); objects are now stored without pickle.")
    value = _decode(json.loads(meta["structure"]), load(data))
    if object_type(value) != meta.get("type"):
        raise UnsafeObjectError(f"{where} holds a {object_type(value)}, but its type tag says {meta.get('type')!r}; "
                                "delete it and re-materialize that asset")
    return value
