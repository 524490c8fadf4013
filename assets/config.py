"""Run configuration editable in the Dagster launchpad; each mirrors a core frozen dataclass.

A test checks that every mirror has exactly the fields (and defaults) of its core dataclass.
"""

import dataclasses
import inspect
import math
import types
import typing
from typing import Any, Literal, TypeVar

import pydantic
from dagster import Config, ConfigMapping
from pydantic import Field

from unisid_pipeline.data.ingest import IngestionConfig
from unisid_pipeline.data.synthetic import SyntheticWorldConfig

T = TypeVar("T")

DEVICE_HELP = ("'auto' (default) = the device of the `compute` resource (itself 'auto' = CUDA when present); "
               "or this stage's own: cpu, cuda, cuda:N, mps")

_S = SyntheticWorldConfig()


class SyntheticWorld(Config):
    """Sizes and click dynamics of the embedded synthetic ad world."""

    n_ads: int = Field(_S.n_ads, description="number of ads")
    n_users: int = Field(_S.n_users, description="number of users (each gets one click sequence)")
    n_advertisers: int = Field(_S.n_advertisers, description="advertisers (one brand and vertical each)")
    n_verticals: int = Field(_S.n_verticals, description="taxonomy level 1 (12 curated)")
    categories_per_vertical: int = Field(_S.categories_per_vertical, description="taxonomy level 2 per vertical (4 curated)")
    subcategories_per_category: int = Field(_S.subcategories_per_category, description="taxonomy level 3 per category (4 curated)")
    image_dim: int = Field(_S.image_dim, description="image feature vector size; 0 = no image features")
    image_noise: float = Field(_S.image_noise, description="noise of image features around their category centre")
    min_seq_len: int = Field(_S.min_seq_len, description="shortest click sequence (>= 3)")
    max_seq_len: int = Field(_S.max_seq_len, description="longest click sequence")
    mean_extra_len: float = Field(_S.mean_extra_len, description="mean number of clicks beyond min_seq_len")
    p_same_leaf: float = Field(_S.p_same_leaf, description="P(next click in the same sub-category)")
    p_sibling_leaf: float = Field(_S.p_sibling_leaf, description="P(next click in a sibling sub-category)")
    p_interest: float = Field(_S.p_interest, description="P(next click in another of the user's interests)")
    n_interests: int = Field(_S.n_interests, description="latent interests per user")
    seed: int = Field(_S.seed, description="generator seed")


_I = IngestionConfig()


class Ingestion(Config):
    """Where ads and interactions come from, and how they are validated."""

    source: Literal["synthetic", "files", "amazon_beauty"] = Field(
        _I.source, description="synthetic (default), files (ads_path + interactions_path) or amazon_beauty (beauty_dir)")
    synthetic: SyntheticWorld = Field(default_factory=SyntheticWorld, description="synthetic world settings")
    # Any: a path or a list of paths (Dagster config has no str-or-list type); IngestionConfig checks the value.
    ads_path: Any = Field(_I.ads_path, description="source=files: ads file (.csv/.tsv/.jsonl/.json/.parquet), or a list "
                          "of files read as one union (see on_duplicate_ad)")
    interactions_path: Any = Field(_I.interactions_path, description="source=files: interactions file, or a list of "
                                   "files read as one union in the given order")
    on_duplicate_ad: Literal["reject", "last_wins"] = Field(
        _I.on_duplicate_ad, description="an ad_id repeated across ads files: reject the repeat (the first is kept) or "
        "last_wins (a later file's row replaces the earlier one)")
    category_sep: str = Field(_I.category_sep, description="source=files: separator between the levels of a string "
                              "category_path (a list column or JSON array needs none)")
    beauty_dir: str = Field(_I.beauty_dir, description="source=amazon_beauty: the dataset folder")
    max_text_chars: int = Field(_I.max_text_chars, description="longer titles/descriptions are rejected")
    timestamp_order: Literal["reject", "sort"] = Field(
        _I.timestamp_order, description="reject events that go back in time per user, or sort them")
    timestamp_unit: Literal["s", "ms"] = Field(
        _I.timestamp_unit, description="unit of the files' timestamps: s (a value >= 1e11 is rejected as milliseconds) "
        "or ms (divided by 1000; a positive value < 1e11 is rejected as seconds)")
    datetime_timestamps: Literal["reject", "epoch_seconds"] = Field(
        _I.datetime_timestamps, description="a Parquet Datetime/Date timestamp column: reject the file, or convert "
        "it to epoch_seconds (UTC)")
    max_input_rows: int = Field(_I.max_input_rows, description="a file with more rows is refused before it is read")
    max_input_bytes: int = Field(_I.max_input_bytes, description="a file larger than this (Parquet: uncompressed) is "
                                 "refused before it is read")
    allowed_roots: list[str] = Field(list(_I.allowed_roots), description="source=files / amazon_beauty: folders the "
                                     "input files must lie in; empty = the working directory and $UNISID_INPUT_ROOTS "
                                     "(os.pathsep-separated)")
    follow_symlinks: bool = Field(_I.follow_symlinks, description="source=files / amazon_beauty: read input files "
                                  "reached through a symbolic link (the target must still lie in allowed_roots)")


