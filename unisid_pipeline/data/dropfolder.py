"""An input folder where new ad files land: which files are new since the last look.

Layout: ad files are named `ads*` (`ads_2026-11-25.csv`, `ads.parquet`, ...), interaction files
`interactions*`, in any format the readers take (.csv, .tsv, .jsonl, .json, .ndjson, .parquet,
.pq). Hidden files and files whose name ends in a temporary suffix (`.tmp`, `.part`) are
ignored, so a writer that copies in and renames is never read half-written.

The "cursor" is a JSON object {file name: mtime_ns} of the ad files already handled: a file is new
when its name is not there or its mtime changed (it was replaced). When any ad file is new, every
ad and interactions file of the folder is ingested (oldest first, later ad rows replacing earlier ones).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from unisid_pipeline.data.readers import CSV_SUFFIXES, JSONL_SUFFIXES, PARQUET_SUFFIXES

AD_PREFIX = "ads"
INTERACTIONS_PREFIX = "interactions"
SUFFIXES = CSV_SUFFIXES | JSONL_SUFFIXES | PARQUET_SUFFIXES


def _files(folder: Path, prefix: str) -> dict[str, int]:
    """name -> mtime_ns of the readable files of `folder` whose name starts with `prefix`."""
    if not folder.is_dir():
        return {}
    out = {}
    for entry in os.scandir(folder):
        name = entry.name
        if (entry.is_file() and not name.startswith(".") and name.lower().startswith(prefix)
                and Path(name).suffix.lower() in SUFFIXES):
            out[name] = entry.stat().st_mtime_ns
    return out


@dataclass(frozen=True)
class Drop:
    """What a look at the folder found."""

    ads_paths: tuple[Path, ...]  # every ad file in the folder, oldest first (mtime); empty when nothing is new
    interactions_paths: tuple[Path, ...]  # every interactions file in the folder, oldest first
    new: tuple[str, ...]  # the new (or replaced) ad files among ads_paths
    cursor: str  # the cursor after handling this state of the folder
    run_key: str = ""  # "ads@<hash of the ad files and their mtimes>": one run per state of the folder


def _oldest_first(folder: Path, files: dict[str, int]) -> tuple[Path, ...]:
    return tuple(folder / name for _, name in sorted((mtime, name) for name, mtime in files.items()))


def decode_cursor(cursor: str | None) -> dict[str, int]:
    if not cursor:
        return {}
    data = json.loads(cursor)
    if not isinstance(data, dict):
        raise ValueError(f"drop-folder cursor must be a JSON object of file name -> mtime_ns, got {cursor[:80]!r}")
    return {str(k): int(v) for k, v in data.items()}


def encode_cursor(seen: dict[str, int]) -> str:
    return json.dumps(dict(sorted(seen.items())), separators=(",", ":"))


def look(folder: str | os.PathLike, cursor: str | None) -> Drop:
    """Compare the folder with the cursor: when an ad file is new or replaced, ALL ad files and ALL
    interactions files of the folder, oldest first.

    The ad files are read as one union in that order, a later file's row replacing an earlier row of the
    same ad_id (the runs use on_duplicate_ad="last_wins"), so older delta files are never lost. The
    cursor keeps only files still present, so it cannot grow without bound.
    """
    folder = Path(folder)
    seen = decode_cursor(cursor)
    ads = _files(folder, AD_PREFIX)
    interactions = _oldest_first(folder, _files(folder, INTERACTIONS_PREFIX))
    new = tuple(name for _, name in sorted((mtime, name) for name, mtime in ads.items() if seen.get(name) != mtime))
    if not new:
        return Drop((), interactions, (), encode_cursor({n: m for n, m in seen.items() if n in ads}))
    state = encode_cursor(ads)
    return Drop(_oldest_first(folder, ads), interactions, new, state,
                run_key=f"ads@{hashlib.sha256(state.encode()).hexdigest()[:16]}")
