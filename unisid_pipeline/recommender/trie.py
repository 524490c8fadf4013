"""Prefix trie over the valid SIDs, stored as dense per-level tables for vectorised beam search.

Nodes of level l are the distinct SID prefixes of length l (level 0 has the single root, node 0).
For each level l:

- ``allowed[l]``: bool (n_nodes[l], level_sizes[l]); allowed[l][node, c] is True when prefix
  ``node`` followed by code c is a prefix of at least one valid SID.
- ``child[l]``: int64 (n_nodes[l], level_sizes[l]); the node id at level l + 1 reached by code c,
  or, at the last level, the item index (row of the SID table); -1 where not allowed.

Memory is sum_l n_nodes[l] * level_sizes[l] (bool + int64): ~40 MB for 12k items × 256 codes. For
catalogs of millions of items with very wide levels a sparse (CSR + searchsorted) layout would be needed.
"""
from __future__ import annotations

import numpy as np
import torch


class SIDTrie:
    """Args: codes (n_items, L') int64 level-local codes (collision-free); level_sizes: codes per level."""

    def __init__(self, codes: np.ndarray, level_sizes: tuple[int, ...]) -> None:
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[1] != len(level_sizes):
            raise ValueError(f"codes must have shape (n_items, {len(level_sizes)}), got {codes.shape}")
        if codes.size and (codes.min() < 0 or (codes >= np.asarray(level_sizes)[None, :]).any()):
            raise ValueError("every code must lie in [0, level_sizes[level])")
        if np.unique(codes, axis=0).shape[0] != codes.shape[0]:
            raise ValueError("SIDs must be unique (one item per SID) to build the trie; resolve collisions first")
        self.level_sizes = tuple(int(s) for s in level_sizes)
        self.n_levels = len(self.level_sizes)
        self.n_items = int(codes.shape[0])
        n = codes.shape[0]
        node_of_item = np.zeros(n, dtype=np.int64)  # node id of each item's prefix at the current level
        n_nodes_here = 1
        allowed: list[torch.Tensor] = []
        child: list[torch.Tensor] = []
        n_nodes: list[int] = []
        for level in range(self.n_levels):
            if level + 1 < self.n_levels:
                _, nxt = np.unique(codes[:, : level + 1], axis=0, return_inverse=True)
                nxt = nxt.reshape(-1).astype(np.int64)
            else:
                nxt = np.arange(n, dtype=np.int64)  # leaves are items
            table = np.full((n_nodes_here, self.level_sizes[level]), -1, dtype=np.int64)
            table[node_of_item, codes[:, level]] = nxt
            child.append(torch.from_numpy(table))
            allowed.append(torch.from_numpy(table >= 0))
            n_nodes.append(n_nodes_here)
            node_of_item = nxt
            n_nodes_here = int(nxt.max()) + 1 if n else 0
        self.allowed = allowed
        self.child = child
        self.n_nodes = tuple(n_nodes)

    def to(self, device: torch.device | str) -> SIDTrie:
        """Move the tables to ``device`` in place; returns self."""
        self.allowed = [t.to(device) for t in self.allowed]
        self.child = [t.to(device) for t in self.child]
        return self

    @property
    def device(self) -> torch.device:
        return self.child[0].device

    def lookup(self, codes: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Item index of each code tuple (n, L'), -1 for any tuple that is not a valid SID. (n,) int64."""
        c = torch.as_tensor(np.asarray(codes) if not isinstance(codes, torch.Tensor) else codes).long()
        c = c.to(self.device)
        if c.ndim != 2 or c.shape[1] != self.n_levels:
            raise ValueError(f"codes must have shape (n, {self.n_levels}), got {tuple(c.shape)}")
        node = torch.zeros(c.shape[0], dtype=torch.long, device=c.device)
        for level in range(self.n_levels):
            size = self.level_sizes[level]
            ok = (node >= 0) & (c[:, level] >= 0) & (c[:, level] < size)
            nxt = self.child[level][node.clamp(min=0), c[:, level].clamp(0, size - 1)]
            node = torch.where(ok, nxt, torch.full_like(node, -1))
        return node
