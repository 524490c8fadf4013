"""Read user ad / interaction files (CSV, JSONL, Parquet) without losing a row.

Every reader returns a `ParsedFile`: the rows it could parse (columns as found, plus `_line`,
the 1-based line or row number in the file) and the lines it could not parse, each with a reason.
A file that cannot be read at all (missing, empty, unknown format, truncated Parquet, missing
required columns, a column with a reserved name, invalid UTF-8 in Parquet text, more rows or bytes
than `InputLimits` allow) raises `InputFileError` naming the file, the line and the fix.

Values are checked, not coerced: in JSON, a repeated key, a lone surrogate escape ("\ud800") or a
non-string value in one of `text_fields` rejects the line naming the field. A `.json` file whose
first non-space byte is `[` is one JSON array of objects (line = 1-based index in the array).
"""
from __future__ import annotations

import collections
import csv
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

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


RESERVED_FIX = "rename the column (`_line` and names starting with `__` are used internally)"
DEFAULT_MAX_ROWS = 20_000_000
DEFAULT_MAX_BYTES = 8 * 2**30


@dataclass(frozen=True)
class InputLimits:
    """Refuse a file before reading it when it would not fit: rows, and bytes (Parquet: uncompressed size)."""

    max_rows: int = DEFAULT_MAX_ROWS
    max_bytes: int = DEFAULT_MAX_BYTES


def is_reserved(column: str) -> bool:
    return column == "_line" or column.startswith("__")


def _check_columns(path: Path, columns, line: int | None) -> None:
    reserved = [c for c in columns if is_reserved(c)]
    if reserved:
        raise InputFileError(path, line, f"column {reserved[0]!r} has a reserved name", RESERVED_FIX)


def _check_limit(path: Path, found: int, unit: str, limit: int, field: str) -> None:
    if found > limit:
        raise InputFileError(path, None, f"{found:,} {unit} exceed the limit {field}={limit:,}",
                             f"raise {field} in the ingestion config if the machine has the memory for it")


INPUT_ROOTS_ENV = "UNISID_INPUT_ROOTS"


def input_roots(allowed: tuple[str, ...] = ()) -> list[Path]:
    """The folders input files may come from: `allowed`, else the working directory and $UNISID_INPUT_ROOTS."""
    if allowed:
        return [Path(r).expanduser().absolute() for r in allowed]
    env = [r for r in os.environ.get(INPUT_ROOTS_ENV, "").split(os.pathsep) if r]
    return [Path.cwd(), *(Path(r).expanduser().absolute() for r in env)]


def _symlink_in(path: Path, roots: list[Path]) -> Path | None:
    """The first symbolic link on `path` (absolute, as written) below the roots; links above a root are its own."""
    parts = path.parts
    for i in range(1, len(parts) + 1):
        prefix = Path(*parts[:i])
        if prefix.is_symlink() and not any(r.is_relative_to(prefix) for r in roots):
            return prefix
    return None


def confine(path: str | Path, allowed: tuple[str, ...] = (), follow_symlinks: bool = False,
            within_roots: bool = True) -> None:
    """Refuse an input file outside the allowed folders (its resolved path: `..` and links followed) or,
    unless follow_symlinks, reached through a symbolic link.

    within_roots=False (a file the user named on a command line, e.g. `unisid recommend`): no folder limit, only
    the symbolic-link check, where links at or above the working directory do not count."""
    roots = input_roots(allowed) if within_roots else [Path.cwd()]
    real = Path(path).resolve()
    real_roots = [r.resolve() for r in roots]
    fix_roots = (f"add its folder to allowed_roots in the ingestion config (or to ${INPUT_ROOTS_ENV}, "
                 f"{os.pathsep!r}-separated, when allowed_roots is empty)")
    if within_roots and not any(real.is_relative_to(r) for r in real_roots):
        raise InputFileError(path, None, f"the file (resolved: {real}) is outside the allowed input folders "
                             f"{[str(r) for r in real_roots]}", f"move it into one of them, or {fix_roots}")
    if not follow_symlinks:
        link = _symlink_in(Path(os.getcwd(), path), roots + real_roots)
        if link is not None:
            raise InputFileError(path, None, f"{link} is a symbolic link",
                                 "point the config at the real file, or set follow_symlinks=True (the target must "
                                 "still lie in the allowed input folders)")


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


