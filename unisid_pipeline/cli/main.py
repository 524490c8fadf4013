"""`unisid`: the registered models from the command line.

    unisid encode --ads new_ads.csv --out sids.parquet [--model models:/unisid_tokenizer@champion]
    unisid recommend --interactions clicks.csv --out recs.parquet [--model models:/recommender_unisid@champion] [--k 10]
    unisid evaluate --interactions clicks.csv [--model models:/recommender_unisid@champion] [--out metrics.json]

Every input file (.csv/.tsv/.jsonl/.parquet with the raw_ads or raw_interactions columns) goes through the same
readers and validation as ingestion, so a bad file or row gets the same message (file, line, field, fix); rejected
rows go to `<out>.rejected.parquet` with their reason. Outputs are written atomically. Input files may lie anywhere
(they are named on the command line), but one reached through a symbolic link is refused, as in ingestion, unless
--follow-symlinks; devices, FIFOs and folders are refused.
- encode: new ads get their SID and embedding from a registered UniSID tokenizer in one forward pass (no retraining).
- recommend: each user's clicks, in time order, are the history; the registered recommender returns the top-k ads.
- evaluate: leave-one-out per user (the last click is the target, the ones before the history), Recall/NDCG@5/10/20
  and MRR of the registered recommender over the users with at least two clicks, ranked by the beam search the
  pipeline's evaluation uses (its beam_size), so the figures are comparable with `downstream_eval`'s.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

import polars as pl

from unisid_pipeline import paths
from unisid_pipeline.data.readers import InputFileError, confine, read_rows
from unisid_pipeline.data.schema import AD_REQUIRED, CATEGORY_SEP, INTERACTION_REQUIRED
from unisid_pipeline.data.validation import concat_rejected, validate_ads, validate_interactions


def _tracking_uri(given: str) -> str:
    return given or os.environ.get("MLFLOW_TRACKING_URI") or paths.mlflow_uri(paths.project_home(None))


def _clean_rows(path: Path, kind: str, out: Path, args: argparse.Namespace):
    """The valid rows of an ads or interactions file, through ingestion's readers and validation; rejected rows are
    kept with their reason in <out>.rejected.parquet (and summed up on stderr). A file named on the command line
    may lie anywhere, but not be reached through a symbolic link unless --follow-symlinks (ingestion's check)."""
    try:
        confine(path, follow_symlinks=args.follow_symlinks, within_roots=False)
    except InputFileError as exc:
        raise InputFileError(path, None, exc.problem, "give the real file's path, or pass --follow-symlinks") from None
    if kind == "ads":
        parsed = read_rows(path, AD_REQUIRED)
        result = validate_ads(parsed.rows, parsed.source, category_sep=args.category_sep)
    else:
        parsed = read_rows(path, INTERACTION_REQUIRED)
        # the model's SID table decides which ads it knows: every ad id of the file passes here
        ids = parsed.rows["ad_id"].cast(pl.Int64, strict=False).drop_nulls() if "ad_id" in parsed.rows.columns else pl.Series([], dtype=pl.Int64)
        result = validate_interactions(parsed.rows, parsed.source, ids, timestamp_order=args.timestamp_order)
    rejected = concat_rejected(parsed.rejected, result.rejected)
    if rejected.height:
        rej_path = out.with_name(out.stem + ".rejected.parquet")
        _write_parquet(rejected, rej_path)
        top = rejected.group_by("field").len().sort("len", descending=True).head(3)
        print(f"{rejected.height:,} row(s) of {path} rejected, kept with their reason in {rej_path} "
              f"(most: {', '.join(f'{f} {n}' for f, n in top.iter_rows())})", file=sys.stderr)
    if result.clean.height == 0:
        raise InputFileError(path, None, f"no valid {kind} rows", "fix the rows listed in the rejected file and re-run")
    return result.clean


def _write_parquet(frame, out: Path) -> None:
    """A polars or pandas frame to `out`, atomically."""
    from unisid_pipeline.files import atomic_write_bytes

    buf = io.BytesIO()
    if isinstance(frame, pl.DataFrame):
        frame.write_parquet(buf)
    else:
        frame.to_parquet(buf, index=False)
    atomic_write_bytes(out, buf.getvalue())


def _load(args: argparse.Namespace, want: str):
    """The registered pyfunc at args.model, checked to be a `want` ("unisid" tokenizer or "recommender")."""
    from unisid_pipeline.serving import load_pyfunc
    from unisid_pipeline.tracking import fluent_tracking_uri

    with fluent_tracking_uri(_tracking_uri(args.tracking_uri)):
        kind, model = load_pyfunc(args.model)
    if kind != want:
        hint = ("a UniSID tokenizer (models:/unisid_tokenizer@champion or /N)" if want == "unisid" else
                "a recommender (models:/recommender_<method>@champion or /N, method rq_kmeans, rq_vae or unisid)")
        raise SystemExit(f"unisid {args.command}: {args.model} is a {kind or 'foreign pyfunc'} model; give {hint}")
    return model


def encode(args: argparse.Namespace) -> int:
    out = Path(args.out)
    ads = _clean_rows(args.ads, "ads", out, args)
    ads = ads.select([c for c in ads.columns if c in AD_REQUIRED or ads[c].null_count() < ads.height])  # columns the file lacks
    frame = _load(args, "unisid").predict(ads.to_pandas())
    _write_parquet(frame, out)
    print(f"{len(frame):,} ads -> {out} (ad_id, sid, embedding) with {args.model}", file=sys.stderr)
    return 0


def _histories(clicks: pl.DataFrame) -> pl.DataFrame:
    """One row per user: user_id and the ad_ids of their clicks in time order (file order breaks ties)."""
    return (clicks.with_row_index("_order").sort(["user_id", "timestamp", "_order"])
            .group_by("user_id", maintain_order=True).agg(pl.col("ad_id").alias("history")))


def _predict_top(model, users: pl.DataFrame, k: int):
    """The recommender's top-k for each user (history [+ user_id, for a model trained with user tokens])."""
    wanted = model.metadata.get_input_schema().input_names()
    return model.predict(users.select([c for c in wanted if c in users.columns]).to_pandas(), params={"k": k})


def recommend(args: argparse.Namespace) -> int:
    out = Path(args.out)
    users = _histories(_clean_rows(args.interactions, "interactions", out, args))
    frame = _predict_top(_load(args, "recommender"), users, args.k)
    frame.insert(0, "user_id", users["user_id"].to_list())
    _write_parquet(frame, out)
    print(f"{len(frame):,} users -> {out} (user_id, ad_ids, scores, n_unknown; top {args.k}) with {args.model}",
          file=sys.stderr)
    return 0


def evaluate(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from unisid_pipeline.files import atomic_write_bytes
    from unisid_pipeline.metrics import ranking_metrics

    out = Path(args.out) if args.out else Path("metrics.json")
    users = _histories(_clean_rows(args.interactions, "interactions", out, args))
    users = users.filter(pl.col("history").list.len() >= 2).with_columns(
        pl.col("history").list.last().alias("target"), pl.col("history").list.head(pl.col("history").list.len() - 1))
    if users.height == 0:
        raise InputFileError(args.interactions, None, "no user has two or more valid clicks",
                             "leave-one-out needs a history and a held-out last click per user")
    model = _load(args, "recommender")
    width = model.unwrap_python_model().recommender.config.beam_size  # the pipeline's evaluation beam, as reported
    pred = _predict_top(model, users, width)
    ranked = np.full((users.height, width), -1, dtype=np.int64)
    for i, row in enumerate(pred["ad_ids"]):
        ranked[i, :len(row)] = row
    metrics = {k: round(float(v), 4) for k, v in ranking_metrics(ranked, users["target"].to_numpy()).items()}
    report = {"model": args.model, "users": users.height, **metrics}
    print("  ".join(f"{k} {v}" for k, v in report.items()))
    if args.out:
        atomic_write_bytes(out, (json.dumps(report, indent=2) + "\n").encode())
        print(f"-> {out}", file=sys.stderr)
    return 0


def _common(p: argparse.ArgumentParser, model_default: str, model_help: str) -> None:
    p.add_argument("--model", default=model_default, help=f"{model_help} (default: %(default)s)")
    p.add_argument("--follow-symlinks", action="store_true", help="read an input file reached through a symbolic "
                   "link (refused by default, as in ingestion)")
    p.add_argument("--tracking-uri", default="", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the "
                   "sqlite store under $UNISID_HOME or ./.unisid_home)")


def _interactions_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--interactions", required=True, type=Path, help="clicks file: .csv, .tsv, .jsonl or .parquet with "
                   "user_id, ad_id, timestamp (integer seconds), as raw_interactions")
    p.add_argument("--timestamp-order", choices=("reject", "sort"), default="reject",
                   help="a click earlier than a previous one of its user in file order: reject it (default, as "
                   "ingestion) or sort each user's clicks by time")
    _common(p, "models:/recommender_unisid@champion", "registered recommender: models:/recommender_<method>@champion "
            "(the winning method's, after downstream_eval) or models:/recommender_<method>/N")


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unisid", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("encode", help="ads file -> SIDs + embeddings (Parquet) with a registered UniSID tokenizer",
                       description="Give new ads their SID and embedding with a registered UniSID tokenizer.")
    e.add_argument("--ads", required=True, type=Path, help="ads file: .csv, .tsv, .jsonl or .parquet with the raw_ads "
                   "columns (ad_id and title required; unisid_pipeline/data/schema.py lists the rest)")
    e.add_argument("--out", required=True, type=Path, help="output Parquet file: ad_id, sid (one code per level, "
                   "before collision resolution), embedding; rejected rows go to <out>.rejected.parquet")
    e.add_argument("--category-sep", default=CATEGORY_SEP, help="separator of a string category_path (default: "
                   "'%(default)s'; a list column or JSON array needs none)")
    _common(e, "models:/unisid_tokenizer@champion", "registered UniSID tokenizer (or models:/unisid_tokenizer/N, /latest)")
    e.set_defaults(run=encode)
    r = sub.add_parser("recommend", help="users' clicks -> top-k ads per user (Parquet) with a registered recommender",
                       description="Recommend the next ads for every user of a clicks file with a registered recommender.")
    _interactions_args(r)
    r.add_argument("--out", required=True, type=Path, help="output Parquet file: user_id, ad_ids (top k, best first), "
                   "scores, n_unknown (history ads the model's SID table does not know, skipped); rejected rows go "
                   "to <out>.rejected.parquet")
    r.add_argument("--k", type=_positive, default=10, help="ads per user (default: %(default)s)")
    r.set_defaults(run=recommend)
    v = sub.add_parser("evaluate", help="leave-one-out Recall/NDCG/MRR of a registered recommender on a clicks file",
                       description="Evaluate a registered recommender: each user's last click is held out and ranked "
                       "against the whole catalog from the clicks before it.")
    _interactions_args(v)
    v.add_argument("--out", type=Path, default=None, help="also write the metrics as JSON to this file; rejected rows "
                   "go to <out>.rejected.parquet (metrics.rejected.parquet without --out)")
    v.set_defaults(run=evaluate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except InputFileError as exc:
        print(f"unisid {args.command}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the registry's own errors (no such model, version or alias): one line, not a traceback
        from unisid_pipeline.tracking import redact_text

        uri = _tracking_uri(getattr(args, "tracking_uri", ""))
        message = redact_text(str(getattr(exc, "message", exc)), uri)
        if not type(exc).__module__.startswith("mlflow") and message == str(getattr(exc, "message", exc)):
            raise
        print(f"unisid {args.command}: {args.model}: {message}", file=sys.stderr)  # never the URI's credentials
        return 2


if __name__ == "__main__":
    sys.exit(main())
