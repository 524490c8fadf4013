"""Residual-quantization tokenizers: RQ-KMeans (OneRec) and RQ-VAE (TIGER), one residual skeleton.

`ResidualQuantizer` stacks `CodebookLevel`s: level l quantizes the residual left by levels < l,
and an item's code is the tuple of the L chosen indices; decoding sums the chosen codewords.
The two tokenizers are two settings of it:

- RQ-KMeans: codebooks are buffers fitted level by level with k-means on the residuals of the
  raw embeddings (`fit_rq_kmeans`); encoder and decoder are the identity.
- RQ-VAE: an MLP encoder maps the embedding to a small latent, the quantizer's codebooks are
  parameters trained with the straight-through estimator, and an MLP decoder reconstructs the
  embedding (`train_rq_vae`).

Both tokenizers expose `encode`, `last_level_distances` (the collision-resolution cost used by
`unisid_pipeline.sid`), `decode_embedding`, `to_checkpoint` / `from_checkpoint`, and pickle cleanly.
"""
from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
from torch import nn

from unisid_pipeline.models.codebook import (
    DEFAULT_BATCH_SIZE,
    INITS,
    CodebookLevel,
    balanced_assign,
    cluster_capacity,
    squared_distances,
    usage_and_perplexity,
)
from unisid_pipeline.seeding import cpu_determinism, resolve_device, seed_everything

logger = logging.getLogger(__name__)

Callback = Callable[[dict[str, Any]], None]
ENCODE_CHUNK_ROWS = 65536  # rows per encoding chunk (rounded up to a multiple of the config's batch_size)


# --------------------------------------------------------------------------- gradient trick


