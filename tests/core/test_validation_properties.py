"""Property tests of ingestion: random mixes of good and bad rows, written to a real file and read back.

Every bad row is rejected with its line, the field at fault and a reason; every good row survives
unchanged; nothing crashes; accepted + rejected == rows in.
"""
import csv
import io
import json
import re
import tempfile
from pathlib import Path

import numpy as np
import polars as pl
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from unisid_pipeline.data.readers import read_rows
from unisid_pipeline.data.schema import AD_REQUIRED
from unisid_pipeline.data.validation import validate_ads, validate_interactions

MAX_TEXT = 40
DIM = 3
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Titles: letters, digits, punctuation, spaces and the characters that stress CSV/JSON quoting.
_chars = st.characters(categories=["L", "N", "P", "Zs"], exclude_characters="\x00") | st.sampled_from(
    ["\n", "\r", "\t", '"', ",", "'", "\\"])
TEXT = st.text(_chars, min_size=1, max_size=20).filter(lambda t: re.search(r"\w", t) is not None)
FLOAT32 = st.floats(allow_nan=False, allow_infinity=False, width=32)

# kind -> (field at fault, substring of the reason)
AD_KINDS = {
    "no_id": ("ad_id", "ad_id is missing"),
    "text_id": ("ad_id", "is not an integer"),
    "no_title": ("title", "title is missing"),
    "blank_title": ("title", "title is empty"),
    "long_title": ("title", f"(limit {MAX_TEXT})"),
    "bad_price": ("price", "price "),
    "bad_vector": ("image_features", "image_features is not a JSON list of finite numbers"),
    "wrong_length": ("image_features", f"expected {DIM}"),
    "duplicate": ("ad_id", "duplicate ad_id"),
    "non_utf8": (None, "non-UTF-8 bytes"),  # CSV: the field; JSONL: the whole line ("*")
    "malformed": ("*", ""),
}
BAD_UTF8 = b"caf\xe9"
PLACEHOLDER = "PLACEHOLDER_FOR_BAD_BYTES"


@st.composite
def ad_rows(draw):
    """A list of (kind, values) with values as a user file would hold them; ids unique unless duplicated."""
    kinds = draw(st.lists(st.sampled_from(["good"] * 4 + list(AD_KINDS)), min_size=1, max_size=25))
    ids = draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=len(kinds), max_size=len(kinds), unique=True))
    rows, good_ids = [], []
    for kind, ad_id in zip(kinds, ids):
        v = {"ad_id": ad_id, "title": draw(TEXT), "description": draw(st.none() | TEXT),
             "price": draw(st.none() | st.floats(min_value=0, allow_nan=False, allow_infinity=False)),
             "image_features": draw(st.lists(FLOAT32, min_size=DIM, max_size=DIM))}
        if kind == "duplicate":
            if not good_ids:
                kind = "no_id"
            else:
                v["ad_id"] = draw(st.sampled_from(good_ids))
        if kind == "no_id":
            v["ad_id"] = None
        elif kind == "text_id":
            v["ad_id"] = draw(st.sampled_from(["abc", "1.5", "12x", "99999999999999999999", "0x10", "1e3"])
                              | st.from_regex(r"\A[a-z][a-z0-9]{0,6}\Z"))
        elif kind == "no_title":
            v["title"] = None
        elif kind == "blank_title":
            v["title"] = draw(st.sampled_from([" ", " \t ", "\u3000", "  \n "]))
        elif kind == "long_title":
            v["title"] = "x" * draw(st.integers(MAX_TEXT + 1, MAX_TEXT + 30))
        elif kind == "bad_price":
            v["price"] = draw(st.sampled_from(["cheap", "-1", "nan", "inf", "-inf", "1,5", "-0.5", "1e999"]))
        elif kind == "bad_vector":
            v["image_features"] = draw(st.sampled_from(["oops", "[1, 2", '["a", 1, 2]', "[NaN, 1, 2]", "{}",
                                                        "[1, true, 2]", "[Infinity, 0, 0]"]))
        elif kind == "wrong_length":
            v["image_features"] = draw(st.lists(FLOAT32, min_size=1, max_size=6).filter(lambda x: len(x) != DIM))
        elif kind == "non_utf8":
            v["title"] = PLACEHOLDER
        elif kind == "malformed":
            v["variant"] = draw(st.integers(0, 2))
        if kind == "good":
            good_ids.append(v["ad_id"])
        rows.append((kind, v))
    # The expected vector length is the most common one: keep the good length the clear majority.
    lengths = [len(v["image_features"]) for k, v in rows
               if isinstance(v["image_features"], list) and k not in ("malformed", "non_utf8")]  # those fail parsing
    assume(lengths.count(DIM) > max((lengths.count(n) for n in set(lengths) - {DIM}), default=0))
    return rows


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, list):
        return json.dumps(value)
    return value if isinstance(value, str) else repr(value)