def to_core(cfg: Config, core_cls: type[T]) -> T:
    """Build the core dataclass from its Dagster mirror (nested dataclasses included)."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(core_cls):
        v = getattr(cfg, f.name)
        if isinstance(v, Config):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            v = to_core(v, type(default))
        elif isinstance(v, list):
            v = tuple(v)
        values[f.name] = v
    return core_cls(**values)


_MIRRORS: dict[type, type] = {}  # core dataclass -> its Dagster Config mirror
CORE_OF: dict[type, type] = {Ingestion: IngestionConfig, SyntheticWorld: SyntheticWorldConfig}  # mirror -> core


def _mirror_type(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return mirror(tp)
    if origin is tuple:
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return list[_mirror_type(args[0]) if args else Any]
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return typing.Optional[_mirror_type(args[0])]
    return tp


def field_docs(core_cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass: the string literal right under a field (PEP 257), one line each.
    They are the launchpad descriptions of the Dagster mirror, so the text lives once, beside the core field."""
    import ast
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(core_cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for field_node, nxt in zip(body, body[1:]):
        if (isinstance(field_node, ast.AnnAssign) and isinstance(field_node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
            docs[field_node.target.id] = " ".join(nxt.value.value.split())
    return docs


def mirror(core_cls: type, descriptions: dict[str, str] | None = None) -> type[Config]:
    """A Dagster `Config` class with exactly the fields and defaults of the frozen dataclass `core_cls`.

    Tuples become lists (Dagster config has no tuples); nested dataclasses become nested Configs.
    Each field's description is its attribute docstring in the core class (`field_docs`).
    """
    if core_cls in _MIRRORS:
        return _MIRRORS[core_cls]
    hints = typing.get_type_hints(core_cls)
    descriptions = {**field_docs(core_cls), **(descriptions or {})}
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(core_cls):
        tp = _mirror_type(hints[f.name])
        desc = descriptions.get(f.name, DEVICE_HELP if f.name == "device" else f"{core_cls.__name__}.{f.name} (see unisid_pipeline docs)")
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = f.default
        if dataclasses.is_dataclass(default):
            sub = mirror(type(default))
            fields[f.name] = (tp, Field(default_factory=lambda sub=sub, d=default: sub(**_plain(d)), description=desc))
        else:
            if isinstance(default, tuple):
                default = list(default)
            fields[f.name] = (tp, Field(default, description=desc))
    model = pydantic.create_model(core_cls.__name__ + "Config", __base__=Config, __doc__=core_cls.__doc__, **fields)
    _MIRRORS[core_cls] = model
    CORE_OF[model] = core_cls
    return model


def check_config(cfg: Config, where: str) -> None:
    """Validate a run config object now: build every mirrored core dataclass (its __post_init__ checks the
    fields) and resolve every `device`; raise ValueError naming the config path and the field."""
    from unisid_pipeline.seeding import resolve_device

    for name, info in type(cfg).model_fields.items():  # nested configs first: the error names the innermost one
        value = getattr(cfg, name)
        _check_finite_and_non_empty(value, info, f"{where}.{name}")
        if isinstance(value, Config):
            check_config(value, f"{where}.{name}")
        elif name == "device" and isinstance(value, str):
            try:
                resolve_device(value)
            except ValueError as exc:
                raise ValueError(f"invalid run config {where}.device: {exc}") from None
    if type(cfg) in CORE_OF:
        try:
            to_core(cfg, CORE_OF[type(cfg)])
        except ValueError as exc:
            raise ValueError(f"invalid run config {where}: {exc}") from None


def _check_finite_and_non_empty(value: Any, info: Any, where: str) -> None:
    """No NaN or infinity anywhere in a config (a NaN learning rate trains nothing and compares false with every
    bound), and no empty list where the default list is not empty (seeds: [] would train no model)."""
    values = value if isinstance(value, (list, tuple)) else [value]
    for v in values:
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"invalid run config {where}: {v} is not a finite number; give a finite value "
                             f"(default {info.get_default(call_default_factory=True)!r})")
    if isinstance(value, (list, tuple)) and not value:
        default = info.get_default(call_default_factory=True)
        if isinstance(default, (list, tuple)) and default:
            raise ValueError(f"invalid run config {where}: the list is empty; give at least one value "
                             f"(default {list(default)!r})")


def graph_config(cls: type[Config], op_name: str, also: dict[str, list[str]] | None = None) -> ConfigMapping:
    """The run config of a graph-backed asset: `cls`'s fields at ops.<asset>.config, handed to its op `op_name`;
    `also` hands some of them to other ops of the graph too ({op name: [field, ...]})."""

    def to_ops(values: dict[str, Any]) -> dict[str, Any]:
        return {op_name: {"config": values},
                **{other: {"config": {f: values[f] for f in fields if f in values}} for other, fields in (also or {}).items()}}

    to_ops.config_class = cls  # read by op_config_classes: the launch-time check validates it like an op's
    return ConfigMapping(config_fn=to_ops, config_schema=cls.to_config_schema())


def op_config_classes(assets_defs: list[Any]) -> dict[str, type[Config]]:
    """op name -> the Config class of its `config` argument, for the given asset definitions."""
    out = {}
    for a in assets_defs:
        mapping = getattr(a.node_def, "config_mapping", None)
        if mapping is not None:  # graph-backed asset (graph_config)
            out[a.node_def.name] = mapping.config_fn.config_class
            continue
        param = inspect.signature(a.op.compute_fn.decorated_fn).parameters.get("config")
        if param is not None and isinstance(param.annotation, type):
            out[a.op.name] = param.annotation
    return out


def check_run_config(run_config: dict[str, Any], op_configs: dict[str, type[Config]]) -> None:
    """Check the `ops` section of a run config at launch, before any step runs (see `check_config`).

    op_configs: op name -> its Config class. Values Dagster's own schema check rejects (types, unknown
    keys) never get here; this catches the impossible values: 0 levels, a codebook of 1, an unknown device.
    """
    for op, section in (run_config.get("ops") or {}).items():
        cls = op_configs.get(op)
        if cls is None or not isinstance(section, dict):
            continue
        try:
            cfg = cls(**(section.get("config") or {}))
        except pydantic.ValidationError as exc:
            raise ValueError(f"invalid run config ops.{op}.config: {exc}") from None
        check_config(cfg, f"ops.{op}.config")


def _plain(obj: Any) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out