def straight_through(x: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """Straight-through estimator: the value of `quantized` (n, d), the gradient of `x` (n, d)."""
    return x + (quantized - x).detach()


# --------------------------------------------------------------------------- residual skeleton


class ResidualOutput(NamedTuple):
    codes: torch.Tensor  # (n, L) int64
    quantized: torch.Tensor  # (n, d) sum of the chosen codewords, straight-through w.r.t. the input
    residuals: torch.Tensor  # (L, n, d) input of each level
    codebook_loss: torch.Tensor  # scalar: sum over levels of mean_i ||sg(r_l,i) - e_l,i||^2
    commitment_loss: torch.Tensor  # scalar: sum over levels of mean_i ||r_l,i - sg(e_l,i)||^2


class ResidualQuantizer(nn.Module):
    """L codebook levels of K codewords of dimension d, applied to successive residuals."""

    def __init__(self, n_levels: int, codebook_size: int, dim: int, learnable: bool = False):
        super().__init__()
        self.n_levels = n_levels
        self.codebook_size = codebook_size
        self.dim = dim
        self.levels = nn.ModuleList(CodebookLevel(codebook_size, dim, learnable) for _ in range(n_levels))

    def forward(self, x: torch.Tensor) -> ResidualOutput:
        """Training pass on a batch x (n, d): codes, straight-through quantization and VQ losses.

        The residual passed on to level l+1 is r_l - sg(e_l), so each level's codebook loss only
        moves its own codewords.
        """
        residual = x
        codes, residuals = [], []
        quantized = torch.zeros_like(x)
        codebook_loss = x.new_zeros(())
        commitment_loss = x.new_zeros(())
        for level in self.levels:
            out = level.quantize(residual)
            residuals.append(residual)
            codes.append(out.codes)
            codebook_loss = codebook_loss + ((residual.detach() - out.quantized) ** 2).sum(1).mean()
            commitment_loss = commitment_loss + ((residual - out.quantized.detach()) ** 2).sum(1).mean()
            quantized = quantized + out.quantized
            residual = residual - out.quantized.detach()
        return ResidualOutput(
            torch.stack(codes, 1), straight_through(x, quantized), torch.stack(residuals), codebook_loss, commitment_loss
        )

    @torch.no_grad()
    def encode(
        self, x: torch.Tensor, batch_size: int = DEFAULT_BATCH_SIZE, capacity_factor: float | None = None
    ) -> torch.Tensor:
        """x (n, d) -> codes (n, L) int64, nearest codeword at each level.

        capacity_factor: None for nearest assignment; else each level uses `balanced_assign` over
        all n rows together with capacity ceil(factor * n / K) (so the result depends on which
        rows are encoded together; encode the whole catalogue in one call).
        """
        residual = x
        codes = []
        for level in self.levels:
            if capacity_factor is None:
                c = level.assign(residual, batch_size)
            else:
                capacity = cluster_capacity(x.shape[0], self.codebook_size, capacity_factor)
                c = balanced_assign(residual, level.codewords, capacity, batch_size)[0]
            codes.append(c)
            residual = residual - level.lookup(c)
        return torch.stack(codes, 1) if codes else torch.empty(x.shape[0], 0, dtype=torch.long, device=x.device)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (n, L') with L' <= L -> (n, d), the sum of the chosen codewords of the first L' levels."""
        if codes.shape[1] > self.n_levels:
            raise ValueError(f"codes have {codes.shape[1]} levels, the quantizer only {self.n_levels}")
        out = torch.zeros(codes.shape[0], self.dim, dtype=self.levels[0].codewords.dtype, device=codes.device)
        for l in range(codes.shape[1]):
            out += self.levels[l].lookup(codes[:, l])
        return out

    @torch.no_grad()
    def last_level_distances(
        self, x: torch.Tensor, codes: torch.Tensor | None = None, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> torch.Tensor:
        """x (n, d) -> (n, K) squared distances of the last-level residual to every last-level
        codeword. The residual is x minus the codewords of `codes[:, :L-1]` (default: `encode(x)`)."""
        if codes is None:
            codes = self.encode(x, batch_size)
        residual = x - self.decode(codes[:, : self.n_levels - 1])
        last = self.levels[-1].codewords.detach()
        return torch.cat(
            [squared_distances(residual[s : s + batch_size], last) for s in range(0, x.shape[0], batch_size)]
        )

    @torch.no_grad()
    def fit_kmeans(
        self,
        x: torch.Tensor,
        n_iter: int,
        generator: torch.Generator,
        init: str = "kmeans++",
        max_cluster_size_factor: float | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        tol: float = 0.0,
        init_sample_size: int = 0,
        on_level: Callback | None = None,
    ) -> list[dict[str, Any]]:
        """Residual k-means: fit level l by k-means on the residuals of levels < l. x: (n, d).

        Returns one row of statistics per level (also passed to `on_level`): level, n_iter,
        inertia (mean squared distance to the assigned codeword), relative_residual_norm
        (sum ||r_{l+1}||^2 / sum ||x||^2), usage, perplexity, seconds, inertia_curve.
        """
        capacity = None
        if max_cluster_size_factor is not None:
            capacity = cluster_capacity(x.shape[0], self.codebook_size, max_cluster_size_factor)
        total = float((x * x).sum()) or 1.0
        residual = x
        rows = []
        for l, level in enumerate(self.levels):
            t0 = time.perf_counter()
            result = level.init_kmeans(
                residual, n_iter, generator, init=init, capacity=capacity, batch_size=batch_size,
                tol=tol, init_sample_size=init_sample_size,
            )
            residual = residual - level.lookup(result.codes)
            usage, perplexity = usage_and_perplexity(torch.bincount(result.codes, minlength=self.codebook_size))
            row = {
                "level": l,
                "n_iter": result.n_iter,
                "inertia": float(result.sq_distances.mean()),
                "relative_residual_norm": float((residual * residual).sum()) / total,
                "usage": usage,
                "perplexity": perplexity,
                "seconds": time.perf_counter() - t0,
                "inertia_curve": result.inertia_curve,
            }
            logger.info(
                "k-means level %d: %d iters, inertia %.5f, usage %.3f, perplexity %.1f, %.1fs",
                l, row["n_iter"], row["inertia"], usage, perplexity, row["seconds"],
            )
            if on_level is not None:
                on_level(row)
            rows.append(row)
        return rows


# --------------------------------------------------------------------------- configs


def _check_common(n_levels: int, codebook_size: int, batch_size: int) -> None:
    if not isinstance(n_levels, int) or n_levels < 1:
        raise ValueError(f"n_levels must be an int >= 1, got {n_levels!r}")
    if not isinstance(codebook_size, int) or codebook_size < 2:
        raise ValueError(f"codebook_size must be an int >= 2, got {codebook_size!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")


@dataclass(frozen=True)
class RQKMeansConfig:
    """Residual k-means (OneRec's RQ-KMeans) on the raw item embeddings.

    init: "kmeans++" (default) or "random", run on `init_sample_size` random rows (0: all rows;
    k-means++ makes K passes over its input, so a sample keeps 1M rows affordable).
    balanced: cap every cluster at ceil(max_cluster_size_factor * n / K) rows, with a stable
    capacity-constrained assignment (deferred acceptance, see `codebook.balanced_assign`) in every
    Lloyd step and in `encode`. tol: stop a level's Lloyd iterations when at most this share of
    rows changed code. batch_size: rows per distance block. fit_sample_size: fit the codebooks on
    this many random rows (0: all rows); every row is then encoded with the fitted (frozen)
    codebooks, chunk by chunk, which is how a 1M-ad catalog fits in memory and minutes.
    """

    n_levels: int = 3
    """SID length (residual levels)"""
    codebook_size: int = 256
    """codes per level K"""
    n_iter: int = 50
    """most Lloyd iterations per level"""
    init: str = "kmeans++"
    """centroid initialisation: kmeans++ or random"""
    init_sample_size: int = 65536
    """rows the initialisation runs on (0 = all rows)"""
    balanced: bool = False
    """cap every cluster at ceil(max_cluster_size_factor * n / K) rows (capacity-constrained assignment)"""
    max_cluster_size_factor: float = 1.0
    """the cap of balanced clusters, as a multiple of n / K (>= 1)"""
    tol: float = 0.0
    """stop a level's iterations when at most this share of rows changed code"""
    batch_size: int = DEFAULT_BATCH_SIZE
    """rows per distance block (memory)"""
    fit_sample_size: int = 0
    """fit the codebooks on this many random rows, then encode every row (0 = all rows)"""

    def __post_init__(self) -> None:
        _check_common(self.n_levels, self.codebook_size, self.batch_size)
        if not isinstance(self.fit_sample_size, int) or self.fit_sample_size < 0:
            raise ValueError(f"fit_sample_size must be an int >= 0 (0 = fit on all rows), got {self.fit_sample_size!r}")
        if 0 < self.fit_sample_size < self.codebook_size:
            raise ValueError(f"fit_sample_size must be 0 or >= codebook_size ({self.codebook_size}), got {self.fit_sample_size}")
        if not isinstance(self.n_iter, int) or self.n_iter < 1:
            raise ValueError(f"n_iter must be an int >= 1, got {self.n_iter!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if not isinstance(self.init_sample_size, int) or self.init_sample_size < 0:
            raise ValueError(f"init_sample_size must be an int >= 0 (0 = all rows), got {self.init_sample_size!r}")
        if not self.max_cluster_size_factor >= 1.0:
            raise ValueError(
                f"max_cluster_size_factor must be >= 1.0 (clusters must hold all rows), got {self.max_cluster_size_factor!r}"
            )
        if not 0.0 <= self.tol < 1.0:
            raise ValueError(f"tol must be in [0, 1), got {self.tol!r}")


@dataclass(frozen=True)
class RQVAEConfig:
    """TIGER's RQ-VAE: MLP encoder -> latent -> residual quantizer -> MLP decoder.

    Defaults follow TIGER (3 levels x 256 codes, latent 32, encoder 512-256-128 with ReLU, beta
    0.25, k-means init). Optimizer: AdamW with lr 1e-3 by default, whose loss converges in tens of
    epochs (its codes keep becoming more semantic for hundreds: BENCHMARKS.md, "What was tried"); TIGER's
    own setting (Adagrad, lr 0.4, batch 1024, ~20k epochs) is `optimizer="adagrad", lr=0.4`, which
    diverged on MiniLM Beauty embeddings (loss 1.5e3 after 600 epochs, level-1 codes near chance).

    Loss per batch = recon + codebook + beta * commitment, each a mean over items of a squared
    norm summed over dimensions. kmeans_init: fit the codebooks by residual k-means
    (`kmeans_init_iters` Lloyd steps) on the latents of `kmeans_init_size` random items under the
    initial encoder; otherwise codewords start uniform in [-1/K, 1/K]. Dead codes: after every
    epoch but the last, codewords used <= dead_code_threshold times during that epoch are moved
    onto random current residuals of their level (if reinit_dead_codes).

    standardize_inputs: before the encoder, subtract each input dimension's mean and divide by its standard
    deviation over the training embeddings (kept with the tokenizer, floored at 1% of the mean standard
    deviation, so a near-constant dimension is not blown up); the decoder reconstructs the standardized input.
    On by default, with 600 epochs: the recipe of the reported Beauty figure (TIGER feeds its embeddings as they
    are). On L2-normalized MiniLM Beauty title embeddings (a large common component, small coordinates) it made
    the codes follow the interaction sequences more, and the TIGER recommenders trained on them gained +0.001
    R@10 over the plain input's (3 seeds; BENCHMARKS.md).
    """

    n_levels: int = 3
    """SID length (residual levels)"""
    codebook_size: int = 256
    """codes per level K"""
    latent_dim: int = 32
    """width of the quantized latent"""
    hidden_dims: tuple[int, ...] = (512, 256, 128)
    """encoder MLP widths (the decoder mirrors them)"""
    beta: float = 0.25
    """commitment loss weight"""
    optimizer: str = "adamw"
    """adamw (default) or adagrad (TIGER's; diverged on MiniLM Beauty embeddings)"""
    lr: float = 1e-3
    """learning rate"""
    weight_decay: float = 0.0
    """weight decay"""
    epochs: int = 600
    """training epochs (600: the reported figure; codes keep improving for hundreds)"""
    batch_size: int = 1024
    """items per step"""
    kmeans_init: bool = True
    """fit the codebooks by residual k-means on the initial encoder's latents (else uniform in [-1/K, 1/K])"""
    kmeans_init_size: int = 16384
    """random items the k-means initialisation uses"""
    kmeans_init_iters: int = 20
    """k-means iterations of the initialisation"""
    reinit_dead_codes: bool = True
    """after every epoch but the last, move dead codewords onto random current residuals of their level"""
    dead_code_threshold: int = 0
    """a codeword used at most this many times in an epoch counts as dead"""
    standardize_inputs: bool = True
    """standardize each input dimension before the encoder (the reported recipe)"""
    deterministic: bool = True
    """CPU only: train single-threaded so the same seed gives the same SIDs"""

    def __post_init__(self) -> None:
        _check_common(self.n_levels, self.codebook_size, self.batch_size)
        object.__setattr__(self, "hidden_dims", tuple(self.hidden_dims))
        if not isinstance(self.latent_dim, int) or self.latent_dim < 1:
            raise ValueError(f"latent_dim must be an int >= 1, got {self.latent_dim!r}")
        if any(not isinstance(h, int) or h < 1 for h in self.hidden_dims):
            raise ValueError(f"hidden_dims must be positive ints, got {self.hidden_dims!r}")
        if not self.beta >= 0:
            raise ValueError(f"beta must be >= 0, got {self.beta!r}")
        if self.optimizer not in ("adamw", "adagrad"):
            raise ValueError(f"optimizer must be 'adamw' or 'adagrad', got {self.optimizer!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be an int >= 1, got {self.epochs!r}")
        if not isinstance(self.kmeans_init_size, int) or self.kmeans_init_size < self.codebook_size:
            raise ValueError(
                f"kmeans_init_size must be an int >= codebook_size ({self.codebook_size}), got {self.kmeans_init_size!r}"
            )
        if not isinstance(self.kmeans_init_iters, int) or self.kmeans_init_iters < 1:
            raise ValueError(f"kmeans_init_iters must be an int >= 1, got {self.kmeans_init_iters!r}")
        if not isinstance(self.dead_code_threshold, int) or self.dead_code_threshold < 0:
            raise ValueError(f"dead_code_threshold must be an int >= 0, got {self.dead_code_threshold!r}")


# --------------------------------------------------------------------------- tokenizers


def _tensor_view(a: np.ndarray) -> torch.Tensor:
    """torch.from_numpy(a) without torch's warning about read-only arrays (polars hands them out): the
    tokenizers only read their inputs, so a view is safe, and it saves a copy of the embedding matrix."""
    arr = np.asarray(a)
    if arr.flags.writeable:
        return torch.from_numpy(arr)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(arr)


def _as_matrix(embeddings: np.ndarray | torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """np.ndarray / Tensor (n, d) -> float32 CPU-or-same-device Tensor, checked (never written to)."""
    x = embeddings if isinstance(embeddings, torch.Tensor) else _tensor_view(embeddings)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array (n_items, d), got shape {tuple(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"embeddings have {x.shape[1]} columns, the tokenizer was fitted on {dim}")
    x = x.detach().to(torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("embeddings contain NaN or inf values; clean them before tokenizing")
    return x


def _as_codes(codes: np.ndarray | torch.Tensor) -> torch.Tensor:
    c = codes if isinstance(codes, torch.Tensor) else _tensor_view(codes)
    if c.ndim != 2:
        raise ValueError(f"codes must be a 2-D array (n_items, L), got shape {tuple(c.shape)}")
    return c.to(torch.long)


class _RQTokenizer(nn.Module):
    """Shared interface: latent = `_to_latent(x)`, codes = quantizer.encode(latent),
    embedding = `_from_latent(quantizer.decode(codes))`. Subclasses set `kind` and `config_cls`."""

    kind: str = ""
    config_cls: type = object

    def __init__(self, config: Any, input_dim: int, latent_dim: int, learnable: bool):
        super().__init__()
        if not isinstance(input_dim, int) or input_dim < 1:
            raise ValueError(f"input_dim must be an int >= 1, got {input_dim!r}")
        self.config = config
        self.input_dim = input_dim
        self.rq = ResidualQuantizer(config.n_levels, config.codebook_size, latent_dim, learnable)

    @property
    def device(self) -> torch.device:
        return self.rq.levels[0].codewords.device

    def _to_latent(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _from_latent(self, z: torch.Tensor) -> torch.Tensor:
        return z

    @torch.no_grad()
    def _latent(self, embeddings: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = _as_matrix(embeddings, self.input_dim).to(self.device)
        return torch.cat(
            [self._to_latent(x[s : s + self.config.batch_size]) for s in range(0, x.shape[0], self.config.batch_size)]
        ) if x.shape[0] else self._to_latent(x)

    def _chunk_rows(self, chunk_rows: int) -> int:
        """`chunk_rows` rounded up to a multiple of config.batch_size: every chunk then splits into the
        same row blocks as one whole-catalog call, so chunked results equal unchunked ones bit for bit."""
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        b = self.config.batch_size
        return -(-chunk_rows // b) * b

    def _row_chunks(self, n: int, chunk_rows: int) -> list[tuple[int, int]]:
        step = self._chunk_rows(chunk_rows)
        return [(s, min(s + step, n)) for s in range(0, n, step)]

    @torch.no_grad()
    def encode(self, embeddings: np.ndarray | torch.Tensor, chunk_rows: int = ENCODE_CHUNK_ROWS) -> np.ndarray:
        """embeddings (n, d) float -> codes (n, L) int64 in [0, K).

        Nearest-codeword encoding is row by row, so it runs `chunk_rows` rows at a time (memory:
        the output plus one chunk's residuals, whatever n). Balanced RQ-KMeans encoding depends on
        all rows together (cluster capacities) and runs in one call over the whole input.
        """
        was_training = self.training
        self.eval()
        try:
            kwargs = self._encode_kwargs(len(embeddings))
            if kwargs.get("capacity_factor") is not None:
                z = self._latent(embeddings)
                return self.rq.encode(z, **kwargs).cpu().numpy().astype(np.int64)
            n = len(embeddings)
            out = np.empty((n, self.rq.n_levels), dtype=np.int64)
            for s, e in self._row_chunks(n, chunk_rows):
                out[s:e] = self.rq.encode(self._latent(embeddings[s:e]), **kwargs).cpu().numpy()
            return out
        finally:
            self.train(was_training)

    def _encode_kwargs(self, n: int) -> dict[str, Any]:
        return {"batch_size": self.config.batch_size}

    @torch.no_grad()
    def last_level_distances(
        self, embeddings: np.ndarray | torch.Tensor, codes: np.ndarray | None = None,
        chunk_rows: int = ENCODE_CHUNK_ROWS,
    ) -> np.ndarray:
        """embeddings (n, d) -> (n, K) float32 squared distances of each item's last-level residual
        (given its first L-1 codes: `codes` (n, L) when given, else those of `encode`) to every
        last-level codeword; lower is better. Argmin per row equals the last code of `encode` (for
        unbalanced encoding). Pass `codes` for a subset of rows of a balanced encoding, whose codes
        depend on the whole catalog."""
        was_training = self.training
        self.eval()
        try:
            if codes is None:
                codes = self.encode(embeddings, chunk_rows)
            codes = np.asarray(codes, dtype=np.int64)
            n = len(embeddings)
            if codes.shape != (n, self.rq.n_levels):
                raise ValueError(f"codes must have shape ({n}, {self.rq.n_levels}), got {codes.shape}")
            out = np.empty((n, self.rq.codebook_size), dtype=np.float32)
            for s, e in self._row_chunks(n, chunk_rows):
                z = self._latent(embeddings[s:e])
                c = torch.from_numpy(codes[s:e]).to(z.device)
                out[s:e] = self.rq.last_level_distances(z, c, self.config.batch_size).cpu().numpy()
            return out
        finally:
            self.train(was_training)

    @torch.no_grad()
    def decode_embedding(self, codes: np.ndarray | torch.Tensor) -> np.ndarray:
        """codes (n, L) -> reconstructed embeddings (n, d) float32."""
        was_training = self.training
        self.eval()
        try:
            c = _as_codes(codes).to(self.device)
            if c.shape[1] != self.rq.n_levels:
                raise ValueError(f"codes must have {self.rq.n_levels} levels, got {c.shape[1]}")
            if c.numel() and (int(c.min()) < 0 or int(c.max()) >= self.rq.codebook_size):
                raise ValueError(f"codes must lie in [0, {self.rq.codebook_size})")
            return self._from_latent(self.rq.decode(c)).cpu().numpy().astype(np.float32)
        finally:
            self.train(was_training)

    def to_checkpoint(self) -> dict[str, Any]:
        """Config + weights, enough to rebuild with `from_checkpoint` (tensors moved to the CPU)."""
        return {
            "kind": self.kind,
            "config": dataclasses.asdict(self.config),
            "input_dim": self.input_dim,
            "state_dict": {k: v.detach().cpu().clone() for k, v in self.state_dict().items()},
        }

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any]) -> "_RQTokenizer":
        """Rebuild on the CPU from `to_checkpoint()` output; move with `.to(device)`."""
        if checkpoint.get("kind") != cls.kind:
            raise ValueError(f"checkpoint kind is {checkpoint.get('kind')!r}, expected {cls.kind!r}")
        model = cls(cls.config_cls(**checkpoint["config"]), int(checkpoint["input_dim"]))
        model.load_state_dict(checkpoint["state_dict"])
        return model


class RQKMeansTokenizer(_RQTokenizer):
    """Fitted residual k-means: codebooks are buffers over the raw embedding space."""

    kind = "rq_kmeans"
    config_cls = RQKMeansConfig

    def __init__(self, config: RQKMeansConfig, input_dim: int):
        super().__init__(config, input_dim, latent_dim=input_dim, learnable=False)

    def _encode_kwargs(self, n: int) -> dict[str, Any]:
        factor = self.config.max_cluster_size_factor if self.config.balanced else None
        return {"batch_size": self.config.batch_size, "capacity_factor": factor}


def _mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RQVAEOutput(NamedTuple):
    loss: torch.Tensor
    recon_loss: torch.Tensor
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor
    codes: torch.Tensor  # (n, L)
    residuals: torch.Tensor  # (L, n, latent_dim)
    reconstruction: torch.Tensor  # (n, d)


class RQVAETokenizer(_RQTokenizer):
    """TIGER's RQ-VAE: encoder MLP -> residual quantizer (learnable codebooks) -> decoder MLP."""

    kind = "rq_vae"
    config_cls = RQVAEConfig

    def __init__(self, config: RQVAEConfig, input_dim: int):
        super().__init__(config, input_dim, latent_dim=config.latent_dim, learnable=True)
        self.encoder = _mlp([input_dim, *config.hidden_dims, config.latent_dim])
        self.decoder = _mlp([config.latent_dim, *reversed(config.hidden_dims), input_dim])
        if config.standardize_inputs:  # set by `fit_standardization`; saved in the state dict
            self.register_buffer("input_mean", torch.zeros(input_dim))
            self.register_buffer("input_std", torch.ones(input_dim))

    @torch.no_grad()
    def fit_standardization(self, x: torch.Tensor) -> None:
        """Set the per-dimension mean and (floored) standard deviation from the training embeddings x (n, d)."""
        if not self.config.standardize_inputs:
            raise ValueError("fit_standardization needs RQVAEConfig(standardize_inputs=True)")
        x64 = x.to(torch.float64)
        mean, std = x64.mean(0), x64.std(0, unbiased=False)
        std = std.clamp_min(0.01 * float(std.mean()) or 1.0)  # all-constant input: leave the scale alone
        self.input_mean.copy_(mean.to(self.input_mean))
        self.input_std.copy_(std.to(self.input_std))

    def _standardize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.input_mean) / self.input_std if self.config.standardize_inputs else x

    def _unstandardize(self, xs: torch.Tensor) -> torch.Tensor:
        return xs * self.input_std + self.input_mean if self.config.standardize_inputs else xs

    def _to_latent(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self._standardize(x))

    def _from_latent(self, z: torch.Tensor) -> torch.Tensor:
        return self._unstandardize(self.decoder(z))

    def forward(self, x: torch.Tensor) -> RQVAEOutput:
        """Training pass on x (n, d): loss = recon + codebook + beta * commitment (recon in standardized
        units with standardize_inputs; `reconstruction` is in input units)."""
        xs = self._standardize(x)
        q = self.rq(self.encoder(xs))
        xs_hat = self.decoder(q.quantized)
        recon = ((xs_hat - xs) ** 2).sum(1).mean()
        loss = recon + q.codebook_loss + self.config.beta * q.commitment_loss
        return RQVAEOutput(loss, recon, q.codebook_loss, q.commitment_loss, q.codes, q.residuals,
                           self._unstandardize(xs_hat))


# --------------------------------------------------------------------------- fitting


def fit_rq_kmeans(
    config: RQKMeansConfig,
    embeddings: np.ndarray | torch.Tensor,
    seed: int,
    device: str,
    on_level: Callback | None = None,
) -> tuple[RQKMeansTokenizer, dict[str, list]]:
    """Fit residual k-means on embeddings (n, d) float32 (n >= codebook_size), or on a random
    sample of `config.fit_sample_size` of them.

    Returns the tokenizer (on `device`) and a history: a dict of per-level lists with the keys of
    the rows passed to `on_level` (level, n_iter, inertia, relative_residual_norm, usage,
    perplexity, seconds, inertia_curve).
    """
    generator = seed_everything(seed)
    dev = resolve_device(device)
    x = _as_matrix(embeddings)
    if x.shape[0] < config.codebook_size:
        raise ValueError(f"need at least codebook_size={config.codebook_size} items, got {x.shape[0]}: lower codebook_size")
    tokenizer = RQKMeansTokenizer(config, x.shape[1]).to(dev)
    if 0 < config.fit_sample_size < x.shape[0]:
        # a random sample (in row order) fits the codebooks; encode() then assigns every row
        idx = torch.randperm(x.shape[0], generator=generator)[: config.fit_sample_size].sort().values
        x = x[idx]
        logger.info("rq-kmeans: fitting on a random sample of %d of %d rows", len(idx), len(embeddings))
    rows = tokenizer.rq.fit_kmeans(
        x.to(dev), config.n_iter, generator, init=config.init,
        max_cluster_size_factor=config.max_cluster_size_factor if config.balanced else None,
        batch_size=config.batch_size, tol=config.tol, init_sample_size=config.init_sample_size, on_level=on_level,
    )
    return tokenizer, _rows_to_history(rows)


def _rows_to_history(rows: list[dict[str, Any]]) -> dict[str, list]:
    history: dict[str, list] = {}
    for row in rows:
        for key, value in row.items():
            history.setdefault(key, []).append(value)
    return history


def _build_optimizer(config: RQVAEConfig, params: Any) -> torch.optim.Optimizer:
    if config.optimizer == "adagrad":
        return torch.optim.Adagrad(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def _reset_optimizer_rows(optimizer: torch.optim.Optimizer, param: torch.Tensor, rows: torch.Tensor) -> None:
    """Zero the optimizer's per-element state (moments, accumulators) of `rows` of `param`."""
    for value in optimizer.state.get(param, {}).values():
        if isinstance(value, torch.Tensor) and value.shape == param.shape:
            value[rows] = 0


def train_rq_vae(
    config: RQVAEConfig,
    embeddings: np.ndarray | torch.Tensor,
    seed: int,
    device: str,
    on_epoch: Callback | None = None,
) -> tuple[RQVAETokenizer, dict[str, list]]:
    """Train an RQ-VAE on embeddings (n, d) float32 (n >= codebook_size); see `_train_rq_vae`.

    With config.deterministic on the CPU, training runs single-threaded (`seeding.cpu_determinism`).
    """
    with cpu_determinism(resolve_device(device), enabled=config.deterministic):
        return _train_rq_vae(config, embeddings, seed, device, on_epoch)


def _train_rq_vae(
    config: RQVAEConfig,
    embeddings: np.ndarray | torch.Tensor,
    seed: int,
    device: str,
    on_epoch: Callback | None = None,
) -> tuple[RQVAETokenizer, dict[str, list]]:
    """Train an RQ-VAE on embeddings (n, d) float32 (n >= codebook_size).

    After every epoch a row of scalars is passed to `on_epoch` and appended to the history (a dict
    of per-epoch lists): epoch, seconds, loss, recon_loss, codebook_loss, commitment_loss (means
    over batches), and per level l: usage_level_l (share of codes used during the epoch),
    perplexity_level_l, dead_codes_reinit_level_l. Returns the tokenizer (on `device`, eval mode).
    """
    generator = seed_everything(seed)
    dev = resolve_device(device)
    x = _as_matrix(embeddings)
    n = x.shape[0]
    if n < config.codebook_size:
        raise ValueError(f"need at least codebook_size={config.codebook_size} items, got {n}: lower codebook_size")
    if config.batch_size > n:
        raise ValueError(f"RQVAEConfig.batch_size={config.batch_size} is larger than the data ({n} items): "
                         f"set batch_size to at most {n}")
    model = RQVAETokenizer(config, x.shape[1])  # built on the CPU: same initial weights on every device
    if config.standardize_inputs:
        model.fit_standardization(x)
    K, L = config.codebook_size, config.n_levels
    if not config.kmeans_init:
        with torch.no_grad():
            for level in model.rq.levels:
                level.set_codewords(torch.rand(K, config.latent_dim, generator=generator) * (2.0 / K) - 1.0 / K)
    model.to(dev)
    x = x.to(dev)

    def sample_latents(size: int) -> torch.Tensor:
        idx = torch.randperm(n, generator=generator)[: min(n, size)].to(dev)
        return model._to_latent(x[idx])

    if config.kmeans_init:
        with torch.no_grad():
            model.rq.fit_kmeans(
                sample_latents(config.kmeans_init_size), config.kmeans_init_iters, generator, init="kmeans++",
                batch_size=DEFAULT_BATCH_SIZE,
            )
    optimizer = _build_optimizer(config, model.parameters())
    history: dict[str, list] = {}
    for epoch in range(config.epochs):
        t0 = time.perf_counter()
        model.train()
        counts = torch.zeros(L, K, dtype=torch.long, device=dev)
        sums = {"loss": 0.0, "recon_loss": 0.0, "codebook_loss": 0.0, "commitment_loss": 0.0}
        n_batches = 0
        perm = torch.randperm(n, generator=generator).to(dev)
        for start in range(0, n, config.batch_size):
            out = model(x[perm[start : start + config.batch_size]])
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            for l in range(L):
                counts[l] += torch.bincount(out.codes[:, l], minlength=K)
            for key in sums:
                sums[key] += float(getattr(out, key).detach())
            n_batches += 1
        row: dict[str, Any] = {"epoch": epoch}
        row.update({key: value / n_batches for key, value in sums.items()})
        dead_counts = [0] * L
        if config.reinit_dead_codes and epoch < config.epochs - 1:
            with torch.no_grad():
                residuals = model.rq(sample_latents(max(config.batch_size, 4 * K))).residuals
                for l, level in enumerate(model.rq.levels):
                    revived = level.reinit_dead(residuals[l], counts[l] <= config.dead_code_threshold, generator)
                    if revived.numel():
                        _reset_optimizer_rows(optimizer, level.codewords, revived)
                    dead_counts[l] = int(revived.numel())
        for l in range(L):
            usage, perplexity = usage_and_perplexity(counts[l].cpu())
            row[f"usage_level_{l}"] = usage
            row[f"perplexity_level_{l}"] = perplexity
            row[f"dead_codes_reinit_level_{l}"] = dead_counts[l]
        row["seconds"] = time.perf_counter() - t0
        logger.info(
            "rq-vae epoch %d: loss %.5f recon %.5f usage %s (%.1fs)", epoch, row["loss"], row["recon_loss"],
            [round(row[f"usage_level_{l}"], 3) for l in range(L)], row["seconds"],
        )
        for key, value in row.items():
            history.setdefault(key, []).append(value)
        if on_epoch is not None:
            on_epoch(row)
    model.eval()
    return model, history


__all__ = [
    "RQKMeansConfig",
    "RQKMeansTokenizer",
    "RQVAEConfig",
    "RQVAEOutput",
    "RQVAETokenizer",
    "ResidualOutput",
    "ResidualQuantizer",
    "fit_rq_kmeans",
    "straight_through",
    "train_rq_vae",
]
