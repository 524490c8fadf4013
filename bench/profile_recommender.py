"""Where the recommender's training step spends its time, and beam-search throughput, on one device.

Times the exact training step of `recommender.train` (assemble inputs -> T5 loss -> backward -> clip ->
fused AdamW) for several variants (eager / torch.compile, fp32 / bf16 autocast, batch size), prints a
table of ms/step and examples/s, then a torch.profiler table of the top operators of one variant, and
the users/s of constrained beam search (the evaluation path).

    python bench/profile_recommender.py --sequences bench/out/beauty/sequences.parquet --device cuda

A variant is batch:fp32|bf16:eager|<torch.compile mode>[:sdpa|nocudnn|eager], the last field the T5's attention in
training (default sdpa). ``--width N`` trains on histories of at most N items padded to N (what one compiled width
of the real loop runs; without it compiled variants pad every history to 20 items, which overstates an epoch), and
``--profile-beam BATCH`` prints the top operators of the beam search. For example (BENCHMARKS.md):

    python bench/profile_recommender.py --sequences seqs.parquet --device cuda --width 12 --steps 30 --warmup 10 \
        --variants 1024:bf16:reduce-overhead,1024:bf16:reduce-overhead:eager --profile 1024:bf16:reduce-overhead \
        --beam-batch-sizes 512 --profile-beam 512

SIDs are random collision-free 3x256 codes (+ the suffix level), which costs the same as real ones. Each variant's
line goes to stderr as it finishes; the two tables (and the profiler's) are also logged to the MLflow experiment
`benchmarks` (bench/report.py; --no-mlflow skips it).

    python bench/profile_recommender.py --sequences seqs.parquet --device cpu --steps 2 --warmup 1 \
        --variants 16:fp32:eager --profile 16:fp32:eager --beam-users 16 --beam-batch-sizes 16   # smallest
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import torch  # noqa: E402

from bench.bench_recommender import random_sids  # noqa: E402
from bench.report import Report, add_report_args  # noqa: E402
from unisid_pipeline.recommender import RecommenderConfig  # noqa: E402
from unisid_pipeline.recommender.evaluate import rank_histories  # noqa: E402
from unisid_pipeline.recommender.model import GenerativeRecommender, autocast_ctx  # noqa: E402
from unisid_pipeline.recommender.train import build_split_examples, build_train_examples  # noqa: E402
from unisid_pipeline.attention import attention_kernels  # noqa: E402


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def top_operators(dev: torch.device, run, row_limit: int) -> str:
    """torch.profiler's table of the operators with the most own device time (CPU time on the CPU) in `run()`."""
    from torch.profiler import ProfilerActivity, profile as tprofile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with tprofile(activities=acts) as prof:
        run()
        sync(dev)
    key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=row_limit, max_name_column_width=60)


