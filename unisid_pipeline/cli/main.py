"""`unisid`: the registered models from the command line.

    unisid encode --ads new_ads.csv --out sids.parquet [--model models:/unisid_tokenizer@champion]

`encode` reads an ads file (.csv/.tsv/.jsonl/.parquet with the raw_ads columns) through the same readers and
validation as ingestion, so a bad file or row gets the same message (file, line, field, fix); rejected rows go
to a Parquet file beside the output with their reason, and the clean ones get their SID and embedding from a
registered UniSID tokenizer in one forward pass: no retraining. The output is written atomically.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

from unisid_pipeline import paths
from unisid_pipeline.data.readers import InputFileError, read_rows
from unisid_pipeline.data.schema import AD_REQUIRED, CATEGORY_SEP
from unisid_pipeline.data.validation import concat_rejected, validate_ads


def _tracking_uri(given: str) -> str:
    return given or os.environ.get("MLFLOW_TRACKING_URI") or paths.mlflow_uri(paths.project_home(None))


def encode(args: argparse.Namespace) -> int:
    from unisid_pipeline.files import atomic_write_bytes
    from unisid_pipeline.tracking import fluent_tracking_uri

    parsed = read_rows(args.ads, AD_REQUIRED)
    result = validate_ads(parsed.rows, parsed.source, category_sep=args.category_sep)
    rejected = concat_rejected(parsed.rejected, result.rejected)
    out = Path(args.out)
    if rejected.height:
        rej_path = out.with_name(out.stem + ".rejected.parquet")
        buf = io.BytesIO()
        rejected.write_parquet(buf)
        atomic_write_bytes(rej_path, buf.getvalue())
        top = rejected.group_by("field").len().sort("len", descending=True).head(3)
        print(f"{rejected.height:,} row(s) of {args.ads} rejected, kept with their reason in {rej_path} "
              f"(most: {', '.join(f'{f} {n}' for f, n in top.iter_rows())})", file=sys.stderr)
    if result.clean.height == 0:
        raise InputFileError(args.ads, None, "no valid ad rows", "fix the rows listed in the rejected file and re-run")
    from unisid_pipeline.serving import load_pyfunc

    with fluent_tracking_uri(_tracking_uri(args.tracking_uri)):
        method, model = load_pyfunc(args.model)
        if method != "unisid":
            raise SystemExit(f"unisid encode: {args.model} is a {method or 'non-pyfunc'} tokenizer, which reads text "
                             "embeddings, not ads; give a UniSID tokenizer (models:/unisid_tokenizer@champion or /N)")
        frame = model.predict(result.clean.to_pandas())
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    atomic_write_bytes(out, buf.getvalue())
    print(f"{len(frame):,} ads -> {out} (ad_id, sid, embedding) with {args.model}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unisid", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("encode", help="ads file -> SIDs + embeddings (Parquet) with a registered UniSID tokenizer",
                       description="Give new ads their SID and embedding with a registered UniSID tokenizer.")
    e.add_argument("--ads", required=True, type=Path, help="ads file: .csv, .tsv, .jsonl or .parquet with the raw_ads "
                   "columns (ad_id and title required; unisid_pipeline/data/schema.py lists the rest)")
    e.add_argument("--out", required=True, type=Path, help="output Parquet file: ad_id, sid (one code per level, "
                   "before collision resolution), embedding; rejected rows go to <out>.rejected.parquet")
    e.add_argument("--model", default="models:/unisid_tokenizer@champion",
                   help="registered UniSID tokenizer (default: %(default)s; or models:/unisid_tokenizer/N, /latest)")
    e.add_argument("--tracking-uri", default="", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the "
                   "sqlite store under $UNISID_HOME or ./.unisid_home)")
    e.add_argument("--category-sep", default=CATEGORY_SEP, help="separator of a string category_path (default: "
                   "'%(default)s'; a list column or JSON array needs none)")
    e.set_defaults(run=encode)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except InputFileError as exc:
        print(f"unisid {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
