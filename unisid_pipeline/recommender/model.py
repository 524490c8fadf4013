"""TIGER-style generative recommender: a T5 encoder-decoder (random init) over SID tokens.

Encoder input: [user token] + the SID tokens of the last ``max_history`` items, oldest first,
right-padded. Decoder target: the SID tokens of the next item + eos; generation is a constrained
beam search over the L' SID levels that can only emit complete valid SIDs (see
:func:`constrained_beam_search`), so every generated sequence maps to exactly one item.
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import T5Config, T5ForConditionalGeneration
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from unisid_pipeline.attention import attention_kernels
from unisid_pipeline.recommender.trie import SIDTrie
from unisid_pipeline.recommender.vocab import EOS_ID, PAD_ID, SIDVocab
from unisid_pipeline.seeding import check_device_name, cpu_bf16_allowed

CHECKPOINT_FORMAT = "unisid_pipeline.recommender/1"
LR_SCHEDULES = ("inverse_sqrt", "constant", "cosine")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class RecommenderConfig:
    """Settings of the generative recommender (model, optimisation, decoding).

    The model follows TIGER (Rajput et al. 2023) for Amazon Beauty: T5 with 4 encoder + 4 decoder
    layers, d_model 128, 6 heads of d_kv 64, d_ff 1024, dropout 0.1, histories of <= 20 items, beam
    size 20. The optimisation defaults are the recipe measured best on Beauty (BENCHMARKS.md): AdamW
    at lr 1e-3, batch 1024, linear warm-up over ``warmup_steps`` = 500 then a constant lr
    (``lr_schedule="constant"``; "inverse_sqrt" decays as ``lr * sqrt(warmup_steps / step)``,
    "cosine" to 0 at the last epoch), EMA 0.999 of the weights, no user token (TIGER's hashed user
    token, ``use_user_token``, measured no better), at most 80 epochs, validation on 4,000 users
    every 4 epochs with patience 8. TIGER itself used Adafactor at lr 0.01 with an inverse-square-root
    decay. ``bf16`` and ``compile`` pay on a GPU only (configs/gpu.yaml turns them on). Early stopping watches validation Recall@10 (``patience`` evaluations without
    improvement; the best weights are restored). ``eval_every``: validate every this many epochs (and
    after the last), so ``patience`` evaluations span patience x eval_every epochs.

    ``valid_max_users`` evaluates early stopping on a fixed random subset of validation users
    (None = all), ``max_train_seconds`` stops training after the first epoch that ends past this
    wall-clock budget (validating it; None = no budget), ``bf16`` runs training and decoding under
    bfloat16 autocast (weights stay fp32; ignored with a warning on a CPU without bf16 instructions,
    see `autocast_ctx`),
    ``compile`` runs the training forward/backward through ``torch.compile(mode=compile_mode)``
    with static shapes (histories padded to max_history items, the last partial batch of each epoch
    dropped): on CUDA the small model is launch-bound, and "reduce-overhead" (CUDA graphs) cut an
    H100 step from 65 ms (eager, bf16) to 16 ms at batch 256, after ~1 min of compilation.

    ``ema_decay`` > 0 keeps an exponential moving average of the weights (`recommender.ema`, updated
    after every optimiser step, with the usual warm-up of the decay) and validates, early-stops on,
    restores and returns the averaged weights instead of the last ones; 0 = off.

    ``length_pool_batches`` > 1 groups training rows of similar history length into a batch (each
    pool of that many batches of the epoch's permutation is sorted by length, the batch order is
    shuffled; see `recommender.batching`), so batches pad to their own longest history instead of
    almost always to ``max_history`` (Beauty: 8.0 instead of 20 item slots per row at 8); 1 = plain
    random batches. Measured on Beauty (CPU, 4,000 users, 2+2 layers d64): 57 vs 115 s per epoch,
    training loss per epoch within 0.5% (BENCHMARKS.md). Under ``compile`` a batch pads to a
    multiple of ``compile_length_step`` history items (None = always ``max_history``, one static
    shape); with a step the sequence length is compiled as a dynamic dimension (two compilations in
    all, measured on the CPU, not one per width), and "reduce-overhead" records one CUDA graph per
    width.
    """

    n_encoder_layers: int = 4
    """T5 encoder layers (TIGER: 4)"""
    n_decoder_layers: int = 4
    """T5 decoder layers (TIGER: 4)"""
    d_model: int = 128
    """hidden width of the T5 (TIGER: 128)"""
    n_heads: int = 6
    """attention heads per layer (TIGER: 6)"""
    d_kv: int = 64
    """width of each attention head (TIGER: 64)"""
    d_ff: int = 1024
    """feed-forward width (TIGER: 1024)"""
    dropout: float = 0.1
    """dropout in the T5, in [0, 1)"""
    max_history: int = 20
    """most recent items of a user's history the model reads (TIGER: 20)"""
    use_user_token: bool = False
    """prepend TIGER's hashed user token (measured no better on Beauty; off)"""
    n_user_buckets: int = 2000
    """hash buckets of the user token (used only with use_user_token)"""
    lr: float = 1e-3
    """AdamW peak learning rate"""
    weight_decay: float = 0.01
    """AdamW weight decay of the weight matrices"""
    lr_schedule: str = "constant"
    """after linear warm-up: constant (default), inverse_sqrt or cosine (to 0 at the last epoch)"""
    warmup_steps: int = 500
    """optimiser steps of linear learning-rate warm-up"""
    grad_clip: float = 1.0
    """gradient-norm clipping threshold"""
    ema_decay: float = 0.999
    """exponential moving average of the weights, validated and returned instead of the last ones; 0 = off"""
    batch_size: int = 1024
    """training examples per optimiser step"""
    epochs: int = 80
    """most training epochs (early stopping may end sooner)"""
    patience: int = 8
    """validations without a better valid Recall@10 before stopping (patience x eval_every epochs)"""
    eval_every: int = 4
    """validate every this many epochs (and after the last)"""
    valid_max_users: int | None = 4000
    """validate early stopping on a fixed random subset of this many users; null = all"""
    max_train_seconds: float | None = None
    """stop after the first epoch that ends past this wall-clock budget; null = none"""
    beam_size: int = 20
    """beams of the constrained beam search (top-k candidates); metrics @k above it see only beam_size items"""
    eval_batch_size: int = 512
    """users per batch when decoding for validation and test"""
    bf16: bool = False
    """bfloat16 autocast in training and decoding (GPU; ignored with a warning on a CPU without bf16)"""
    compile: bool = False
    """torch.compile the training step (pays on a GPU: CUDA graphs with compile_mode reduce-overhead)"""
    compile_mode: str = "reduce-overhead"
    """torch.compile mode: default, reduce-overhead, max-autotune or max-autotune-no-cudagraphs"""
    length_pool_batches: int = 8
    """sort pools of this many batches by history length (less padding); 1 = plain random batches"""
    compile_length_step: int | None = None
    """under compile, pad histories to a multiple of this many items (few static shapes); null = always max_history"""
    seed: int = 0
    """seed of initialisation, batch order and dropout (replaced by each of the asset's seeds)"""
    device: str = "auto"

    def __post_init__(self) -> None:
        positive = (
            "n_encoder_layers", "n_decoder_layers", "d_model", "n_heads", "d_kv", "d_ff", "max_history",
            "batch_size", "epochs", "patience", "eval_every", "beam_size", "eval_batch_size", "length_pool_batches",
        )
        for name in positive:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.n_user_buckets, int) or self.n_user_buckets < 0:
            raise ValueError(f"n_user_buckets must be an int >= 0, got {self.n_user_buckets!r}")
        if self.use_user_token and self.n_user_buckets < 1:
            raise ValueError("n_user_buckets must be >= 1 when use_user_token=True (or set use_user_token=False)")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an int >= 0, got {self.warmup_steps!r}")
        if not (isinstance(self.ema_decay, (int, float)) and not isinstance(self.ema_decay, bool)
                and 0.0 <= self.ema_decay < 1.0):
            raise ValueError(f"ema_decay must be in [0, 1) (0 = off; e.g. 0.999), got {self.ema_decay!r}")
        if not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 (use a large value to disable clipping), got {self.grad_clip!r}")
        if self.valid_max_users is not None and (not isinstance(self.valid_max_users, int) or self.valid_max_users < 1):
            raise ValueError(f"valid_max_users must be None or an int >= 1, got {self.valid_max_users!r}")
        if self.max_train_seconds is not None and not self.max_train_seconds > 0:
            raise ValueError(f"max_train_seconds must be None or > 0, got {self.max_train_seconds!r}")
        if self.compile_length_step is not None and (
            not isinstance(self.compile_length_step, int) or isinstance(self.compile_length_step, bool)
            or not 1 <= self.compile_length_step <= self.max_history
        ):
            raise ValueError(
                f"compile_length_step must be None or an int in [1, max_history={self.max_history}], "
                f"got {self.compile_length_step!r}"
            )
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {COMPILE_MODES}, got {self.compile_mode!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
        check_device_name(self.device, "RecommenderConfig.device")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RecommenderConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown RecommenderConfig field(s) {sorted(unknown)}")
        return cls(**d)


def build_t5(config: RecommenderConfig, vocab_size: int) -> T5ForConditionalGeneration:
    """Randomly initialised T5 (no pretrained weights) sized by ``config``."""
    t5_config = T5Config(
        vocab_size=vocab_size,
        d_model=config.d_model,
        d_kv=config.d_kv,
        d_ff=config.d_ff,
        num_layers=config.n_encoder_layers,
        num_decoder_layers=config.n_decoder_layers,
        num_heads=config.n_heads,
        dropout_rate=config.dropout,
        feed_forward_proj="relu",
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        decoder_start_token_id=PAD_ID,
        is_encoder_decoder=True,
    )
    return T5ForConditionalGeneration(t5_config)


def autocast_ctx(device: torch.device, enabled: bool, native_bf16: bool | None = None) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device`` when enabled, else a no-op context.

    On a CPU without bf16 instructions (``native_bf16``, default: this machine's) bf16 is emulated, so
    there ``bf16=True`` is ignored with a one-time warning (`seeding.cpu_bf16_allowed`), as UniSID's
    ``cpu_amp`` is.
    """
    if not enabled:
        return contextlib.nullcontext()
    if device.type == "cpu" and not cpu_bf16_allowed("RecommenderConfig.bf16", native_bf16, warn_once=True):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


# ------------------------------------------------------------------------------------------------
# constrained beam search
# ------------------------------------------------------------------------------------------------
def _next_logprobs(
    t5: T5ForConditionalGeneration,
    enc: torch.Tensor,
    attention_mask: torch.Tensor,
    decoder_input_ids: torch.Tensor,
    cache: EncoderDecoderCache | None,
) -> tuple[torch.Tensor, EncoderDecoderCache | None]:
    """Log-probs (rows, V) float32 of the next token after ``decoder_input_ids`` (rows, t)."""
    out = t5(
        encoder_outputs=(enc,),
        attention_mask=attention_mask,
        decoder_input_ids=decoder_input_ids,
        past_key_values=cache,
        use_cache=cache is not None,
    )
    return torch.log_softmax(out.logits[:, -1, :].float(), dim=-1), out.past_key_values


@torch.no_grad()
def constrained_beam_search(
    t5: T5ForConditionalGeneration,
    trie: SIDTrie,
    offsets: Sequence[int],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    beam_size: int,
    use_cache: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``beam_size`` items per row by beam search restricted to valid SIDs.

    Args:
        t5: the seq2seq model (its mode is left as is; call ``eval()`` first for deterministic output).
        trie: valid SIDs, tables on the same device as ``input_ids``.
        offsets: token id of code 0 of each level (``SIDVocab.offsets``).
        input_ids, attention_mask: (B, T) encoder inputs.
        beam_size: W, number of beams kept at every level and items returned.
        use_cache: reuse decoder keys/values across levels (fast path); False re-runs the decoder
            over the whole prefix at every level (slow reference, same result).

    Returns:
        items (B, W) int64 item indices (rows of the SID table), best first, -1 where fewer than W
        valid SIDs exist; scores (B, W) float32 sequence log-probabilities
        sum_l log p(token_l | history, tokens_<l) under the unconstrained softmax, -inf for -1 items.
        Items within a row are distinct (distinct SID paths of a collision-free trie).
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    device = input_ids.device
    if trie.device != device:
        raise ValueError(f"trie tables are on {trie.device} but inputs are on {device}; call trie.to(device)")
    b, w = input_ids.shape[0], beam_size
    enc = t5.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, d)
    cache = EncoderDecoderCache(DynamicCache(config=t5.config), DynamicCache(config=t5.config)) if use_cache else None

    start = torch.full((b, 1), PAD_ID, dtype=torch.long, device=device)
    logp, cache = _next_logprobs(t5, enc, attention_mask, start, cache)  # (B, V): all beams share step 0
    logp = logp[:, None, :].expand(b, w, logp.shape[-1])
    # state: only beam 0 is alive before the first level
    scores = torch.zeros(b, w, device=device)
    valid = torch.zeros(b, w, dtype=torch.bool, device=device)
    valid[:, 0] = True
    node = torch.zeros(b, w, dtype=torch.long, device=device)
    tokens = torch.zeros(b, w, 0, dtype=torch.long, device=device)
    enc_rep = enc.repeat_interleave(w, dim=0)
    mask_rep = attention_mask.repeat_interleave(w, dim=0)
    if cache is not None:
        cache.batch_repeat_interleave(w)
    row_base = (torch.arange(b, device=device) * w)[:, None]
    neg_inf = torch.tensor(float("-inf"), device=device)

    for level in range(trie.n_levels):
        size, off = trie.level_sizes[level], int(offsets[level])
        if level > 0:
            if cache is not None:
                logp, cache = _next_logprobs(t5, enc_rep, mask_rep, tokens[:, :, -1].reshape(b * w, 1), cache)
            else:
                prefix = torch.cat([torch.zeros(b, w, 1, dtype=torch.long, device=device), tokens], dim=2)
                logp, _ = _next_logprobs(t5, enc_rep, mask_rep, prefix.reshape(b * w, -1), None)
            logp = logp.view(b, w, -1)
        lp = logp[:, :, off : off + size]  # (B, W, size)
        cand_valid = valid[:, :, None] & trie.allowed[level][node.clamp(min=0)]
        cand = torch.where(cand_valid, scores[:, :, None] + lp, neg_inf).reshape(b, w * size)
        scores, flat = cand.topk(w, dim=1)  # w <= w * size always
        parent, code = flat // size, flat % size
        valid = cand_valid.reshape(b, w * size).gather(1, flat)
        parent_node = node.gather(1, parent).clamp(min=0)
        node = torch.where(valid, trie.child[level][parent_node, code], torch.full_like(code, -1))
        scores = torch.where(valid, scores, neg_inf)
        kept = tokens.gather(1, parent[:, :, None].expand(b, w, tokens.shape[2]))
        tokens = torch.cat([kept, (code + off)[:, :, None]], dim=2)
        if cache is not None and level + 1 < trie.n_levels:
            # only the self-attention cache differs between beams; cross-attention rows are per user
            cache.self_attention_cache.reorder_cache((row_base + parent).reshape(-1))
    items = torch.where(valid, node, torch.full_like(node, -1))
    return items, scores


@torch.no_grad()
def brute_force_topk(
    t5: T5ForConditionalGeneration,
    item_tokens: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Slow reference: score every item's full SID by teacher forcing and take the top k.

    item_tokens: (n_items, L') token ids. Returns items (B, k) and scores (B, k) like
    :func:`constrained_beam_search` (scores = sum of the L' token log-probs, no eos term).
    """
    b = input_ids.shape[0]
    n, depth = item_tokens.shape
    enc = t5.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    all_scores = torch.empty(b, n, device=input_ids.device)
    dec_in = torch.cat([torch.zeros(n, 1, dtype=torch.long, device=input_ids.device), item_tokens[:, :-1]], dim=1)
    for row in range(b):
        out = t5(
            encoder_outputs=(enc[row : row + 1].expand(n, -1, -1),),
            attention_mask=attention_mask[row : row + 1].expand(n, -1),
            decoder_input_ids=dec_in,
            use_cache=False,
        )
        logp = torch.log_softmax(out.logits.float(), dim=-1)  # (n, L', V)
        all_scores[row] = logp.gather(2, item_tokens[:, :, None]).squeeze(2).sum(1)
    scores, items = all_scores.topk(min(k, n), dim=1)
    return items, scores


# ------------------------------------------------------------------------------------------------
# the model bundle
# ------------------------------------------------------------------------------------------------
class GenerativeRecommender(nn.Module):
    """T5 + SID vocabulary + trie: encodes histories, computes the training loss, recommends items.

    Built on the CPU; move it with ``.to(device)`` (the trie follows the model's device lazily).
    """

    def __init__(self, config: RecommenderConfig, vocab: SIDVocab) -> None:
        super().__init__()
        expected_buckets = config.n_user_buckets if config.use_user_token else 0
        if vocab.n_user_buckets != expected_buckets:
            raise ValueError(
                f"vocab has {vocab.n_user_buckets} user buckets but the config asks for {expected_buckets}; "
                "build it with GenerativeRecommender.from_sids(config, sids), which sizes the user buckets"
            )
        self.config = config
        self.vocab = vocab
        self.t5 = build_t5(config, vocab.vocab_size)
        self.register_buffer("item_tokens", torch.from_numpy(vocab.item_tokens.copy()), persistent=False)
        self._trie = SIDTrie(vocab.codes, vocab.level_sizes)

    @classmethod
    def from_sids(cls, config: RecommenderConfig, sids: Any) -> GenerativeRecommender:
        """Build from a SID table (polars, ``ad_id`` + ``codes``) or an ``(ad_ids, codes)`` pair."""
        buckets = config.n_user_buckets if config.use_user_token else 0
        return cls(config, SIDVocab.from_sids(sids, n_user_buckets=buckets))

    @property
    def device(self) -> torch.device:
        return self.item_tokens.device

    @property
    def trie(self) -> SIDTrie:
        if self._trie.device != self.device:
            self._trie.to(self.device)
        return self._trie

    # ---- inputs -----------------------------------------------------------------------------------
    def history_matrix(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        """Item indices of the last ``max_history`` ad_ids of each history, right-padded with -1. (B, H) int64."""
        h = self.config.max_history
        out = np.full((len(histories), h), -1, dtype=np.int64)
        for i, hist in enumerate(histories):
            hist = list(hist)[-h:]
            if hist:
                out[i, : len(hist)] = self.vocab.item_index(hist)
        return out

    def make_inputs(
        self, history_idx: torch.Tensor, user_ids: torch.Tensor | np.ndarray | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder inputs from item indices.

        history_idx: (B, H) int64 item indices, oldest first, right-padded with -1.
        user_ids: (B,) raw user ids (hashed here); required iff ``config.use_user_token``.
        Returns input_ids (B, T) and attention_mask (B, T), T = [1 +] H' * L' with H' the longest
        history of the batch.
        """
        utok = None
        if self.config.use_user_token:
            if user_ids is None:
                raise ValueError("config.use_user_token=True: pass user_ids to make_inputs")
            uids = np.asarray(user_ids.cpu() if isinstance(user_ids, torch.Tensor) else user_ids, dtype=np.int64)
            utok = torch.from_numpy(self.vocab.user_token(uids))
        return self.assemble_inputs(history_idx, utok)

    def assemble_inputs(
        self, history_idx: torch.Tensor, user_tokens: torch.Tensor | None, trim: bool = True,
        n_columns: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Like :meth:`make_inputs` but with user tokens already hashed ((B,) token ids, or None
        when the config has no user token). ``trim=False`` keeps all H history columns (static
        shapes for torch.compile) instead of cutting to the longest history of the batch;
        ``n_columns`` keeps exactly that many (>= the longest history; the caller knows it without
        a device sync)."""
        if self.config.use_user_token and user_tokens is None:
            raise ValueError("config.use_user_token=True: user_tokens are required")
        history_idx = history_idx.to(self.device)
        if history_idx.shape[0] == 0:
            raise ValueError("empty batch: history_idx has 0 rows")
        if n_columns is not None:  # the caller's width: no device reduction (the training loop's hot path)
            hmax = n_columns
        elif trim:
            lengths = (history_idx >= 0).sum(1)
            if not self.config.use_user_token and int(lengths.min()) == 0:
                raise ValueError("every history needs at least one item when there is no user token")
            hmax = max(int(lengths.max()), 1)
        else:
            hmax = history_idx.shape[1]
        idx = history_idx[:, :hmax]
        toks = self.item_tokens[idx.clamp(min=0)]  # (B, H', L')
        toks = torch.where((idx >= 0)[:, :, None], toks, torch.full_like(toks, PAD_ID)).reshape(idx.shape[0], -1)
        if self.config.use_user_token:
            toks = torch.cat([user_tokens.to(self.device)[:, None], toks], dim=1)
        return toks, toks != PAD_ID

    def target_labels(self, target_idx: torch.Tensor) -> torch.Tensor:
        """Decoder labels (B, L' + 1): the SID tokens of each target item followed by eos."""
        t = self.item_tokens[target_idx.to(self.device)]
        return torch.cat([t, torch.full_like(t[:, :1], EOS_ID)], dim=1)

    # ---- training / decoding ------------------------------------------------------------------------
    def loss(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, target_idx: torch.Tensor) -> torch.Tensor:
        """Mean teacher-forcing cross entropy over the target's SID tokens and eos."""
        return self.t5(input_ids=input_ids, attention_mask=attention_mask, labels=self.target_labels(target_idx)).loss

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, target_idx: torch.Tensor) -> torch.Tensor:
        return self.loss(input_ids, attention_mask, target_idx)

    @torch.no_grad()
    def beam_search(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        beam_size: int | None = None,
        use_cache: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Constrained beam search; (B, W) item indices (-1 = none) and log-prob scores. See
        :func:`constrained_beam_search`. Runs in eval mode (restores the previous mode), with every attention
        kernel but cuDNN's (`attention.attention_kernels`: 6,419 against 883-4,528 users/s on an H100)."""
        was_training = self.training
        self.eval()
        try:
            with autocast_ctx(self.device, self.config.bf16), attention_kernels():
                return constrained_beam_search(
                    self.t5, self.trie, self.vocab.offsets, input_ids.to(self.device), attention_mask.to(self.device),
                    beam_size or self.config.beam_size, use_cache=use_cache,
                )
        finally:
            self.train(was_training)

    @torch.no_grad()
    def recommend(
        self,
        histories: Sequence[Sequence[int]],
        user_ids: Sequence[int] | np.ndarray | None = None,
        k: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k ad_ids (B, k) int64 (-1 = none) and their scores (B, k) for raw ad_id histories."""
        hist = torch.from_numpy(self.history_matrix(histories))
        input_ids, mask = self.make_inputs(hist, None if user_ids is None else np.asarray(user_ids))
        items, scores = self.beam_search(input_ids, mask, k)
        items_np = items.cpu().numpy()
        ad = np.where(items_np >= 0, self.vocab.ad_ids[np.clip(items_np, 0, None)], -1)
        return ad.astype(np.int64), scores.float().cpu().numpy()

    # ---- persistence --------------------------------------------------------------------------------
    def to_checkpoint(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "vocab": self.vocab.to_dict(),
            "state_dict": {k: v.detach().cpu().clone() for k, v in self.t5.state_dict().items()},
        }

    @classmethod
    def from_checkpoint(cls, d: dict[str, Any]) -> GenerativeRecommender:
        if d.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(
                f"not a recommender checkpoint (format {d.get('format')!r}, expected {CHECKPOINT_FORMAT!r})"
            )
        model = cls(RecommenderConfig.from_dict(d["config"]), SIDVocab.from_dict(d["vocab"]))
        model.t5.load_state_dict(d["state_dict"])
        model.eval()
        return model