def write_csv(rows) -> tuple[bytes, list[int]]:
    out, lines, line = [], [], 2
    out.append(b"ad_id,title,description,price,image_features\n")
    for kind, v in rows:
        buf = io.StringIO()
        values = ["" if _text(v[c]) is None else _text(v[c]) for c in ("ad_id", "title", "description", "price",
                                                                          "image_features")]
        csv.writer(buf).writerow(values)  # "\r\n" terminator: fields with \r or \n get quoted
        text = buf.getvalue()
        if kind == "malformed":  # an extra field, a quote that never closes, text after a closing quote
            text = ['1,a,b,c,d,extra field\n', '2,"never closed,b,c,d\n', '3,"closed"junk,b,c,d\n'][v["variant"]]
        out.append(text.encode().replace(PLACEHOLDER.encode(), BAD_UTF8))
        lines.append(line)
        line += len(re.findall(r"\r\n|\r|\n", text))
    return b"".join(out), lines


def write_jsonl(rows) -> tuple[bytes, list[int]]:
    out = []
    for kind, v in rows:
        if kind == "malformed":  # broken JSON, not an object, nested too deeply to parse
            out.append([b'{"ad_id": 1, "title": broken\n', b'[1, 2]\n', b"[" * 50_000 + b"\n"][v["variant"]])
            continue
        out.append(json.dumps(v).encode().replace(PLACEHOLDER.encode(), BAD_UTF8) + b"\n")
    return b"".join(out), list(range(1, len(rows) + 1))


@SETTINGS
@given(rows=ad_rows(), fmt=st.sampled_from(["csv", "jsonl"]))
def test_ads_good_rows_survive_bad_rows_rejected_counts_add_up(rows, fmt):
    data, lines = (write_csv if fmt == "csv" else write_jsonl)(rows)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"ads.{fmt}"
        path.write_bytes(data)
        parsed = read_rows(path, AD_REQUIRED)
        res = validate_ads(parsed.rows, parsed.source, max_text_chars=MAX_TEXT)
    rejected = pl.concat([parsed.rejected, res.rejected])
    assert res.clean.height + rejected.height == len(rows)
    assert rejected["line"].is_unique().all()

    got = {r["line"]: r for r in rejected.to_dicts()}
    expected_bad = {line: kind for line, (kind, _) in zip(lines, rows) if kind != "good"}
    assert set(got) == set(expected_bad)
    for line, kind in expected_bad.items():
        field, needle = AD_KINDS[kind]
        if kind == "non_utf8":
            field = "title" if fmt == "csv" else "*"
        assert got[line]["field"] == field, (kind, got[line])
        assert needle in got[line]["reason"], (kind, got[line])
        assert got[line]["source"] == str(path)

    good = [v for kind, v in rows if kind == "good"]
    assert res.clean["ad_id"].to_list() == [v["ad_id"] for v in good]
    assert res.clean["title"].to_list() == [v["title"] for v in good]
    assert res.clean["description"].to_list() == [v["description"] for v in good]
    assert res.clean["price"].to_list() == [v["price"] for v in good]
    want = np.array([v["image_features"] for v in good], dtype=np.float32).reshape(len(good), DIM)
    got_vec = np.array(res.clean["image_features"].to_list(), dtype=np.float32).reshape(len(good), DIM)
    assert np.array_equal(got_vec, want)


