"""Where a trained recommender's ranking loses: hit ranks and SID-prefix hits of one split, on any device.

Loads a checkpoint written by `bench_recommender.py --save` (fp32, or the fp16 copy that bench/gpu/launch.sh's
HALF brings back from the GPU machine; tensors are cast back to float32), ranks the split with the constrained
beam search and prints three markdown tables:

- the item-level metrics (the same `ranking_metrics` as training reports; on the CPU in float32 they
  may differ slightly from the GPU's bf16 figures);
- where the hits fall: rank 1, 2-5, 6-10, 11-W, not in the top W (the beam size);
- prefix hits: for l = 1..L, the share of users whose top-1 / top-5 / top-10 items include one sharing the
  target's first l SID codes, and the NDCG@10 the ranking would have if the first such item counted as the hit
  (at l = L it is the item's own NDCG@10). Where the level-l column stays high and the level-(l+1) one drops,
  the model finds the right neighbourhood and then ranks the wrong member of it (for the last level: the wrong
  one of colliding items); the L-1 column bounds what a perfect collision token would buy.

    python bench/rank_analysis.py --checkpoint model.safetensors --sequences bench/out/beauty/sequences.parquet \
        --split test --max-users 4000 --device cpu

The three tables are also logged as one run of the MLflow experiment `benchmarks` (bench/report.py: the item
metrics as the run's metrics; --no-mlflow skips it).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import Report, add_report_args  # noqa: E402
from unisid_pipeline.metrics import dedupe_rankings, ranking_metrics, target_ranks  # noqa: E402
from unisid_pipeline.recommender.evaluate import check_sequences, rank_split, split_columns  # noqa: E402
from unisid_pipeline.recommender.model import GenerativeRecommender  # noqa: E402
from unisid_pipeline.seeding import resolve_device  # noqa: E402


def load_checkpoint(path: str, device: str) -> GenerativeRecommender:
    from unisid_pipeline.warehouse import read_object

    model = read_object(Path(path))  # bench_recommender.py --save: no pickle (any other file is refused unread)
    if not isinstance(model, GenerativeRecommender):
        raise SystemExit(f"{path} holds a {type(model).__name__}, not a recommender (bench_recommender.py --save)")
    model.float()
    model.config = dataclasses.replace(model.config, bf16=False)  # float32 decoding wherever it runs
    model.eval()
    return model.to(resolve_device(device))


def prefix_ranks(ranked_idx: np.ndarray, target_idx: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """(n, L) 1-based rank of the first ranked item sharing the target's first l codes (column l-1); 0 = none.

    ranked_idx: (n, W) item indices (-1 = none); target_idx: (n,) item indices; codes: (n_items, L). Repeats and
    empty slots are dropped first and the gaps closed, as the item metrics do (`dedupe_rankings`).
    """
    ranked_idx = dedupe_rankings(ranked_idx)
    valid = ranked_idx >= 0
    ranked_codes = codes[np.clip(ranked_idx, 0, None)]  # (n, W, L)
    same = ranked_codes == codes[target_idx][:, None, :]  # (n, W, L)
    out = np.zeros((len(ranked_idx), codes.shape[1]), dtype=np.int64)
    for level in range(1, codes.shape[1] + 1):
        match = same[:, :, :level].all(axis=2) & valid  # (n, W)
        out[:, level - 1] = np.where(match.any(axis=1), match.argmax(axis=1) + 1, 0)
    return out


def prefix_table(ranks: np.ndarray, ks: tuple[int, ...]) -> dict[str, list[float]]:
    """Per level: the share of rows with a prefix match in the top k, and NDCG@10 counting the first match as the hit."""
    hit = ranks > 0
    rows = {f"top-{k}": [float((hit[:, lv] & (ranks[:, lv] <= k)).mean()) for lv in range(ranks.shape[1])] for k in ks}
    gain = np.where(hit & (ranks <= 10), 1.0 / np.log2(np.maximum(ranks, 1) + 1), 0.0)
    rows["NDCG@10"] = [float(g) for g in gain.mean(axis=0)]
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a bench_recommender.py --save file (fp32 or fp16)")
    p.add_argument("--sequences", required=True, help="user_sequences parquet the model was trained on")
    p.add_argument("--split", default="test", choices=("valid", "test"))
    p.add_argument("--beam-size", type=int, default=None, help="default: the checkpoint's config")
    p.add_argument("--max-users", type=int, default=None,
                   help="a seeded random sample of N users (for a quick CPU look); not the first N: Beauty's first "
                        "users have longer histories and are harder (session 13: R@10 0.030 on the first 5,000 "
                        "against 0.0615 on all 22,363, same model)")
    p.add_argument("--sample-seed", type=int, default=0, help="seed of the --max-users sample")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    add_report_args(p)
    args = p.parse_args()

    model = load_checkpoint(args.checkpoint, args.device)
    seqs = pl.read_parquet(args.sequences)
    if args.max_users is not None and args.max_users < seqs.height:  # row order kept, as in training's sample
        keep = np.sort(np.random.default_rng(args.sample_seed).choice(seqs.height, args.max_users, replace=False))
        seqs = seqs[keep]
    hist_col, tgt_col = split_columns(args.split)
    check_sequences(seqs, (hist_col, tgt_col))
    try:  # before the (slow) ranking: every target needs a SID in the checkpoint's table
        target_idx = model.vocab.item_index(seqs[tgt_col].to_numpy())
    except KeyError as e:
        raise SystemExit(f"{args.split} targets vs the checkpoint's SID table: {e.args[0]} "
                         "(--sequences must be the data the model was trained on)") from None
    w = args.beam_size or model.config.beam_size
    items, ranked, targets, seconds = rank_split(model, seqs, args.split, args.batch_size, w)

    n = len(targets)
    rep = Report("rank_analysis", args=args)
    m = ranking_metrics(ranked, targets)
    rep.table([m], title=f"{args.checkpoint}: {args.split}, {n} users, beam {w}, {args.device}, {seconds:.0f} s "
                         f"({n / max(seconds, 1e-9):.0f} users/s)")
    print()

    ranks = target_ranks(ranked, targets)  # 1-based, 0 = not ranked
    edges = [e for e in (1, 5, 10) if e < w] + [w]  # bins 1, 2-5, 6-10, 11-W (as far as the beam reaches)
    bins = [(f"{lo + 1}-{hi}" if hi > lo + 1 else f"{hi}", (ranks > lo) & (ranks <= hi))
            for lo, hi in zip([0, *edges[:-1]], edges)] + [(f"not in top {w}", ranks == 0)]
    rep.table([{"target's rank": "share of users", **{b: float(mask.mean()) for b, mask in bins}}], key="hit_ranks")
    print()

    ks = tuple(k for k in (1, 5, 10) if k <= w)
    table = prefix_table(prefix_ranks(items, target_idx, model.vocab.codes), ks)
    levels = model.vocab.n_levels
    rep.table([{"prefix hit": name, **{f"L1..{lv}": v for lv, v in zip(range(1, levels + 1), vals)}}
               for name, vals in table.items()], key="prefix_hits")
    rep.log()


if __name__ == "__main__":
    main()
