"""Training loop of UniSID: two views per ad, AdamW, warm-up + cosine, accumulation, bf16 on CUDA,
clipping, atomic checkpoints and exact resume (on the CPU, same seed -> same result as an
uninterrupted run).

Data order: epoch e visits the ads in `np.random.default_rng([seed, e]).permutation(n)` in
micro-batches of batch_size (a trailing micro-batch of one ad is merged into the one before);
micro-batch m draws its views' randomness (token dropout, attribute order) from
`np.random.default_rng([seed, m, 1])`. Dropout uses torch's global RNG, whose state is saved.

Data-parallel (under torchrun, see `unisid_pipeline.distributed`): with W ranks, optimiser step s
takes the global micro-batches m = (s * grad_accum_steps + a) * W + rank, so a W-rank run with
grad_accum_steps=A makes the same optimiser steps (same micro-batches, same views, gradients averaged
the same way) as one process with grad_accum_steps=A*W; the contrastive losses stay in-batch
(batch_size ads per micro-batch, as in one process). Only rank 0 writes checkpoints and calls
on_step/on_epoch; a checkpoint resumes only with the world size that wrote it.
"""
from __future__ import annotations

import hashlib
import logging
import math
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl
import torch
from torch import nn

from unisid_pipeline.checkpoint import atomic_save, load_training_checkpoint, rng_state, set_rng_state
from unisid_pipeline.distributed import DistContext
from unisid_pipeline.seeding import cpu_bf16_allowed, resolve_device, seed_everything
from unisid_pipeline.unisid.config import UniSIDTrainConfig, resolve_rec_decoder
from unisid_pipeline.unisid.inputs import (
    EncodedCatalog, Ragged, attribute_target_text, detect_image_dim, image_matrix, to_device, tokenize_targets,
)
from unisid_pipeline.unisid.losses import LOSS_KEYS, UniSIDObjective
from unisid_pipeline.models.rq import RQKMeansConfig, fit_rq_kmeans
from unisid_pipeline.retrieval import retrieval_recall
from unisid_pipeline.attention import attention_kernels
from unisid_pipeline.unisid.model import UniSIDModel
from unisid_pipeline.unisid.pairs import Partners, sample_partners
from unisid_pipeline.files import remove_dead_temps

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "unisid_train_latest.pt"
TRAIN_CHECKPOINT_FORMAT = "unisid-train/1"


def epoch_chunks(n: int, batch_size: int) -> list[tuple[int, int]]:
    """[start, end) micro-batch bounds of one epoch; a trailing chunk of 1 ad joins the previous one."""
    bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < 2:
        last = bounds.pop()
        bounds[-1] = (bounds[-1][0], last[1])
    return bounds


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def code_stats(codes: np.ndarray, codebook_size: int) -> dict[str, float]:
    """Per level l (1-based): code_usage_l (fraction of the K codes used) and code_perplexity_l
    (exp of the entropy of the code histogram; K = perfectly uniform, 1 = collapsed); and
    unique_sid_frac (distinct L-tuples / ads)."""
    out: dict[str, float] = {}
    for i in range(codes.shape[1]):
        counts = np.bincount(codes[:, i], minlength=codebook_size)
        p = counts[counts > 0] / counts.sum()
        out[f"code_usage_l{i + 1}"] = float((counts > 0).sum() / codebook_size)
        out[f"code_perplexity_l{i + 1}"] = float(np.exp(-(p * np.log(p)).sum()))
    out["unique_sid_frac"] = float(len({tuple(r) for r in codes.tolist()}) / max(1, codes.shape[0]))
    return out


def _lr_lambda(total_steps: int, warmup: int, min_ratio: float) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if total_steps <= warmup:
            return 1.0
        t = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))
    return f


def _param_groups(model: UniSIDModel, objective: UniSIDObjective, config: UniSIDTrainConfig) -> list[dict[str, Any]]:
    """Backbone at lr_backbone, everything new at lr_heads; no weight decay on biases/norms (1-D)."""
    backbone = [p for p in model.backbone_parameters() if p.requires_grad]
    new = [p for p in model.new_parameters() if p.requires_grad] + [p for p in objective.parameters() if p.requires_grad]
    groups = []
    for params, lr, name in ((backbone, config.effective_lr_backbone, "backbone"), (new, config.lr_heads, "new")):
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        if decay:
            groups.append({"params": decay, "lr": lr, "weight_decay": config.weight_decay, "name": f"{name}_decay"})
        if no_decay:
            groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": f"{name}_no_decay"})
    return groups


