"""One codebook level of a residual quantizer, and the small functions it is made of.

Shapes used throughout: n rows, d features, K codewords.

- distances: `squared_distances` (fast, one matmul) beside `squared_distances_reference` (loops);
- assignment: `assign_nearest` (batched argmin, so 1M x 384 never needs an (n, K) matrix at once)
  and `balanced_assign` (capacity-capped assignment), each with a loop reference;
- initialisers: `kmeans_plus_plus_init`, `random_init`;
- `kmeans`: Lloyd iterations with either assignment;
- `CodebookLevel`: K codewords (a buffer for k-means, a parameter for RQ-VAE) with `quantize`,
  `assign`, `init_kmeans` and `reinit_dead`.

All random choices draw from an explicit CPU `torch.Generator`, so the same seed picks the same
rows on every device.
"""
from __future__ import annotations

import heapq
import logging
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 65536
INITS = ("kmeans++", "random")


# --------------------------------------------------------------------------- distances


def squared_distances(x: torch.Tensor, codewords: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances, fast path.

    x: (n, d), codewords: (K, d) -> (n, K) with out[i, k] = ||x_i - c_k||^2, computed as
    ||x||^2 - 2 x.c + ||c||^2 in one matmul and clamped at 0 (the expansion can dip below 0
    by rounding).
    """
    x2 = (x * x).sum(dim=1, keepdim=True)
    c2 = (codewords * codewords).sum(dim=1)
    return torch.addmm(x2 + c2, x, codewords.T, alpha=-2.0).clamp_min_(0.0)


def squared_distances_reference(x: torch.Tensor, codewords: torch.Tensor) -> torch.Tensor:
    """Slow, obviously-correct reference of `squared_distances`: (n, d), (K, d) -> (n, K)."""
    out = torch.empty(x.shape[0], codewords.shape[0], dtype=x.dtype)
    for i in range(x.shape[0]):
        for k in range(codewords.shape[0]):
            diff = x[i] - codewords[k]
            out[i, k] = (diff * diff).sum()
    return out


# --------------------------------------------------------------------------- assignment


def assign_nearest(
    x: torch.Tensor, codewords: torch.Tensor, batch_size: int = DEFAULT_BATCH_SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest codeword per row, in row blocks of `batch_size` (memory O(batch_size * K)).

    x: (n, d), codewords: (K, d) -> (codes (n,) int64, squared distance to that codeword (n,)).
    Ties go to the lowest code index.
    """
    codes = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    dists = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    for start in range(0, x.shape[0], batch_size):
        block = squared_distances(x[start : start + batch_size], codewords)
        dists[start : start + batch_size], codes[start : start + batch_size] = block.min(dim=1)
    return codes, dists


def assign_nearest_reference(x: torch.Tensor, codewords: torch.Tensor) -> torch.Tensor:
    """Slow reference of `assign_nearest`: (n, d), (K, d) -> codes (n,), first minimum wins."""
    codes = []
    for i in range(x.shape[0]):
        best_k, best_d = 0, math.inf
        for k in range(codewords.shape[0]):
            dist = float(((x[i] - codewords[k]) ** 2).sum())
            if dist < best_d:
                best_k, best_d = k, dist
        codes.append(best_k)
    return torch.tensor(codes, dtype=torch.long)


def cluster_capacity(n: int, codebook_size: int, max_cluster_size_factor: float) -> int:
    """Largest cluster size allowed by balanced k-means: ceil(factor * n / K), at least 1."""
    return max(1, math.ceil(max_cluster_size_factor * n / codebook_size - 1e-9))


def balanced_assign(
    x: torch.Tensor, codewords: torch.Tensor, capacity: int, batch_size: int = DEFAULT_BATCH_SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Assignment in which no codeword takes more than `capacity` rows.

    x: (n, d), codewords: (K, d) -> (codes (n,) int64, squared distance to the assigned codeword (n,)).

    Algorithm: item-proposing deferred acceptance (Gale-Shapley with capacities), run in
    parallel rounds. Every unassigned row proposes to its nearest codeword that has not yet been
    filled by `capacity` rows closer to it than this row; every codeword keeps its `capacity`
    closest proposers and rejects the rest, who propose again. The result is the unique stable
    assignment: no row prefers a codeword that would rather hold it than one of its current rows.
    So a row only leaves its nearest codeword when that codeword is full of closer rows. Ties in
    distance are broken by row index (approximately: a row exactly as far as a full codeword's
    farthest member is turned away). Requires capacity * K >= n.
    """
    n, n_codes = x.shape[0], codewords.shape[0]
    if capacity * n_codes < n:
        raise ValueError(
            f"capacity {capacity} x {n_codes} codewords < {n} rows: raise max_cluster_size_factor to >= 1.0"
        )
    dev = x.device
    codes = torch.full((n,), -1, dtype=torch.long, device=dev)
    held = torch.full((n,), math.inf, dtype=x.dtype, device=dev)
    threshold = torch.full((n_codes,), math.inf, dtype=x.dtype, device=dev)
    proposers = torch.arange(n, device=dev)
    rounds = 0
    while proposers.numel() > 0:
        rounds += 1
        for chunk in proposers.split(batch_size):
            block = squared_distances(x[chunk], codewords)
            block = block.masked_fill(block >= threshold, math.inf)
            held[chunk], codes[chunk] = block.min(dim=1)
        touched = torch.unique(codes[proposers])
        members = torch.isin(codes, touched).nonzero().squeeze(1)
        # sort members by (code, distance, row index): stable sorts, the least significant key first
        members = members[torch.sort(held[members], stable=True).indices]
        members = members[torch.sort(codes[members], stable=True).indices]
        member_codes = codes[members]
        counts = torch.bincount(member_codes, minlength=n_codes)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(members.numel(), device=dev) - starts[member_codes]
        last_kept = members[rank == capacity - 1]
        threshold[codes[last_kept]] = held[last_kept]
        proposers = members[rank >= capacity]
        codes[proposers] = -1
        held[proposers] = math.inf
    logger.debug("balanced_assign: %d rows, capacity %d, %d rounds", n, capacity, rounds)
    return codes, held


def balanced_assign_reference(x: torch.Tensor, codewords: torch.Tensor, capacity: int) -> torch.Tensor:
    """Slow reference of `balanced_assign`: sequential deferred acceptance, one proposal at a time.

    x: (n, d), codewords: (K, d) -> codes (n,). With distinct distances the stable assignment is
    unique, so the order of proposals does not matter and this must equal the parallel version.
    """
    dist = squared_distances_reference(x, codewords).tolist()
    n, n_codes = len(dist), codewords.shape[0]
    prefs = [sorted(range(n_codes), key=lambda k, row=row: (row[k], k)) for row in dist]
    next_choice = [0] * n
    held: list[list[tuple[float, int]]] = [[] for _ in range(n_codes)]  # max-heaps of (-dist, -row)
    free = list(range(n))
    while free:
        i = free.pop()
        k = prefs[i][next_choice[i]]
        next_choice[i] += 1
        heapq.heappush(held[k], (-dist[i][k], -i))
        if len(held[k]) > capacity:
            _, neg_row = heapq.heappop(held[k])
            free.append(-neg_row)
    codes = [0] * n
    for k, heap in enumerate(held):
        for _, neg_row in heap:
            codes[-neg_row] = k
    return torch.tensor(codes, dtype=torch.long)


# --------------------------------------------------------------------------- initialisers


def random_init(x: torch.Tensor, codebook_size: int, generator: torch.Generator) -> torch.Tensor:
    """K distinct rows of x chosen uniformly: x (n, d) -> (K, d). Needs n >= K."""
    idx = torch.randperm(x.shape[0], generator=generator)[:codebook_size]
    return x[idx.to(x.device)].clone()


def kmeans_plus_plus_init(
    x: torch.Tensor, codebook_size: int, generator: torch.Generator
) -> torch.Tensor:
    """k-means++ seeding: x (n, d) -> (K, d) rows of x, each drawn with probability proportional
    to its squared distance to the nearest centre chosen so far. Needs n >= K; when every
    remaining row coincides with a centre the next one is drawn uniformly.
    """
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=generator))
    chosen = [first]
    min_dist = squared_distances(x, x[first : first + 1]).squeeze(1)
    for _ in range(1, codebook_size):
        weights = min_dist.double().cpu()
        if float(weights.sum()) <= 0.0:
            weights = torch.ones(n, dtype=torch.float64)
        nxt = int(torch.multinomial(weights, 1, generator=generator))
        chosen.append(nxt)
        min_dist = torch.minimum(min_dist, squared_distances(x, x[nxt : nxt + 1]).squeeze(1))
    return x[torch.tensor(chosen, device=x.device)].clone()


# --------------------------------------------------------------------------- k-means


@dataclass
class KMeansResult:
    centroids: torch.Tensor  # (K, d)
    codes: torch.Tensor  # (n,) assignment under the final centroids
    sq_distances: torch.Tensor  # (n,) squared distance of each row to its assigned centroid
    inertia_curve: list[float]  # mean squared distance after each assignment step
    n_iter: int  # Lloyd iterations run


def kmeans(
    x: torch.Tensor,
    codebook_size: int,
    n_iter: int,
    generator: torch.Generator,
    init: str = "kmeans++",
    capacity: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    tol: float = 0.0,
    init_sample_size: int = 0,
) -> KMeansResult:
    """Lloyd's k-means on x (n, d) -> K centroids (K, d).

    init: "kmeans++" or "random", run on a random subset of `init_sample_size` rows (0: all rows).
    capacity: None for plain nearest assignment, else `balanced_assign` with that cap.
    Stops when the share of rows changing code is <= tol. An empty cluster is moved onto the row
    farthest from its centroid (deterministic). The returned codes are those of the final
    centroids, so they agree with a fresh assignment of x.
    """
    n = x.shape[0]
    if n < codebook_size:
        raise ValueError(
            f"k-means needs at least codebook_size={codebook_size} rows, got {n}: lower codebook_size"
        )
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    sample = x
    if 0 < init_sample_size < n:
        sample = x[torch.randperm(n, generator=generator)[: max(init_sample_size, codebook_size)].to(x.device)]
    init_fn = kmeans_plus_plus_init if init == "kmeans++" else random_init
    centroids = init_fn(sample, codebook_size, generator)

    def assign(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if capacity is None:
            return assign_nearest(x, c, batch_size)
        return balanced_assign(x, c, capacity, batch_size)

    inertia_curve: list[float] = []
    prev_codes: torch.Tensor | None = None
    it = 0
    for it in range(1, n_iter + 1):
        codes, dists = assign(centroids)
        inertia_curve.append(float(dists.mean()))
        changed = 1.0 if prev_codes is None else float((codes != prev_codes).float().mean())
        prev_codes = codes
        if changed <= tol:
            break
        sums = torch.zeros_like(centroids).index_add_(0, codes, x)
        counts = torch.bincount(codes, minlength=codebook_size)
        centroids = sums / counts.clamp_min(1).unsqueeze(1).to(x.dtype)
        empty = (counts == 0).nonzero().squeeze(1)
        if empty.numel() > 0:
            far = torch.topk(dists, empty.numel()).indices
            centroids[empty] = x[far]
    codes, dists = assign(centroids)
    return KMeansResult(centroids, codes, dists, inertia_curve, it)


# --------------------------------------------------------------------------- usage


def usage_and_perplexity(counts: torch.Tensor) -> tuple[float, float]:
    """counts (K,) of code uses -> (share of codes used at least once, perplexity = exp(entropy))."""
    counts = counts.double()
    total = float(counts.sum())
    if total == 0:
        return 0.0, 0.0
    p = counts[counts > 0] / total
    return float((counts > 0).double().mean()), float(torch.exp(-(p * p.log()).sum()))


# --------------------------------------------------------------------------- the level module


class LevelOutput(NamedTuple):
    codes: torch.Tensor  # (n,) int64
    quantized: torch.Tensor  # (n, d) chosen codewords (differentiable w.r.t. the codewords)
    distances: torch.Tensor  # (n, K) squared distances


class CodebookLevel(nn.Module):
    """K codewords of dimension d: a buffer (k-means, fitted in closed form) or a parameter
    (RQ-VAE, trained by the codebook loss)."""

    def __init__(self, codebook_size: int, dim: int, learnable: bool = False):
        super().__init__()
        self.codebook_size = codebook_size
        self.dim = dim
        self.learnable = learnable
        weights = torch.zeros(codebook_size, dim)
        if learnable:
            self.codewords = nn.Parameter(weights)
        else:
            self.register_buffer("codewords", weights)

    def quantize(self, x: torch.Tensor) -> LevelOutput:
        """x (n, d) -> (codes (n,), quantized (n, d), squared distances (n, K)); full (n, K) matrix."""
        dist = squared_distances(x, self.codewords.detach())
        codes = dist.argmin(dim=1)
        return LevelOutput(codes, self.codewords[codes], dist)

    def assign(self, x: torch.Tensor, batch_size: int = DEFAULT_BATCH_SIZE) -> torch.Tensor:
        """x (n, d) -> nearest codes (n,), computed in row blocks."""
        return assign_nearest(x, self.codewords.detach(), batch_size)[0]

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (n,) -> codewords (n, d)."""
        return self.codewords[codes]

    @torch.no_grad()
    def set_codewords(self, codewords: torch.Tensor) -> None:
        """Overwrite all K codewords in place: codewords (K, d)."""
        if tuple(codewords.shape) != (self.codebook_size, self.dim):
            raise ValueError(f"codewords must have shape {(self.codebook_size, self.dim)}, got {tuple(codewords.shape)}")
        self.codewords.copy_(codewords)

    @torch.no_grad()
    def init_kmeans(self, x: torch.Tensor, n_iter: int, generator: torch.Generator, **kmeans_kwargs) -> KMeansResult:
        """Fit the codewords by k-means on x (n, d) (see `kmeans` for the keyword arguments)."""
        result = kmeans(x, self.codebook_size, n_iter, generator, **kmeans_kwargs)
        self.set_codewords(result.centroids)
        return result

    @torch.no_grad()
    def reinit_dead(self, residuals: torch.Tensor, dead: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Move dead codewords onto random rows of `residuals`.

        residuals: (m, d) current inputs of this level; dead: (K,) bool, True for codewords to
        revive. Rows are drawn without replacement when m >= number of dead codes.
        Returns the indices (n_dead,) of the revived codewords.
        """
        idx = dead.nonzero().squeeze(1)
        if idx.numel() == 0:
            return idx
        m = residuals.shape[0]
        if m >= idx.numel():
            rows = torch.randperm(m, generator=generator)[: idx.numel()]
        else:
            rows = torch.randint(m, (idx.numel(),), generator=generator)
        self.codewords[idx.to(self.codewords.device)] = residuals[rows.to(residuals.device)].to(self.codewords.dtype)
        return idx
