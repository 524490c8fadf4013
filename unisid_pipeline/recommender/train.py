"""Training of the generative recommender (TIGER protocol, leave-one-out).

Examples: for every user and every position t >= 1 of ``train_items`` (= items[:-2]), the history
train_items[max(0, t - max_history):t] predicts train_items[t]. Validation: valid_history ->
valid_target; test: test_history -> test_target (see the user_sequences contract).
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from unisid_pipeline.checkpoint import atomic_save, load_training_checkpoint, rng_state, set_rng_state
from unisid_pipeline.recommender.batching import epoch_batches, padded_length
from unisid_pipeline.recommender.ema import ParameterEMA
from unisid_pipeline.recommender.evaluate import check_sequences, rank_histories
from unisid_pipeline.recommender.model import GenerativeRecommender, RecommenderConfig, autocast_ctx
from unisid_pipeline.recommender.vocab import SIDVocab
from unisid_pipeline.distributed import DistContext
from unisid_pipeline.files import remove_dead_temps
from unisid_pipeline.metrics import ranking_metrics
from unisid_pipeline.seeding import cpu_determinism, resolve_device, seed_everything

logger = logging.getLogger(__name__)

TRAIN_CHECKPOINT_FORMAT = "unisid_pipeline.recommender_train/1"


@dataclass(frozen=True)
class Examples:
    """history_idx (N, H) item indices right-padded with -1; target_idx (N,); user_ids (N,) raw ids."""

    history_idx: np.ndarray
    target_idx: np.ndarray
    user_ids: np.ndarray

    def __len__(self) -> int:
        return int(self.target_idx.shape[0])


def _right_pad_windows(idx: np.ndarray, h: int) -> np.ndarray:
    """All prefix windows of one sequence of item indices: row t-1 holds idx[max(0, t-h):t], t = 1..n-1,
    oldest first, right-padded with -1. (n - 1, h) int64."""
    n = idx.shape[0]
    padded = np.concatenate([np.full(h, -1, dtype=np.int64), idx])
    win = np.lib.stride_tricks.sliding_window_view(padded, h)[1:n]  # window ending just before position t
    order = np.argsort(win < 0, axis=1, kind="stable")  # move the valid (left-padded) items to the front
    return np.take_along_axis(win, order, axis=1)


def build_train_examples(sequences: pl.DataFrame, vocab: SIDVocab, max_history: int) -> Examples:
    """Every-prefix training examples from ``train_items`` (TIGER-style)."""
    check_sequences(sequences, ("train_items",))
    hists, tgts, users = [], [], []
    for uid, items in zip(sequences["user_id"].to_list(), sequences["train_items"].to_list()):
        if items is None or len(items) < 2:
            continue
        idx = vocab.item_index(items)
        hists.append(_right_pad_windows(idx, max_history))
        tgts.append(idx[1:])
        users.append(np.full(len(idx) - 1, uid, dtype=np.int64))
    if not hists:
        raise ValueError("no training examples: every user has fewer than 2 train_items")
    return Examples(np.concatenate(hists), np.concatenate(tgts), np.concatenate(users))


def build_split_examples(sequences: pl.DataFrame, vocab: SIDVocab, max_history: int, split: str) -> Examples:
    """One example per user for ``split`` in {"valid", "test"}."""
    hist_col, tgt_col = f"{split}_history", f"{split}_target"
    check_sequences(sequences, (hist_col, tgt_col))
    hist = np.full((sequences.height, max_history), -1, dtype=np.int64)
    for i, items in enumerate(sequences[hist_col].to_list()):
        items = list(items)[-max_history:]
        if items:
            hist[i, : len(items)] = vocab.item_index(items)
    targets = vocab.item_index(sequences[tgt_col].to_list())
    return Examples(hist, targets, sequences["user_id"].to_numpy().astype(np.int64))


def lr_lambda(config: RecommenderConfig, total_steps: int) -> Callable[[int], float]:
    """Multiplier of config.lr at optimizer step ``step`` (0-based) for config.lr_schedule."""
    warm = config.warmup_steps

    def f(step: int) -> float:
        s = step + 1
        if warm and s <= warm:
            return s / warm
        if config.lr_schedule == "constant":
            return 1.0
        if config.lr_schedule == "inverse_sqrt":
            return math.sqrt(warm / s) if warm else 1.0 / math.sqrt(s)
        progress = (s - warm) / max(1, total_steps - warm)  # cosine
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def _user_tokens(vocab: SIDVocab, config: RecommenderConfig, user_ids: np.ndarray) -> np.ndarray | None:
    return vocab.user_token(user_ids) if config.use_user_token else None


def _evaluate_examples(model: GenerativeRecommender, ex: Examples, ctx: DistContext = DistContext()) -> dict[str, float]:
    """Validation metrics; under DDP each rank ranks its shard of the users and the ranked lists are
    gathered, so every rank computes the metrics of all users."""
    cfg = model.config
    lo, hi = ctx.shard(len(ex))
    hist, users = ex.history_idx[lo:hi], ex.user_ids[lo:hi]
    items, _ = rank_histories(model, hist, _user_tokens(model.vocab, cfg, users), cfg.eval_batch_size)
    items = ctx.gather_rows(items)
    return ranking_metrics(items, ex.target_idx)  # item indices are item ids here (bijection with ad_ids)


def _fingerprint(config: RecommenderConfig, seed: int, vocab: SIDVocab, train_ex: Examples, valid_ex: Examples,
                 world_size: int, eval_every: int) -> str:
    """What a resumed run must share with the one that wrote the checkpoint: settings, seed, SIDs, examples."""
    settings = {k: v for k, v in config.to_dict().items() if k not in ("device", "max_train_seconds")}
    h = hashlib.sha256(repr((sorted(settings.items()), seed, world_size, eval_every)).encode())
    for arr in (vocab.ad_ids, vocab.codes, train_ex.history_idx, train_ex.target_idx, train_ex.user_ids,
                valid_ex.history_idx, valid_ex.target_idx):
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def train_recommender(
    config: RecommenderConfig,
    sids: Any,
    sequences: pl.DataFrame,
    seed: int | None = None,
    device: str | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    eval_every: int | None = None,
    checkpoint_dir: Path | str | None = None,
) -> tuple[GenerativeRecommender, list[dict[str, Any]]]:
    """Train a generative recommender; return (model with the best validation weights, per-epoch history).

    Args:
        config: model / optimisation settings.
        sids: SID table (polars ``ad_id`` + ``codes``) or an ``(ad_ids, codes)`` pair; collision-free.
        sequences: user_sequences table (``user_id``, ``train_items``, ``valid_history``, ``valid_target``).
        seed, device: override ``config.seed`` / ``config.device`` when given.
        on_epoch: called after every epoch with that epoch's history dict (on rank 0 only under torchrun).
        eval_every: validate (and consider early stopping) every this many epochs and after the last;
            None = ``config.eval_every``.
        checkpoint_dir: after every validation the whole training state (weights, optimiser, schedule,
            EMA, best weights so far, RNG states, history) is written atomically to
            ``seed<N>-<fingerprint>.pt`` there; a later call with the same config, seed and data resumes
            from it (a finished run returns its result without training again) and, on the CPU, ends with
            the same weights as an uninterrupted run. Starting afresh removes the seed's checkpoints of
            other settings or data.

    History dicts hold ``epoch``, ``step``, ``train_loss``, ``lr``, ``seconds`` (epoch wall time,
    validation included), ``evaluated`` and ``valid_recall@1/5/10/20``, ``valid_ndcg@5/10``,
    ``valid_mrr`` (None on epochs without validation). Early stopping: ``config.patience``
    validations without a better Recall@10 (ties broken by NDCG@10); the best weights (the averaged
    ones with ``config.ema_decay``) are restored at the end.

    Under torchrun (see `unisid_pipeline.distributed`) the model trains with DDP: every rank draws the
    same seeded permutation, each global batch of config.batch_size examples is split between the
    ranks, and each rank's loss is weighted by its share, so an optimiser step sees the gradient of
    the whole batch, as in one process. Validation users are split between ranks too; losses and
    metrics are global on every rank.
    """
    dev = resolve_device(config.device if device is None else device)
    # One intra-op thread on the CPU: bit-identical runs for a seed, and on a loaded 2-core machine
    # ~10x faster than 2 oversubscribed threads for this small model (measured: 16 s vs 191 s/epoch).
    with cpu_determinism(dev):
        return _train_recommender(config, sids, sequences, seed=seed, device=device, on_epoch=on_epoch,
                                  eval_every=eval_every, checkpoint_dir=checkpoint_dir)


def _train_recommender(
    config: RecommenderConfig,
    sids: Any,
    sequences: pl.DataFrame,
    seed: int | None = None,
    device: str | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    eval_every: int | None = None,
    checkpoint_dir: Path | str | None = None,
) -> tuple[GenerativeRecommender, list[dict[str, Any]]]:
    """The body of `train_recommender` (which picks the CPU thread count around it)."""
    eval_every = config.eval_every if eval_every is None else eval_every
    if not isinstance(eval_every, int) or eval_every < 1:
        raise ValueError(f"eval_every must be an int >= 1, got {eval_every!r}")
    seed = config.seed if seed is None else seed
    gen = seed_everything(seed)
    ctx = DistContext.from_env(resolve_device(config.device if device is None else device))
    dev = ctx.device

    model = GenerativeRecommender.from_sids(config, sids)
    vocab = model.vocab
    train_ex = build_train_examples(sequences, vocab, config.max_history)
    if config.batch_size > len(train_ex):
        raise ValueError(f"RecommenderConfig.batch_size={config.batch_size} is larger than the data "
                         f"({len(train_ex)} training examples): set batch_size to at most {len(train_ex)}")
    valid_ex = build_split_examples(sequences, vocab, config.max_history, "valid")
    if config.valid_max_users is not None and len(valid_ex) > config.valid_max_users:
        keep = np.sort(np.random.default_rng(seed).choice(len(valid_ex), config.valid_max_users, replace=False))
        valid_ex = Examples(valid_ex.history_idx[keep], valid_ex.target_idx[keep], valid_ex.user_ids[keep])
    model.to(dev)

    hist_t = torch.from_numpy(train_ex.history_idx).to(dev)
    tgt_t = torch.from_numpy(train_ex.target_idx).to(dev)
    utok = _user_tokens(vocab, config, train_ex.user_ids)
    utok_t = None if utok is None else torch.from_numpy(utok).to(dev)

    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.ndim >= 2 else no_decay).append(p)
    optim = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        fused=dev.type == "cuda",
    )
    t5_train = ctx.wrap(model.t5)  # DDP under torchrun, model.t5 itself in one process
    # One padded width (compile_length_step None): one static graph. Several widths: let dynamo mark the
    # sequence length dynamic after the first change of width (dynamic=None), so the step compiles twice
    # in all instead of once per width; under "reduce-overhead" each width still gets its own CUDA graph.
    dynamic = None if config.compile_length_step is not None else False
    t5_fwd = torch.compile(t5_train, mode=config.compile_mode, dynamic=dynamic) if config.compile else t5_train
    n = len(train_ex)
    # static shapes under torch.compile: drop the last partial batch (reshuffled every epoch)
    n_used = n if not config.compile or n < config.batch_size else n - n % config.batch_size
    steps_per_epoch = math.ceil(n_used / config.batch_size)
    lengths = torch.from_numpy((train_ex.history_idx >= 0).sum(1))  # CPU: batch widths need no device sync
    # eager: each batch trimmed to its longest history; compiled: rounded up to one of few static widths
    granularity = (config.compile_length_step or config.max_history) if config.compile else 1
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lr_lambda(config, steps_per_epoch * config.epochs))
    ema = ParameterEMA(model.t5, config.ema_decay) if config.ema_decay > 0 else None
    averaged = ema.applied if ema is not None else contextlib.nullcontext
    logger.info(
        "training recommender: %d train examples, %d valid users, %d items, vocab %d, %d params, device %s",
        n, len(valid_ex), vocab.n_items, vocab.vocab_size, sum(p.numel() for p in model.parameters()), dev,
    )

    history: list[dict[str, Any]] = []
    best_score: tuple[float, float] = (-1.0, -1.0)
    best_epoch, best_state, bad = 0, None, 0
    step, first_epoch, finished = 0, 1, False
    ckpt = None
    if checkpoint_dir is not None:
        fingerprint = _fingerprint(config, seed, vocab, train_ex, valid_ex, ctx.world_size, eval_every)
        ckpt = Path(checkpoint_dir) / f"seed{seed}-{fingerprint[:16]}.pt"
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        for tmp in remove_dead_temps(ckpt):
            logger.info("removed %s, a half-written checkpoint of a killed run", tmp)
        if ckpt.exists():
            st = load_training_checkpoint(ckpt, "recommender checkpoint")
            if st.get("format") != TRAIN_CHECKPOINT_FORMAT or st.get("fingerprint") != fingerprint:
                raise ValueError(f"{ckpt} is not a checkpoint of this recommender run: delete it and re-run")
            model.t5.load_state_dict(st["model"])
            optim.load_state_dict(st["optimizer"])
            sched.load_state_dict(st["scheduler"])
            if ema is not None:
                ema.load_state_dict(st["ema"])
            gen.set_state(st["generator"])
            set_rng_state(st["rng"])
            history, best_score, best_epoch = st["history"], tuple(st["best_score"]), st["best_epoch"]
            best_state, bad, step, finished = st["best_state"], st["bad"], st["step"], st["finished"]
            first_epoch = history[-1]["epoch"] + 1 if history else 1
            logger.info("resumed recommender training from %s after epoch %d%s", ckpt, first_epoch - 1,
                        " (already finished)" if finished else "")
        elif ctx.is_main:
            for old in ckpt.parent.glob(f"seed{seed}-*.pt"):  # this seed's runs of other settings or data
                old.unlink(missing_ok=True)

    def save_checkpoint(done: bool) -> None:
        if ckpt is None or not ctx.is_main:
            return
        atomic_save({
            "format": TRAIN_CHECKPOINT_FORMAT, "fingerprint": fingerprint, "finished": done,
            "model": model.t5.state_dict(), "optimizer": optim.state_dict(), "scheduler": sched.state_dict(),
            "ema": None if ema is None else ema.state_dict(), "generator": gen.get_state(), "rng": rng_state(),
            "history": history, "best_score": best_score, "best_epoch": best_epoch, "best_state": best_state,
            "bad": bad, "step": step,
        }, ckpt, "a recommender checkpoint")

    started = time.perf_counter()
    for epoch in range(first_epoch, config.epochs + 1):
        if finished:
            break
        t0 = time.perf_counter()
        model.train()
        plan = epoch_batches(lengths, config.batch_size, gen, config.length_pool_batches, drop_last=config.compile)
        loss_sum = torch.zeros((), device=dev)
        for rows in plan:
            n_rows, weight = rows.numel(), None
            if ctx.enabled:
                # this rank's share of the global batch, its mean loss weighted by share * world_size: DDP's
                # gradient average is then the gradient of the global batch mean (every target has the
                # same number of label tokens). A rank with no share runs one row at weight 0.
                lo, hi = ctx.shard(n_rows)
                weight = (hi - lo) * ctx.world_size / n_rows
                rows = rows[lo:hi] if hi > lo else rows[:1]
            width = padded_length(int(lengths[rows].max()), config.max_history, granularity)
            rows = rows.to(dev, non_blocking=True)
            input_ids, mask = model.assemble_inputs(
                hist_t[rows], None if utok_t is None else utok_t[rows], trim=False, n_columns=width
            )
            with autocast_ctx(dev, config.bf16):
                loss = t5_fwd(input_ids=input_ids, attention_mask=mask, labels=model.target_labels(tgt_t[rows])).loss
            optim.zero_grad(set_to_none=True)
            (loss if weight is None else loss * weight).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optim.step()
            sched.step()
            if ema is not None:
                ema.update()
            step += 1
            loss_sum += loss.detach().float() * (rows.numel() if weight is None else weight * n_rows / ctx.world_size)
        train_loss = float(loss_sum) if not ctx.enabled else ctx.all_reduce({"loss": float(loss_sum)})["loss"]
        record: dict[str, Any] = {
            "epoch": epoch,
            "step": step,
            "train_loss": train_loss / n_used,
            "lr": float(sched.get_last_lr()[0]),
        }
        out_of_time = False
        if config.max_train_seconds is not None:
            out_of_time = time.perf_counter() - started >= config.max_train_seconds
            if ctx.enabled:  # every rank must stop at the same epoch
                out_of_time = ctx.all_reduce({"t": float(out_of_time)})["t"] > 0
        evaluated = epoch % eval_every == 0 or epoch == config.epochs or out_of_time
        metrics, stop = None, False
        if evaluated:
            with averaged():  # validate and keep the weights that are returned (the average with an EMA)
                metrics = _evaluate_examples(model, valid_ex, ctx)
                score = (metrics["recall@10"], metrics["ndcg@10"])  # NDCG@10 breaks ties of Recall@10
                if score > best_score:
                    best_score, best_epoch, bad = score, epoch, 0
                    best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.t5.state_dict().items()})
                else:
                    bad += 1
                    stop = bad >= config.patience
        for key in ("recall@1", "recall@5", "recall@10", "recall@20", "ndcg@5", "ndcg@10", "mrr"):
            record[f"valid_{key}"] = None if metrics is None else metrics[key]
        record["evaluated"] = evaluated
        record["seconds"] = time.perf_counter() - t0
        history.append(record)
        logger.info(
            "epoch %d: loss %.4f valid R@10 %s (%.1fs)", epoch, record["train_loss"],
            "-" if metrics is None else f"{metrics['recall@10']:.4f}", record["seconds"],
        )
        if evaluated or stop:
            save_checkpoint(done=stop or out_of_time or epoch == config.epochs)
        if on_epoch is not None and ctx.is_main:
            on_epoch(record)
        if stop:
            logger.info(
                "early stopping at epoch %d (best valid R@10 %.4f at epoch %d)", epoch, best_score[0], best_epoch
            )
            break
        if out_of_time:
            logger.info(
                "time budget of %.0fs used up after epoch %d (best valid R@10 %.4f at epoch %d)",
                config.max_train_seconds, epoch, best_score[0], best_epoch,
            )
            break
    if best_state is not None:
        model.t5.load_state_dict(best_state)
    model.eval()
    return model, history
