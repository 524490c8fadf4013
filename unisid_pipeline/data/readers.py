"""Read user ad / interaction files (CSV, JSONL, Parquet) without losing a row.

Every reader returns a `ParsedFile`: the rows it could parse (columns as found, plus `_line`,
the 1-based line or row number in the file) and the lines it could not parse, each with a reason.
A file that cannot be read at all (missing, empty, unknown format, truncated Parquet, missing
required columns) raises `InputFileError` naming the file, the line and the fix.
"""
from __future__ import annotations

import collections
import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from unisid_pipeline.data.schema import REJECTED_COLUMNS, empty_rejected

CSV_SUFFIXES = {".csv", ".tsv"}
JSONL_SUFFIXES = {".jsonl", ".ndjson", ".json"}
PARQUET_SUFFIXES = {".parquet", ".pq"}
SUPPORTED = sorted(CSV_SUFFIXES | JSONL_SUFFIXES | PARQUET_SUFFIXES)

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


class InputFileError(ValueError):
    """A whole input file cannot be used; the message names the file, the line and the fix."""

    def __init__(self, path: Path | str, line: int | None, problem: str, fix: str):
        self.path, self.line, self.problem, self.fix = str(path), line, problem, fix
        where = f"{path}" + (f", line {line}" if line is not None else "")
        super().__init__(f"{where}: {problem}. Fix: {fix}")


@dataclass(frozen=True)
class ParsedFile:
    rows: pl.DataFrame  # parsed rows, `_line` Int64 + the file's columns
    rejected: pl.DataFrame  # lines that could not be parsed (REJECTED_COLUMNS)
    source: str


def _reject(source: str, line: int, field: str, reason: str, raw: str) -> dict:
    return {"source": source, "line": line, "field": field, "reason": reason, "raw": raw}


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def _printable(text: str) -> str:
    return text.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")