EVENT_KINDS = {
    "unknown_ad": ("ad_id", "is not in raw_ads"),
    "text_user": ("user_id", "is not an integer"),
    "no_timestamp": ("timestamp", "timestamp is missing"),
    "negative_ts": ("timestamp", "is negative"),
    "duplicate": ("*", "duplicate event"),
    "back_in_time": ("timestamp", "is earlier than a previous event"),
}
KNOWN = [10, 11, 12, 13]


@st.composite
def event_rows(draw):
    kinds = draw(st.lists(st.sampled_from(["good"] * 4 + list(EVENT_KINDS)), min_size=1, max_size=30))
    rows, goods, last_ts, used = [], [], {}, {}
    for kind in kinds:
        user = draw(st.integers(0, 3))
        if kind == "back_in_time":
            free = sorted(set(range(last_ts.get(user, 0))) - used.get(user, set()))
            if not free:
                kind = "unknown_ad"
            else:
                ts = draw(st.sampled_from(free))
                used[user].add(ts)  # a second identical row would be a duplicate, not a time error
                rows.append((kind, (str(user), str(draw(st.sampled_from(KNOWN))), str(ts))))
                continue
        if kind == "duplicate":
            if not goods:
                kind = "negative_ts"
            else:
                rows.append((kind, draw(st.sampled_from(goods))))
                continue
        ts = last_ts.get(user, 0) + draw(st.integers(1, 5))
        ad = draw(st.sampled_from(KNOWN))
        row = [str(user), str(ad), str(ts)]
        if kind == "unknown_ad":
            row[1] = str(draw(st.integers(-5, 9) | st.integers(14, 2**40)))
        elif kind == "text_user":
            row[0] = draw(st.sampled_from(["u1", "", "1.5", "one"])) or None
            if row[0] is None:
                kind = "no_user"
        elif kind == "no_timestamp":
            row[2] = None
        elif kind == "negative_ts":
            row[2] = str(-draw(st.integers(1, 10**9)))
        else:  # good
            last_ts[user] = ts
            used.setdefault(user, set()).add(ts)
            goods.append(tuple(row))
        rows.append((kind, tuple(row)))
    return rows


@SETTINGS
@given(rows=event_rows(), order=st.sampled_from(["reject", "sort"]))
def test_interactions_good_rows_survive_bad_rows_rejected_counts_add_up(rows, order):
    frame = pl.DataFrame([r for _, r in rows], schema={"user_id": pl.Utf8, "ad_id": pl.Utf8, "timestamp": pl.Utf8},
                         orient="row")
    res = validate_interactions(frame, "mem", pl.Series(KNOWN), timestamp_order=order)
    assert res.clean.height + res.rejected.height == len(rows)
    got = {r["line"]: r for r in res.rejected.to_dicts()}
    kinds = {"no_user": ("user_id", "user_id is missing"), **EVENT_KINDS}
    expected_bad = {i + 1: kind for i, (kind, _) in enumerate(rows) if kind != "good"
                    and not (kind == "back_in_time" and order == "sort")}
    assert set(got) == set(expected_bad)
    for line, kind in expected_bad.items():
        field, needle = kinds[kind]
        assert got[line]["field"] == field and needle in got[line]["reason"], (kind, got[line])
    kept = [(i + 1, tuple(int(x) for x in r)) for i, (kind, r) in enumerate(rows)
            if kind == "good" or (kind == "back_in_time" and order == "sort")]
    kept.sort(key=lambda t: (t[1][0], t[1][2], t[0]))
    assert res.clean.rows() == [r for _, r in kept]