def time_variant(seqs: pl.DataFrame, sids, dev: torch.device, batch: int, bf16: bool, compile_mode: str | None,
                 steps: int, warmup: int, profile: bool = False, attn: str | None = None,
                 width: int | None = None) -> dict:
    cfg = RecommenderConfig(batch_size=batch, bf16=bf16, compile=compile_mode is not None,
                            compile_mode=compile_mode or "default", device=str(dev))
    torch.manual_seed(0)
    model = GenerativeRecommender.from_sids(cfg, sids).to(dev)
    # the T5's attention in training: transformers' sdpa (default: PyTorch picks the kernel, cuDNN's on Hopper),
    # "nocudnn" (sdpa without cuDNN's kernel: attention.attention_kernels, as UniSID and beam search run) or "eager"
    if attn == "eager":
        model.t5.set_attn_implementation("eager")
    kernels = attention_kernels if attn == "nocudnn" else contextlib.nullcontext
    ex = build_train_examples(seqs, model.vocab, cfg.max_history)
    lengths = (ex.history_idx >= 0).sum(1)
    # --width: batches of histories of at most `width` items, padded to exactly that (one compiled width of training
    # with compile_length_step); default: any history, padded to max_history (compiled) or trimmed (eager)
    pool = np.flatnonzero(lengths <= width) if width else np.arange(len(ex))
    hist_t = torch.from_numpy(ex.history_idx).to(dev)
    tgt_t = torch.from_numpy(ex.target_idx).to(dev)
    # the user token only where the config uses it (as recommender.train does; off by default)
    utok_t = torch.from_numpy(model.vocab.user_token(ex.user_ids)).to(dev) if cfg.use_user_token else None
    optim = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=dev.type == "cuda")
    fwd = torch.compile(model.t5, mode=compile_mode) if compile_mode else model.t5
    gen = torch.Generator().manual_seed(0)

    def step() -> torch.Tensor:
        rows = torch.from_numpy(pool)[torch.randint(0, len(pool), (batch,), generator=gen)].to(dev)
        ids, mask = model.assemble_inputs(hist_t[rows], None if utok_t is None else utok_t[rows],
                                          trim=compile_mode is None and not width, n_columns=width)
        with autocast_ctx(dev, bf16), kernels():
            loss = fwd(input_ids=ids, attention_mask=mask, labels=model.target_labels(tgt_t[rows])).loss
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        return loss.detach()

    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync(dev)
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(dev)
    dt = (time.perf_counter() - t0) / steps
    table = top_operators(dev, lambda: [step() for _ in range(10)], 15) if profile else None
    return {"ms_step": dt * 1e3, "ex_s": batch / dt, "warmup_s": warm_s, "epoch_s": len(ex) / batch * dt,
            "n_train": len(ex), "model": model, "profile": table}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sequences", required=True, help="user_sequences parquet")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--variants", default="512:fp32:eager,512:bf16:eager,512:fp32:default,512:bf16:default,"
                    "512:bf16:reduce-overhead,1024:bf16:default,2048:bf16:default",
                    help="comma-separated batch:fp32|bf16:eager|<torch.compile mode>[:sdpa|nocudnn|eager attention]")
    ap.add_argument("--width", type=int, default=None,
                    help="train on histories of at most this many items, padded to it (Beauty's mean is ~8 of 20)")
    ap.add_argument("--profile", default="512:fp32:eager", help="the variant to profile (top operators)")
    ap.add_argument("--beam-users", type=int, default=4096)
    ap.add_argument("--beam-batch-sizes", default="128,256,512,1024")
    ap.add_argument("--profile-beam", type=int, default=None, metavar="BATCH",
                    help="also print the top operators of beam search at this batch size (one pass over the users)")
    add_report_args(ap)
    args = ap.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    seqs = pl.read_parquet(args.sequences)
    ad_ids = np.unique(np.concatenate([np.asarray(x) for x in seqs["items"].to_list()]))
    sids = random_sids(ad_ids, "3x256", 0)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    title = f"device {name}, torch {torch.__version__}, {len(seqs)} users, {len(ad_ids)} items, T5 4+4 d128 (defaults)"
    rep = Report("profile_recommender", args=args)
    rows = []
    last = None
    for v in args.variants.split(","):
        b, prec, mode, *attn = v.split(":")
        row = {"batch": int(b), "precision": prec, "compile": mode, "attention": attn[0] if attn else "sdpa",
               "width": args.width or "max"}
        try:
            r = time_variant(seqs, sids, dev, int(b), prec == "bf16", None if mode == "eager" else mode,
                             args.steps, args.warmup, profile=v == args.profile, attn=attn[0] if attn else None,
                             width=args.width)
        except Exception as exc:  # a variant that fails (e.g. a compile mode) is reported, not fatal
            rows.append({**row, "ms/step": f"failed: {type(exc).__name__}: {str(exc)[:80]}"})
            print(f"variant {v}: failed: {type(exc).__name__}: {str(exc)[:200]}", file=sys.stderr, flush=True)
            continue
        rows.append({**row, "ms/step": r["ms_step"], "train examples/s": r["ex_s"], "epoch s (est.)": r["epoch_s"],
                     "warm-up s": r["warmup_s"]})
        print(f"variant {v}: {r['ms_step']:.2f} ms/step, {r['ex_s']:.0f} examples/s", file=sys.stderr, flush=True)
        if r["profile"]:
            prof_table = r["profile"]
        last = r
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    rep.table(rows, title=title)
    if args.profile and "prof_table" in locals():
        print(f"\nTop operators, variant {args.profile}, 10 steps:\n{prof_table}")
        rep.attach_text(prof_table, "profile.txt")
    if last is None:
        rep.log()
        return
    model = last["model"]
    ex = build_split_examples(seqs, model.vocab, 20, "test")
    n = min(args.beam_users, len(ex))
    utok = model.vocab.user_token(ex.user_ids[:n]) if model.config.use_user_token else None
    beam_rows = []
    for bb in (int(x) for x in args.beam_batch_sizes.split(",")):
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        w = min(64, n)
        # beam search picks its own attention kernels (every one but cuDNN's: attention.attention_kernels); with
        # an "eager" last variant the T5 runs its eager attention here too
        rank_histories(model, ex.history_idx[:w], None if utok is None else utok[:w], bb)  # warm-up
        sync(dev)
        t0 = time.perf_counter()
        rank_histories(model, ex.history_idx[:n], None if utok is None else utok[:n], bb)
        sync(dev)
        dt = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else float("nan")
        beam_rows.append({"beam batch": bb, "beam": model.config.beam_size, "users": n, "users/s": n / dt, "peak GiB": peak})
        print(f"beam batch {bb}: {n / dt:.0f} users/s", file=sys.stderr, flush=True)
    print()
    rep.table(beam_rows, key="beam_search")
    if args.profile_beam:
        users_tok = None if utok is None else utok[:n]
        beam_table = top_operators(dev, lambda: rank_histories(model, ex.history_idx[:n], users_tok, args.profile_beam), 25)
        print(f"\nTop operators, beam search at batch {args.profile_beam}, {n} users:\n{beam_table}")
        rep.attach_text(beam_table, "profile_beam.txt")
    rep.log()


if __name__ == "__main__":
    main()