def read_rows(path: str | Path, required: tuple[str, ...]) -> ParsedFile:
    """Parse `path` by its suffix; check that the `required` columns exist."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(path, None, "file does not exist", "check the path in the run config")
    if path.is_dir():
        raise InputFileError(path, None, "is a directory, not a file", "point the config at a .csv, .jsonl or .parquet file")
    if path.stat().st_size == 0:
        raise InputFileError(path, None, "file is empty (0 bytes)", "re-export the file; it must have a header (CSV) or rows")
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        parsed = _read_csv(path, delimiter="\t" if suffix == ".tsv" else ",")
    elif suffix in JSONL_SUFFIXES:
        parsed = _read_jsonl(path)
    elif suffix in PARQUET_SUFFIXES:
        parsed = _read_parquet(path)
    else:
        raise InputFileError(path, None, f"unsupported file type {suffix!r}", f"use one of {', '.join(SUPPORTED)}")
    missing = [c for c in required if c not in parsed.rows.columns]
    if missing and (parsed.rows.height > 0 or suffix in CSV_SUFFIXES | PARQUET_SUFFIXES):
        raise InputFileError(
            path, 1 if suffix in CSV_SUFFIXES else None,
            f"required column(s) {missing} missing (found {[c for c in parsed.rows.columns if c != '_line']})",
            f"add the column(s) {missing}; see the schema in unisid_pipeline/data/schema.py",
        )
    return parsed


def _frame(records: list[dict], columns: list[str]) -> pl.DataFrame:
    schema = {"_line": pl.Int64, **{c: pl.Utf8 for c in columns}}
    return pl.DataFrame(records, schema=schema, orient="row") if records else pl.DataFrame(schema=schema)


class _LineFeed:
    """Feeds csv.reader one physical line at a time, remembering the lines of the record being parsed.

    Lines can be pushed back (`requeue`), so after a broken record the lines it swallowed are parsed again.
    """

    def __init__(self, lines):
        self._lines = iter(lines)
        self._pending: collections.deque[str] = collections.deque()
        self.record: list[str] = []

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = self._pending.popleft() if self._pending else next(self._lines)
        self.record.append(line)
        return line

    def requeue(self, lines: list[str]) -> None:
        self._pending.extendleft(reversed(lines))


def _read_csv(path: Path, delimiter: str) -> ParsedFile:
    """Strict quoting: a record whose quotes are broken is rejected with its line; parsing goes on after it.

    A quote that opens and does not close on its line would otherwise swallow the following lines
    (Python's lenient csv mode reads the rest of the file into one field): that line is rejected and
    the lines after it are parsed again, so no line is lost.
    """
    source = str(path)
    rows: list[dict] = []
    rejected: list[dict] = []
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as fh:
        feed = _LineFeed(fh)
        reader = csv.reader(feed, delimiter=delimiter, strict=True)
        try:
            header = next(reader)
        except StopIteration:  # pragma: no cover - size > 0 but nothing parsed
            raise InputFileError(path, 1, "no header row", "the first line must name the columns") from None
        except csv.Error as exc:
            raise InputFileError(path, 1, f"cannot parse the header ({exc})", "save the file as plain CSV") from exc
        header = [h.strip().lstrip("\ufeff") for h in header]
        if any(_has_surrogates(h) for h in header):
            raise InputFileError(path, 1, "the header has non-UTF-8 bytes", "save the file as UTF-8")
        dupes = sorted({h for h in header if header.count(h) > 1})
        if dupes:
            raise InputFileError(path, 1, f"duplicate column name(s) {dupes}", "give every column a unique name")
        next_line = 1 + len(feed.record)
        while True:
            feed.record = []
            line = next_line
            try:
                values = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                consumed = feed.record
                raw_text = _printable(consumed[0].rstrip("\r\n")) if consumed else ""
                if len(consumed) > 1 or "end of data" in str(exc):
                    # A quote opened on `line` and did not close there: the record ran into the next lines.
                    # Reject that one line and parse the lines it swallowed again.
                    rejected.append(_reject(source, line, "*", "unterminated quoted field (a quote opens on this line "
                                            "and does not close on it); close the quote or double it (\"\")", raw_text))
                    feed.requeue(consumed[1:])
                else:
                    rejected.append(_reject(source, line, "*", f"CSV quoting error ({exc}); a field with a quote "
                                            "must be wholly quoted and inner quotes doubled (\"\")", raw_text))
                next_line = line + 1
                continue
            next_line = line + len(feed.record)
            if not values:
                continue  # blank line
            raw_text = _printable(delimiter.join(values))
            if len(values) != len(header):
                rejected.append(_reject(source, line, "*", f"expected {len(header)} fields, got {len(values)}; "
                                        "quote fields that contain the delimiter", raw_text))
                continue
            bad = [h for h, v in zip(header, values) if _has_surrogates(v)]
            if bad:
                rejected.append(_reject(source, line, bad[0], f"non-UTF-8 bytes in field(s) {bad}; "
                                        "re-save the file as UTF-8", raw_text))
                continue
            record = {"_line": line}
            record.update({h: (v if v != "" else None) for h, v in zip(header, values)})
            rows.append(record)
    rej = pl.DataFrame(rejected, schema=REJECTED_COLUMNS) if rejected else empty_rejected()
    return ParsedFile(rows=_frame(rows, header), rejected=rej, source=source)


def _to_text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _read_jsonl(path: Path) -> ParsedFile:
    source = str(path)
    rows: list[dict] = []
    rejected: list[dict] = []
    columns: list[str] = []
    seen: set[str] = set()
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8").rstrip("\r\n")  # so an error column is on this line
            except UnicodeDecodeError as exc:
                rejected.append(_reject(source, line_no, "*", f"non-UTF-8 bytes at byte {exc.start}; re-save the file as UTF-8",
                                        raw.decode("utf-8", errors="replace").rstrip("\r\n")))
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                rejected.append(_reject(source, line_no, "*", f"invalid JSON ({exc.msg} at column {exc.colno}); "
                                        "each line must be one JSON object", text.rstrip("\r\n")))
                continue
            except RecursionError:
                rejected.append(_reject(source, line_no, "*", "JSON nested too deeply to parse; "
                                        "each line must be one flat JSON object", text.rstrip("\r\n")[:1000]))
                continue
            if not isinstance(obj, dict):
                rejected.append(_reject(source, line_no, "*", f"expected a JSON object, got {type(obj).__name__}",
                                        text.rstrip("\r\n")))
                continue
            record = {"_line": line_no}
            for k, v in obj.items():
                if k not in seen:
                    seen.add(k)
                    columns.append(k)
                record[k] = _to_text(v)
            rows.append(record)
    if not rows and not rejected:
        raise InputFileError(path, None, "no JSON lines found", "write one JSON object per line")
    records = [{c: r.get(c) for c in ["_line", *columns]} for r in rows]
    rej = pl.DataFrame(rejected, schema=REJECTED_COLUMNS) if rejected else empty_rejected()
    return ParsedFile(rows=_frame(records, columns), rejected=rej, source=source)


def _read_parquet(path: Path) -> ParsedFile:
    try:
        df = pl.read_parquet(path)
    except Exception as exc:  # polars raises several types for broken files
        raise InputFileError(
            path, None, f"cannot read Parquet ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); the file is "
            "truncated or not Parquet", "re-export the file (check the writer finished and the copy is complete)",
        ) from exc
    df = df.with_row_index("_line", offset=1).with_columns(pl.col("_line").cast(pl.Int64))
    return ParsedFile(rows=df, rejected=empty_rejected(), source=str(path))