def _shown(text: str) -> str:
    """`text` with any lone surrogate written as a \\udXXX escape."""
    return text.encode("utf-8", errors="backslashreplace").decode("utf-8")


def _printable(text: str) -> str:
    return text.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")


def read_rows(path: str | Path, required: tuple[str, ...], text_fields: tuple[str, ...] = (),
              limits: InputLimits = InputLimits()) -> ParsedFile:
    """Parse `path` by its suffix; check that the `required` columns exist.

    text_fields: columns that must hold text; in JSON a non-string value there rejects the line
    (Parquet columns of another type are rejected row by row in validation).
    """
    path = Path(path)
    if not path.exists():
        raise InputFileError(path, None, "file does not exist", "check the path in the run config")
    if path.is_dir():
        raise InputFileError(path, None, "is a directory, not a file", "point the config at a .csv, .jsonl or .parquet file")
    if not path.is_file():
        raise InputFileError(path, None, "is not a regular file (a device, FIFO or socket)",
                             "point the config at a .csv, .jsonl or .parquet file")
    if path.stat().st_size == 0:
        raise InputFileError(path, None, "file is empty (0 bytes)", "re-export the file; it must have a header (CSV) or rows")
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES | JSONL_SUFFIXES:
        _check_limit(path, path.stat().st_size, "bytes (file size)", limits.max_bytes, "max_input_bytes")
    if suffix in CSV_SUFFIXES:
        parsed = _read_csv(path, delimiter="\t" if suffix == ".tsv" else ",", max_rows=limits.max_rows)
    elif suffix == ".json" and _first_byte(path) == b"[":
        parsed = _read_json_array(path, text_fields)
    elif suffix in JSONL_SUFFIXES:
        parsed = _read_jsonl(path, text_fields, max_rows=limits.max_rows)
    elif suffix in PARQUET_SUFFIXES:
        parsed = _read_parquet(path, limits)
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


def _first_byte(path: Path) -> bytes:
    with open(path, "rb") as fh:
        while chunk := fh.read(65536):
            stripped = chunk.lstrip()
            if stripped:
                return stripped[:1]
    return b""


def _read_csv(path: Path, delimiter: str, max_rows: int = DEFAULT_MAX_ROWS) -> ParsedFile:
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
        _check_columns(path, header, 1)
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
            if len(rows) + len(rejected) >= max_rows:
                _check_limit(path, max_rows + 1, "rows or more", max_rows, "max_input_rows")
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


class _Object(dict):
    """A parsed JSON object; `repeated` is the first key that appears twice in it (None when none does)."""

    repeated: str | None = None


