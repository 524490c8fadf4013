"""Batch plans for the recommender's training epochs: plain random batches, or length-grouped ones.

Training histories are short on average (Amazon Beauty: 6.7 items of at most 20 over all 131k
prefixes), but a random batch almost always holds one 20-item history, so every row is padded to
20 items (81 encoder tokens). Grouping rows of similar length into a batch cuts the padding: each
pool of ``pool_batches`` consecutive batches of the epoch's random permutation is sorted by length
and cut into batches, and the batch order is shuffled, so every epoch still visits every example
once, in random batches of random lengths.
"""
from __future__ import annotations

import torch


def epoch_batches(
    lengths: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    pool_batches: int = 1,
    drop_last: bool = False,
) -> list[torch.Tensor]:
    """Row indices of each batch of one epoch, in the order to train them.

    Args:
        lengths: (N,) int64 history length of every example (CPU).
        batch_size: rows per batch (the last one may be smaller unless ``drop_last``).
        generator: CPU generator; the plan is a pure function of its state, so every DDP rank that
            seeds it alike draws the same plan.
        pool_batches: 1 = plain random batches (one ``randperm``, cut in order); k > 1 = sort each
            pool of k * batch_size permuted rows by length (stable, longest first) before cutting,
            then shuffle the batch order.
        drop_last: drop the final partial batch (static shapes under torch.compile); kept when
            N < batch_size.

    Returns:
        list of (b,) int64 CPU tensors that together hold every kept row exactly once.
    """
    if batch_size < 1 or pool_batches < 1:
        raise ValueError(f"batch_size and pool_batches must be >= 1, got {batch_size} and {pool_batches}")
    n = int(lengths.shape[0])
    perm = torch.randperm(n, generator=generator)
    if drop_last and n >= batch_size:
        perm = perm[: n - n % batch_size]
    if pool_batches == 1:
        return list(perm.split(batch_size))
    batches: list[torch.Tensor] = []
    for pool in perm.split(batch_size * pool_batches):  # every pool but the last is a whole number of batches
        order = torch.sort(lengths[pool], descending=True, stable=True).indices
        batches.extend(pool[order].split(batch_size))
    shuffle = torch.randperm(len(batches), generator=generator)
    return [batches[i] for i in shuffle.tolist()]


def padded_length(longest: int, max_history: int, granularity: int) -> int:
    """History columns a batch is padded to: ``longest`` rounded up to a multiple of ``granularity``
    (at least 1, at most ``max_history``). Under torch.compile each distinct value is one compiled
    shape, so granularity = max_history means one shape (no trimming)."""
    if granularity < 1:
        raise ValueError(f"granularity must be >= 1, got {granularity}")
    longest = max(int(longest), 1)
    return min(max_history, -(-longest // granularity) * granularity)