def _fingerprint(ads: pl.DataFrame, texts: list[str] | None, labels: np.ndarray, partners: Partners | None = None) -> str:
    h = hashlib.sha256()
    if partners is not None:
        h.update(partners.offsets.tobytes())
        h.update(partners.values.tobytes())
    h.update(np.ascontiguousarray(ads["ad_id"].to_numpy()).tobytes())
    h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    for t in texts or []:
        h.update(t.encode("utf-8", "replace"))
        h.update(b"\x00")
    return h.hexdigest()


class _TrainStep(nn.Module):
    """model + objective as one module, so that DDP sees (and syncs) every trained parameter."""

    def __init__(self, model: UniSIDModel, objective: UniSIDObjective) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, views, labels, rec_ids, rec_mask, partner_labels=None, row_keys=None) -> dict[str, torch.Tensor]:
        return self.objective(self.model, views, labels, rec_ids, rec_mask, partner_labels, row_keys)


def _validate(config: UniSIDTrainConfig, ads: pl.DataFrame, summaries: list[str] | None,
              level_labels: np.ndarray) -> np.ndarray:
    for col in ("ad_id", "title"):
        if col not in ads.columns:
            raise ValueError(f"ads lacks the required column {col!r} (see unisid_pipeline.data.schema)")
    n = ads.height
    if n < 2:
        raise ValueError("train_unisid needs at least 2 ads (contrastive losses need negatives)")
    if config.batch_size > n:
        raise ValueError(f"UniSIDTrainConfig.batch_size={config.batch_size} is larger than the data ({n} ads): "
                         f"set batch_size to at most {n}")
    labels = np.asarray(level_labels)
    if labels.ndim != 2 or labels.shape != (n, config.model.n_levels):
        raise ValueError(
            f"level_labels must have shape (n_ads, n_levels) = ({n}, {config.model.n_levels}), got {labels.shape}: "
            "build it with unisid_pipeline.hierarchy.encode_level_labels")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError("level_labels must be integers (-1 = unknown)")
    if config.use_rec and config.lambda_rec > 0 and config.rec_target == "summary":
        if summaries is None:
            raise ValueError("rec_target='summary' needs summaries (one per ad): pass them, or set "
                             "rec_target='attributes' or use_rec=False")
        if len(summaries) != n:
            raise ValueError(f"summaries has {len(summaries)} entries for {n} ads: give one summary per ad, in ads order")
    return labels.astype(np.int64)


def cpu_amp_enabled(requested: bool, native_bf16: bool | None = None) -> bool:
    """Whether to train under bf16 autocast on the CPU: only when asked (``cpu_amp``) and the CPU has bf16
    instructions; otherwise training stays in fp32 with a warning (`seeding.cpu_bf16_allowed`)."""
    return requested and cpu_bf16_allowed("UniSIDTrainConfig.cpu_amp", native_bf16)