def _object_pairs(pairs: list[tuple[str, object]]) -> _Object:
    obj = _Object(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        obj.repeated = next(k for k, _ in pairs if k in seen or seen.add(k))
    return obj


def _json_kind(value) -> str:
    if isinstance(value, bool):
        return "a JSON boolean"
    if isinstance(value, (int, float)):
        return "a JSON number"
    return "a JSON array" if isinstance(value, list) else "a JSON object"


def _value_problem(value) -> str | None:
    """Why a parsed JSON value cannot be kept as written (a repeated key, a lone surrogate), or None."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if _has_surrogates(v):
                bad = next(c for c in v if 0xD800 <= ord(c) <= 0xDFFF)
                return (f"holds a lone surrogate escape (\\u{ord(bad):04x}), which is not valid Unicode; "
                        "fix the escape (a pair like \\ud83d\\ude00) or re-export the file as UTF-8")
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, dict):
            if getattr(v, "repeated", None) is not None:
                return (f"has a duplicate key {v.repeated!r} (only the last value would be kept); "
                        "give each key once per object")
            stack.extend(v.keys())
            stack.extend(v.values())
    return None


def _parse_object(path: Path, obj, where: int, source: str, raw: str, text_fields: tuple[str, ...],
                  prefix: str = "") -> tuple[dict | None, dict | None]:
    """(record, None) for a usable JSON object, else (None, reject); `prefix` names an array element."""
    if not isinstance(obj, dict):
        return None, _reject(source, where, "*", f"{prefix}expected a JSON object, got {type(obj).__name__}", raw)
    _check_columns(path, obj.keys(), where)
    if obj.repeated is not None:
        return None, _reject(source, where, obj.repeated, f"{prefix}duplicate key {obj.repeated!r} (only the last "
                             "value would be kept); give each key once per object", raw)
    for key, value in obj.items():
        problem = _value_problem(key) or _value_problem(value)
        if problem:
            return None, _reject(source, where, key if not _has_surrogates(key) else "*",
                                 f"{prefix}{_shown(key)} {problem}", raw)
        if key in text_fields and value is not None and not isinstance(value, str):
            return None, _reject(source, where, key, f"{prefix}{key} is {_json_kind(value)} "
                                 f"({json.dumps(value)[:40]}), expected a string; write it as text in quotes", raw)
    return {"_line": where, **{k: _to_text(v) for k, v in obj.items()}}, None


def _parsed_json(path: Path, rows: list[dict], rejected: list[dict]) -> ParsedFile:
    columns = list(dict.fromkeys(k for r in rows for k in r if k != "_line"))
    records = [{c: r.get(c) for c in ["_line", *columns]} for r in rows]
    rej = pl.DataFrame(rejected, schema=REJECTED_COLUMNS) if rejected else empty_rejected()
    return ParsedFile(rows=_frame(records, columns), rejected=rej, source=str(path))


def _read_jsonl(path: Path, text_fields: tuple[str, ...] = (), max_rows: int = DEFAULT_MAX_ROWS) -> ParsedFile:
    source = str(path)
    rows: list[dict] = []
    rejected: list[dict] = []
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            if len(rows) + len(rejected) >= max_rows:
                _check_limit(path, max_rows + 1, "rows or more", max_rows, "max_input_rows")
            try:
                text = raw.decode("utf-8").rstrip("\r\n")  # so an error column is on this line
            except UnicodeDecodeError as exc:
                rejected.append(_reject(source, line_no, "*", f"non-UTF-8 bytes at byte {exc.start}; re-save the file as UTF-8",
                                        raw.decode("utf-8", errors="replace").rstrip("\r\n")))
                continue
            try:
                obj = json.loads(text, object_pairs_hook=_object_pairs)
            except json.JSONDecodeError as exc:
                rejected.append(_reject(source, line_no, "*", f"invalid JSON ({exc.msg} at column {exc.colno}); "
                                        "each line must be one JSON object", text))
                continue
            except RecursionError:
                rejected.append(_reject(source, line_no, "*", "JSON nested too deeply to parse; "
                                        "each line must be one flat JSON object", text[:1000]))
                continue
            record, reject = _parse_object(path, obj, line_no, source, text, text_fields)
            if reject is not None:
                rejected.append(reject)
            else:
                rows.append(record)
    if not rows and not rejected:
        raise InputFileError(path, None, "no JSON lines found", "write one JSON object per line")
    return _parsed_json(path, rows, rejected)


def _read_json_array(path: Path, text_fields: tuple[str, ...] = ()) -> ParsedFile:
    """A .json file holding one JSON array of objects; each element's `line` is its 1-based index."""
    source = str(path)
    try:
        items = json.loads(path.read_bytes().decode("utf-8"), object_pairs_hook=_object_pairs)
    except UnicodeDecodeError as exc:
        raise InputFileError(path, None, f"non-UTF-8 bytes at byte {exc.start}", "re-save the file as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise InputFileError(path, exc.lineno, f"invalid JSON array ({exc.msg} at column {exc.colno})",
                             "fix the JSON, or write one JSON object per line (JSONL)") from None
    except RecursionError:
        raise InputFileError(path, None, "JSON nested too deeply to parse", "write flat JSON objects") from None
    if not isinstance(items, list):  # pragma: no cover - the first byte is "["
        raise InputFileError(path, None, "expected a JSON array", "write [ {...}, {...} ] or JSONL")
    rows: list[dict] = []
    rejected: list[dict] = []
    for i, obj in enumerate(items, start=1):
        raw = json.dumps(obj, ensure_ascii=False)
        if _has_surrogates(raw):
            raw = json.dumps(obj)  # escaped, so the lone surrogate shows as \udXXX
        record, reject = _parse_object(path, obj, i, source, raw, text_fields, prefix=f"array element {i}: ")
        if reject is not None:
            rejected.append(reject)
        else:
            rows.append(record)
    return _parsed_json(path, rows, rejected)


def _first_invalid_utf8(values: pl.Series) -> int | None:
    """1-based row of the first value of a Binary series that is not valid UTF-8, or None."""
    try:
        values.cast(pl.Utf8)
        return None
    except pl.exceptions.ComputeError:  # invalid UTF-8 somewhere: find where (rare, so a Python loop)
        pass
    for i, v in enumerate(values.to_list(), start=1):
        try:
            if v is not None:
                v.decode("utf-8")
        except UnicodeDecodeError:
            return i
    return None  # pragma: no cover - the cast failed for another reason


def _invalid_utf8_error(path: Path, column: str, row: int) -> InputFileError:
    return InputFileError(path, row, f"column {column!r} holds invalid UTF-8 at row {row}",
                          "re-export the column as UTF-8 text (or drop the column)")


def _find_invalid_utf8(path: Path, schema: pa.Schema) -> InputFileError | None:
    """After a failed read: the first string column with invalid UTF-8, read as bytes, and its row."""
    for f in schema:
        if pa.types.is_string(f.type) or pa.types.is_large_string(f.type):
            try:
                values = pl.from_arrow(pq.read_table(path, columns=[f.name]).column(0).cast(pa.large_binary()))
            except Exception:  # noqa: BLE001 - not even readable as bytes: no row to name
                continue
            row = _first_invalid_utf8(values)
            if row is not None:
                return _invalid_utf8_error(path, f.name, row)
    return None


def _cannot_read(path: Path, exc: Exception) -> InputFileError:
    return InputFileError(
        path, None, f"cannot read Parquet ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}); "
        "the file is truncated or not Parquet", "re-export the file (check the writer finished and the copy is complete)")


def _read_parquet(path: Path, limits: InputLimits = InputLimits()) -> ParsedFile:
    """Metadata first (limits, column names: nothing is read yet), then the rows; Binary columns must be UTF-8
    text (they are read as text); invalid UTF-8 fails the file naming the column and row."""
    try:
        meta = pq.ParquetFile(path).metadata
        schema = meta.schema.to_arrow_schema()
    except Exception as exc:  # pyarrow raises several types for broken files
        raise _cannot_read(path, exc) from exc
    _check_limit(path, meta.num_rows, "rows", limits.max_rows, "max_input_rows")
    size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    _check_limit(path, size, "bytes uncompressed", limits.max_bytes, "max_input_bytes")
    _check_columns(path, schema.names, None)
    dupes = sorted({n for n in schema.names if schema.names.count(n) > 1})
    if dupes:
        raise InputFileError(path, None, f"duplicate column name(s) {dupes}", "give every column a unique name")
    try:
        df = pl.read_parquet(path)
    except Exception as exc:  # polars raises several types for broken files
        raise (_find_invalid_utf8(path, schema) if "UTF-8" in str(exc) else None) or _cannot_read(path, exc) from exc
    for column in [c for c, t in df.schema.items() if t == pl.Binary]:
        row = _first_invalid_utf8(df[column])
        if row is not None:
            raise _invalid_utf8_error(path, column, row)
        df = df.with_columns(pl.col(column).cast(pl.Utf8))  # text written without the UTF8 annotation
    df = df.with_row_index("_line", offset=1).with_columns(pl.col("_line").cast(pl.Int64))
    return ParsedFile(rows=df, rejected=empty_rejected(), source=str(path))
