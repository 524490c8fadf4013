"""An input folder where new ad files land: which files are new since the last look.

Layout: ad files are named `ads*` (`ads_2026-11-25.csv`, `ads.parquet`, ...), interaction files
`interactions*`, in any format the readers take (.csv, .tsv, .jsonl, .json, .ndjson, .parquet,
.pq). Hidden files and files whose name ends in a temporary suffix (`.tmp`, `.part`) are
ignored, so a writer that copies in and renames is never read half-written.

The "cursor" is a JSON object {file name: mtime_ns} of the ad files already handled: a file is new
when its name is not there or its mtime changed (it was replaced).
"""
from __future__ import annotations

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

    ads_path: Path | None  # the newest new (or replaced) ad file; None when nothing is new
    interactions_path: Path | None  # the newest interactions file in the folder, None when there is none
    superseded: tuple[str, ...]  # other new ad files, older than ads_path (handled, not ingested)
    cursor: str  # the cursor after handling ads_path (and the superseded files)
    run_key: str = ""  # "<ad file name>@<mtime_ns>": one run per version of a file


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
    """Compare the folder with the cursor: the newest new ad file, the interactions file to pair it with.

    Several new ad files at once: only the newest is ingested (each run replaces `raw_ads`, so
    ingesting the older ones too would only race); the others are marked handled and listed in
    `superseded`. The cursor keeps only files still present, so it cannot grow without bound.
    """
    folder = Path(folder)
    seen = decode_cursor(cursor)
    ads = _files(folder, AD_PREFIX)
    interactions = _files(folder, INTERACTIONS_PREFIX)
    new = sorted((mtime, name) for name, mtime in ads.items() if seen.get(name) != mtime)
    newest_interactions = max(interactions, key=lambda n: (interactions[n], n)) if interactions else None
    inter_path = folder / newest_interactions if newest_interactions else None
    if not new:
        return Drop(None, inter_path, (), encode_cursor({n: m for n, m in seen.items() if n in ads}))
    mtime, newest = new[-1]
    return Drop(folder / newest, inter_path, tuple(name for _, name in new[:-1]), encode_cursor(ads),
                run_key=f"{newest}@{mtime}")
