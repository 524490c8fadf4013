"""Data-parallel training: the single-process context is a no-op, and a real 2-process gloo run under
torchrun (both entry points) makes the same optimiser steps as one process with the same global batch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from unisid_pipeline.data.sequences import build_user_sequences
from unisid_pipeline.data.synthetic import SyntheticWorldConfig, generate_world
from unisid_pipeline.distributed import DistContext
from unisid_pipeline.hierarchy import labels_from_category_path
from unisid_pipeline.recommender import GenerativeRecommender, RecommenderConfig, train_recommender
from unisid_pipeline.unisid import UniSIDModel, UniSIDTrainConfig, train_unisid
from unisid_pipeline.unisid.tables import aligned_inputs
from unisid_pipeline.warehouse import read_object

REPO = Path(__file__).resolve().parents[2]
UNISID = dict(model=dict(backbone="tiny", codebook_size=16, emb_dim=16, max_length=64, sid_source="head"),
              emb_positives="view", max_steps=4, batch_size=8,
              use_rec=False, checkpoint_every=0, lr_heads=3e-3, code_stats_sample=16)
REC = dict(n_encoder_layers=1, n_decoder_layers=1, d_model=32, n_heads=2, d_kv=16, d_ff=64, max_history=5,
           dropout=0.0, batch_size=32, epochs=3, warmup_steps=2, beam_size=10, n_user_buckets=8, lr=3e-3,
           ema_decay=0.5)  # the weight EMA under DDP: every rank averages, validates and returns the same weights


def test_single_process_context_is_a_no_op(monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    ctx = DistContext.from_env(torch.device("cpu"))
    lin = torch.nn.Linear(2, 2)
    assert not ctx.enabled and ctx.is_main and ctx.wrap(lin) is lin
    assert ctx.shard(7) == (0, 7) and ctx.all_reduce({"a": 2, "b": float("nan")})["a"] == 2.0
    assert np.array_equal(ctx.gather_rows(np.arange(3)), np.arange(3)) and len(ctx.replica_fingerprints(lin)) == 1
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ValueError, match="RANK is not set"):
        DistContext.from_env(torch.device("cpu"))


@pytest.mark.parametrize("n,world", [(10, 3), (2, 4), (9, 1), (64, 2)])
def test_shards_cover_every_item_once_and_differ_by_at_most_one(n, world):
    bounds = [DistContext(rank=r, world_size=world).shard(n) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [hi - lo for lo, hi in bounds]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ddp_data")
    world = generate_world(SyntheticWorldConfig(n_ads=48, n_users=40, n_advertisers=6, image_dim=4, seed=3))
    world.ads.write_parquet(d / "ads.parquet")
    labels_from_category_path(world.ads).write_parquet(d / "labels.parquet")
    build_user_sequences(world.interactions, max_history=5)[0].write_parquet(d / "seqs.parquet")
    i = np.arange(world.ads.height)
    pl.DataFrame({"ad_id": world.ads["ad_id"], "codes": np.stack([i // 8, i % 8], 1).tolist()}).write_parquet(
        d / "sids.parquet")
    (d / "unisid.json").write_text(json.dumps({"train": UNISID, "seed": 0, "device": "cpu"}))
    (d / "rec.json").write_text(json.dumps({"model": REC, "seed": 0, "device": "cpu"}))
    return d


def torchrun(nproc: int, *args: str, timeout: float = 240) -> tuple[subprocess.CompletedProcess, float]:
    """`python -m torch.distributed.run --standalone` (rendezvous on a free local port) with gloo on the CPU."""
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                           *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    return proc, time.perf_counter() - t0


@pytest.fixture(scope="module")
def two_ranks(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp_out")
    proc, _ = torchrun(2, "tests/core/ddp_two_trainers.py", str(data), str(out))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_two_rank_unisid_equals_one_process_with_the_same_global_batch(data, two_ranks):
    out = two_ranks / "unisid"
    summary = _summary(out)
    assert summary["world_size"] == 2
    assert len(summary["replica_sha256"]) == 2 and len(set(summary["replica_sha256"])) == 1  # ranks agree
    hist = json.loads((out / "history.json").read_text())["step"]
    assert hist[-1]["loss"] < hist[0]["loss"] and [s["ads"] for s in hist] == [16] * 4
    ddp = read_object(out / "model.safetensors")

    # one process, gradient accumulation over the same 2 micro-batches per step: the same optimisation
    ads = pl.read_parquet(data / "ads.parquet")
    _, labels = aligned_inputs(ads, None, pl.read_parquet(data / "labels.parquet"))
    ref, ref_hist = train_unisid(UniSIDTrainConfig.from_dict({**UNISID, "grad_accum_steps": 2}), ads, None, labels,
                                 seed=0, device="cpu")
    assert ref_hist["step"][0]["grad_norm"] == pytest.approx(hist[0]["grad_norm"], rel=1e-5)  # first-step gradient
    np.testing.assert_allclose([s["loss"] for s in hist], [s["loss"] for s in ref_hist["step"]], rtol=1e-5)
    for (k, a), (_, b) in zip(ref.state_dict().items(), ddp.state_dict().items()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=k)
    assert np.array_equal(ddp.encode_codes(ads), ref.encode_codes(ads))


def test_two_rank_recommender_equals_one_process(data, two_ranks):
    out = two_ranks / "rec"
    summary = _summary(out)
    assert summary["world_size"] == 2
    assert len(summary["replica_sha256"]) == 2 and len(set(summary["replica_sha256"])) == 1  # ranks agree
    hist = json.loads((out / "history.json").read_text())
    ddp = read_object(out / "model.safetensors")
    ref, ref_hist = train_recommender(RecommenderConfig.from_dict(REC), pl.read_parquet(data / "sids.parquet"),
                                      pl.read_parquet(data / "seqs.parquet"), seed=0, device="cpu")
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert [r["step"] for r in hist] == [r["step"] for r in ref_hist]  # global batch = batch_size, as in one process
    np.testing.assert_allclose([r["train_loss"] for r in hist], [r["train_loss"] for r in ref_hist], rtol=1e-5)
    assert [r["valid_recall@10"] for r in hist] == [r["valid_recall@10"] for r in ref_hist]  # users split, then gathered
    for (k, a), (_, b) in zip(ref.t5.state_dict().items(), ddp.t5.state_dict().items()):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4, msg=k)


def test_cuda_rank_must_use_its_local_gpu_and_cli_config_errors_name_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ValueError, match="cuda:LOCAL_RANK"):  # checked before joining any process group
        DistContext.from_env(torch.device("cuda", 0))
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k)
    from unisid_pipeline.cli import train_unisid as cli

    cfg = tmp_path / "run.json"
    base = ["--config", str(cfg), "--ads", "a.parquet", "--labels", "l.parquet", "--out", str(tmp_path / "o")]
    with pytest.raises(ValueError, match="does not exist"):
        cli.main(base)
    cfg.write_text(json.dumps({"seed": 0}))
    with pytest.raises(ValueError, match=r"lacks the keys \['train'\]"):
        cli.main(base)
    cfg.write_text(json.dumps({"train": {"batch_size": 8, "learning_rate": 1.0}}))
    with pytest.raises(ValueError, match="learning_rate"):
        cli.main(base)


def test_checkpoint_resumes_only_with_the_world_size_that_wrote_it(data, tmp_path):
    ads = pl.read_parquet(data / "ads.parquet")
    _, labels = aligned_inputs(ads, None, pl.read_parquet(data / "labels.parquet"))
    cfg = UniSIDTrainConfig.from_dict({**UNISID, "max_steps": 1})
    train_unisid(cfg, ads, None, labels, seed=0, device="cpu", checkpoint_dir=tmp_path)
    ck_path = tmp_path / "unisid_train_latest.pt"
    ck = torch.load(ck_path, weights_only=False)
    assert ck["world_size"] == 1
    torch.save({**ck, "world_size": 2}, ck_path)  # as if written by a 2-rank run
    with pytest.raises(ValueError, match="different world_size"):
        train_unisid(cfg, ads, None, labels, seed=0, device="cpu", checkpoint_dir=tmp_path)