def train_unisid(
    config: UniSIDTrainConfig,
    ads: pl.DataFrame,
    summaries: list[str] | None,
    level_labels: np.ndarray,
    seed: int,
    device: str,
    checkpoint_dir: Path | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    partners: Partners | None = None,
    retrieval_pairs: np.ndarray | None = None,
) -> tuple[UniSIDModel, dict[str, list[dict[str, Any]]]]:
    """Train UniSID on `ads` (raw_ads schema); return (model in eval mode, history).

    level_labels: (n, L) int64 category ids per depth (-1 unknown), row i = ads[i].
    summaries: one text per ad (for rec_target='summary'), else None.
    checkpoint_dir: if it holds a checkpoint of this same config/seed/data, training resumes from
    it; checkpoints are written every config.checkpoint_every steps and at the end.
    partners: co-interaction partners of every ad row (`unisid.pairs.co_interaction_partners`); needed
    when config.emb_positives == "co_interaction", ignored otherwise.
    retrieval_pairs: (m, 2) ad row indices (query, positive), e.g. held-out next clicks: each epoch then
    reports the embedding's retrieval_r10 (1 positive among 999 random ads, `retrieval.retrieval_recall`).
    With model.sid_source == "embedding_rq" the quantizer is fitted on the catalog's embeddings at the end
    (seeded with `seed`), and the per-epoch code statistics are those of a quantizer fitted on the sample.
    history: {"step": [per-step dicts], "epoch": [per-epoch dicts]}; step dicts: step (1-based),
    epoch, loss, loss_sid, loss_emb, loss_rec, loss_bal, loss_con (NaN when off), lr (backbone group),
    lr_heads, grad_norm, ads, ads_per_s, tokens (backbone tokens of both views), seconds; epoch dicts: epoch, step, mean loss, per-level
    code_usage_l*/code_perplexity_l* and unique_sid_frac on a fixed sample of ads.
    """
    labels_np = _validate(config, ads, summaries, level_labels)
    use_pairs = config.use_emb and config.w_emb > 0 and config.emb_positives == "co_interaction"
    if use_pairs:
        if partners is None:
            raise ValueError("emb_positives='co_interaction' needs the users' click sequences: pass partners="
                             "co_interaction_partners(ad_ids, user_sequences), or set emb_positives='view'")
        if partners.n_ads != ads.height:
            raise ValueError(f"partners cover {partners.n_ads} ads, the ads table has {ads.height}: build them from this table")
    seed_everything(seed)
    ctx = DistContext.from_env(resolve_device(device))
    dev = ctx.device
    world = ctx.world_size
    if config.use_rec and config.rec_decoder == "auto":
        config = replace(config, rec_decoder=resolve_rec_decoder("auto", dev.type))
        logger.info("rec_decoder 'auto' -> %r on %s", config.rec_decoder, dev)
    mcfg = config.model
    if mcfg.use_image and mcfg.image_dim == 0:
        d = detect_image_dim(ads)
        if d:
            mcfg = replace(mcfg, image_dim=d)
            config = replace(config, model=mcfg)
    model = UniSIDModel(mcfg).to(dev)
    use_compile = config.compile and dev.type == "cuda" and not ctx.enabled
    if config.compile and not use_compile:
        logger.info("compile is ignored on %s%s: it needs one CUDA device without DDP", dev, " under DDP" if ctx.enabled else "")
    use_rec = config.use_rec and config.lambda_rec > 0
    rec_texts: list[str] | None = None
    rec_targets: list[list[int]] | Ragged | None = None
    tiny_vocab: list[int] | None = None
    if use_rec:
        rec_texts = list(summaries) if config.rec_target == "summary" else [attribute_target_text(r) for r in ads.to_dicts()]
        if config.rec_decoder == "tiny":  # the tiny decoder reads the backbone's tokenizer
            rec_targets = tokenize_targets(model.tokenizer, rec_texts, config.rec_max_length)
            tiny_vocab = sorted({t for x in rec_targets for t in x})
    objective = UniSIDObjective(config, model, tiny_vocab).to(dev)
    if use_rec and rec_targets is None:
        rec_targets = tokenize_targets(objective.rec.tokenizer, rec_texts, config.rec_max_length)
    if rec_targets is not None:
        rec_targets = Ragged.from_lists(rec_targets)
    model.train()
    objective.train()

    n = ads.height
    encoded = model.builder.encode_ads(ads)
    images = image_matrix(ads, mcfg.image_dim) if mcfg.n_image_slots else None
    labels_t = torch.from_numpy(labels_np)

    chunks = epoch_chunks(n, config.batch_size)
    accum = config.grad_accum_steps
    total_steps = config.max_steps or math.ceil(config.epochs * len(chunks) / (accum * world))
    optimizer = torch.optim.AdamW(_param_groups(model, objective, config), fused=dev.type == "cuda" or None)
    warmup = int(config.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total_steps, warmup, config.min_lr_ratio))
    use_amp = (config.amp and dev.type == "cuda") or (dev.type == "cpu" and cpu_amp_enabled(config.cpu_amp))

    stats_idx = np.sort(np.random.default_rng([seed, 0xC0DE]).permutation(n)[: config.code_stats_sample])

    fingerprint = _fingerprint(ads, rec_texts, labels_np, partners if use_pairs else None)
    history: dict[str, list[dict[str, Any]]] = {"step": [], "epoch": []}
    start_step = 0
    ckpt_path = None
    if checkpoint_dir is not None:
        checkpoint_dir = Path(checkpoint_dir)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        ckpt_path = checkpoint_dir / CHECKPOINT_NAME
        for tmp in remove_dead_temps(ckpt_path):
            logger.info("removed %s, a half-written checkpoint of a killed run", tmp)
        if ckpt_path.exists():
            ck = load_training_checkpoint(ckpt_path, "UniSID training checkpoint")
            if ck.get("format") != TRAIN_CHECKPOINT_FORMAT:
                raise ValueError(f"{ckpt_path} is not a UniSID training checkpoint: delete it or use another checkpoint_dir")
            mismatch = [k for k, v in (("train_config", config.to_dict()), ("seed", seed), ("fingerprint", fingerprint),
                                       ("world_size", world)) if ck.get(k, 1 if k == "world_size" else None) != v]
            if mismatch:
                raise ValueError(f"{ckpt_path} was written by a run with a different {', '.join(mismatch)}: "
                                 "delete it or use another checkpoint_dir")
            model.load_state_dict(ck["model"])
            if objective.rec is not None:
                objective.rec.load_state_dict(ck["rec"], strict=False)
            optimizer.load_state_dict(ck["optimizer"])
            scheduler.load_state_dict(ck["scheduler"])
            history = ck["history"]
            start_step = int(ck["step"])
            set_rng_state(ck["rng"])
            logger.info("resumed UniSID training from %s at step %d/%d", ckpt_path, start_step, total_steps)

    def save_checkpoint(step: int) -> None:
        if ckpt_path is None or not ctx.is_main:
            return
        epoch = (step * accum * world) // len(chunks)
        atomic_save({
            "format": TRAIN_CHECKPOINT_FORMAT,
            "train_config": config.to_dict(),
            "seed": seed,
            "fingerprint": fingerprint,
            "step": step,
            "world_size": world,
            "epoch": epoch,
            "data_order": epoch_order(seed, epoch, n),
            "model": model.state_dict(),
            "rec": objective.rec.trainable_state_dict() if objective.rec is not None else None,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(),
            "history": history,
        }, ckpt_path)

    order_cache: dict[int, np.ndarray] = {}

    def assemble(m: int) -> tuple[np.ndarray, np.ndarray, Any, int, Any, Any]:
        """Micro-batch m (global index over ranks) on the host: its ads, their second views' ads, the padded views,
        their token count and the L_rec targets. It depends on the seed and m only."""
        epoch, c = divmod(m, len(chunks))
        if epoch not in order_cache:
            order_cache.clear()
            order_cache[epoch] = epoch_order(seed, epoch, n)
        s, e = chunks[c]
        idx = order_cache[epoch][s:e]
        rng = np.random.default_rng([seed, m, 1])
        # second half: the same ads (two views), or each ad's co-interaction partner
        second = sample_partners(partners, idx, np.random.default_rng([seed, m, 2])) if use_pairs else idx
        img = None if images is None else np.concatenate([images[idx], images[second]])
        views = model.builder.collate(encoded, img, rng, config.token_drop_prob, config.shuffle_attributes,
                                      rows=np.concatenate([idx, second]), pad_to=mcfg.max_length if use_compile else None)
        rec_ids = rec_mask = None
        if rec_targets is not None:
            rec_ids, rec_mask = rec_targets.pad(idx, objective.rec.pad_id, config.rec_max_length if use_compile else None)
        return idx, second, views, int(views.attention_mask.sum()), rec_ids, rec_mask

    epoch_losses: list[float] = []
    if history["step"]:
        last_epoch = history["step"][-1]["epoch"]
        epoch_losses = [s["loss"] for s in history["step"] if s["epoch"] == last_epoch]
    train_step = ctx.wrap(_TrainStep(model, objective), find_unused_parameters=True)
    step_fn = train_step
    if use_compile:  # static shapes (views at max_length, targets at rec_max_length): one CUDA graph per batch size
        step_fn = torch.compile(train_step, mode="reduce-overhead", dynamic=False)
        # inductor suggests TF32 for fp32 matmuls; the contrastive similarities stay fp32 on purpose (see losses)
        warnings.filterwarnings("ignore", message="TensorFloat32 tensor cores", category=UserWarning)
        logger.info("training step compiled (CUDA graphs); the first steps include the compilation")
    logger.info("UniSID training: %d ads, %d steps of %d x %d x %d ads (accumulation x ranks x batch), device %s",
                n, total_steps, accum, world, config.batch_size, dev)
    def finish(p: dict[str, Any]) -> None:
        """Record a dispatched step: read its losses and gradient norm (waiting for its kernels only), log, write the
        history, the epoch diagnostics and checkpoint that fall on it, and call the callbacks."""
        nonlocal epoch_losses
        step = p["step"]
        if p["event"] is not None:
            p["event"].synchronize()
        values = p["values"].tolist()
        sums, grad_norm = dict(zip(LOSS_KEYS, values[:-1])), values[-1]
        n_ads, n_tokens = p["ads"], p["tokens"]
        if ctx.enabled:  # global values: loss means over ranks, counts summed
            sums = ctx.all_reduce(sums, op="mean")
            counts = ctx.all_reduce({"ads": n_ads, "tokens": n_tokens})
            n_ads, n_tokens = int(counts["ads"]), int(counts["tokens"])
        dt = p["seconds"]
        rec = {"step": step + 1, "epoch": (step * accum * world) // len(chunks), **sums, "lr": p["lr"],
               "lr_heads": p["lr_heads"], "grad_norm": grad_norm, "ads": n_ads, "ads_per_s": n_ads / dt,
               "tokens": n_tokens, "seconds": dt}
        history["step"].append(rec)
        epoch_losses.append(rec["loss"])
        if (step + 1) % 10 == 0 or step == start_step:
            logger.info("step %d/%d loss %.4f (sid %.4f emb %.4f rec %.4f bal %.4f con %.4f) %.1f ads/s", step + 1,
                        total_steps, rec["loss"], rec["loss_sid"], rec["loss_emb"], rec["loss_rec"], rec["loss_bal"],
                        rec["loss_con"], rec["ads_per_s"])
        ep_recs = []
        for ep in p["ended_epochs"]:
            ep_rec: dict[str, Any] = {"epoch": ep, "step": step + 1,
                                      "loss": float(np.mean(epoch_losses)) if epoch_losses else float("nan")}
            epoch_losses = []
            ep_rec.update(_epoch_stats(model, stats_idx, ads, encoded, retrieval_pairs, config, seed, dev, use_amp))
            history["epoch"].append(ep_rec)
            ep_recs.append(ep_rec)
            logger.info("epoch %d done: %s", ep, {k: round(v, 4) for k, v in ep_rec.items()})
        if p["checkpoint"]:
            save_checkpoint(step + 1)
        if on_step is not None and ctx.is_main:
            on_step(rec)
        if on_epoch is not None and ctx.is_main:
            for ep_rec in ep_recs:
                on_epoch(ep_rec)

    # A step is recorded (finish) while the next one runs on the device: reading its values right away would make the
    # host wait for the device's queue to drain every step, and then the device wait for the host's next batch.
    # Steps that end an epoch, write a checkpoint or end the run are recorded at once.
    pending: dict[str, Any] | None = None
    t_prev = time.perf_counter()
    for step in range(start_step, total_steps):
        loss_sum = None  # LOSS_KEYS on the device: read once per step (each read is a host-device sync)
        n_ads = n_tokens = 0
        for a in range(accum):
            idx, second, views, views_tokens, rec_ids, rec_mask = assemble((step * accum + a) * world + ctx.rank)
            n_tokens += views_tokens  # counted on the host, before the copy
            views = views.to(dev)
            pair_kw = {}
            if use_pairs:
                pair_kw = {"partner_labels": to_device(labels_t[second], dev),
                           "row_keys": to_device(torch.from_numpy(np.concatenate([idx, second])), dev)}
            if rec_ids is not None:
                rec_ids, rec_mask = to_device(rec_ids, dev), to_device(rec_mask, dev)
            with ctx.no_sync(train_step, skip=a < accum - 1), attention_kernels():  # DDP: one all-reduce per step
                if use_compile:
                    torch.compiler.cudagraph_mark_step_begin()
                with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=use_amp):
                    losses = step_fn(views, to_device(labels_t[idx], dev), rec_ids, rec_mask, **pair_kw)
                (losses["loss"] / accum).backward()
            part = torch.stack([losses[k].detach().float() for k in LOSS_KEYS]) / accum
            loss_sum = part if loss_sum is None else loss_sum + part
            n_ads += len(idx)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        total_norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        values = torch.cat([loss_sum, total_norm.detach().float().reshape(1).to(loss_sum.device)])
        event = None
        if values.device.type == "cuda":
            host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            values = host.copy_(values, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        ended_epochs = [g // len(chunks) for g in range(step * accum * world, (step + 1) * accum * world)
                        if g % len(chunks) == len(chunks) - 1]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        lr, lr_heads = optimizer.param_groups[0]["lr"], optimizer.param_groups[-1]["lr"]
        if pending is not None:
            finish(pending)
        t_now = time.perf_counter()
        last = step + 1 == total_steps
        pending = {"step": step, "values": values, "event": event, "ads": n_ads, "tokens": n_tokens, "lr": lr,
                   "lr_heads": lr_heads, "seconds": t_now - t_prev, "ended_epochs": ended_epochs,
                   "checkpoint": bool(config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 or last)}
        t_prev = t_now
        if ended_epochs or pending["checkpoint"]:
            finish(pending)
            pending = None
            t_prev = time.perf_counter()  # a step's seconds leave out the epoch diagnostics and checkpoints
    model.eval()
    if mcfg.sid_source == "embedding_rq":
        t0 = time.perf_counter()
        _, emb, _ = model.encode_heads(ads, batch_size=config.encode_batch_size, device=str(dev), amp=use_amp)
        qh = model.fit_sid_quantizer(emb, seed=seed, device=str(dev))
        if ctx.enabled:  # same seed and data on every rank, but GPU k-means need not be bitwise equal: take rank 0's
            import torch.distributed as dist

            for t in model.sid_quantizer.state_dict().values():
                dist.broadcast(t, src=0)
        history["quantizer"] = [{**{k: v[i] for k, v in qh.items() if k != "inertia_curve"}, "level": i + 1}
                                for i in range(len(qh.get("level", [])))]  # levels 1-based, as code_stats
        logger.info("SID quantizer (residual k-means on the UniSID embedding) fitted in %.1fs: usage per level %s",
                    time.perf_counter() - t0, [round(float(u), 3) for u in qh.get("usage", [])])
    return model, history


def _epoch_stats(model: UniSIDModel, stats_idx: np.ndarray, ads: pl.DataFrame, encoded: EncodedCatalog,
                 retrieval_pairs: np.ndarray | None, config: UniSIDTrainConfig, seed: int,
                 dev: torch.device, amp: bool) -> dict[str, float]:
    """Per-epoch diagnostics: code usage/perplexity of the SIDs on a fixed sample of ads (rows
    ``stats_idx``; head argmax, or a quantizer fitted on the sample's embeddings for
    sid_source="embedding_rq"; the head codes are then reported too, as head_*), and the embedding's
    held-out retrieval when pairs are given. ``encoded`` is the catalog as tokenised once for training;
    with retrieval the catalog is encoded once and the sample read from it."""
    out: dict[str, float] = {}
    k = config.model.codebook_size
    want_retrieval = retrieval_pairs is not None and len(retrieval_pairs) and ads.height >= 1001

    def encode(rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        sub = ads if rows is None else ads[rows.tolist()]
        enc = encoded if rows is None else encoded.subset(rows)
        head, emb, _ = model.encode_heads(sub, batch_size=config.encode_batch_size, device=str(dev), amp=amp,
                                          encoded=enc)
        return head, emb

    emb_all = None
    if want_retrieval:
        head_all, emb_all = encode(None)
    if len(stats_idx):
        head, emb = (head_all[stats_idx], emb_all[stats_idx]) if emb_all is not None else encode(stats_idx)
        if config.model.sid_source == "head":
            out.update(code_stats(head, k))
        else:
            out.update({f"head_{n}": v for n, v in code_stats(head, k).items()})
            if len(emb) >= k:
                state = rng_state()  # fit_rq_kmeans seeds the global RNGs: keep training's stream untouched
                try:
                    cfg = RQKMeansConfig(n_levels=config.model.n_levels, codebook_size=k, n_iter=20)
                    tok, _ = fit_rq_kmeans(cfg, emb, seed=seed, device=str(dev))
                    out.update(code_stats(tok.encode(emb), k))
                finally:
                    set_rng_state(state)
    if emb_all is not None:
        res = retrieval_recall(np.arange(ads.height), emb_all, retrieval_pairs, n_negatives=999, seed=seed)
        out["retrieval_r10"] = res["recall@10"]
    return out
