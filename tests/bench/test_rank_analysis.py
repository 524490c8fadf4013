"""bench/rank_analysis.py's prefix statistics: what the Beauty rank analysis in BENCHMARKS.md rests on."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from unisid_pipeline.metrics import ranking_metrics

_PATH = Path(__file__).resolve().parents[2] / "bench" / "rank_analysis.py"
_spec = importlib.util.spec_from_file_location("rank_analysis", _PATH)
rank_analysis = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rank_analysis)

CODES = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0]])  # item i's SID


def test_prefix_ranks_by_hand():
    ranked = np.array([[3, 1, 0, -1], [2, 3, -1, -1], [3, 2, -1, -1]])  # -1: no item
    targets = np.array([0, 1, 3])
    ranks = rank_analysis.prefix_ranks(ranked, targets, CODES)
    # user 0 (target 000): 100, 001, 000 -> first l=1 match at 2, l=1..2 at 2, the item at 3
    # user 1 (target 001): 010, 100 -> l=1 at 1, nothing deeper; user 2 (target 100): 100 first
    assert ranks.tolist() == [[2, 2, 3], [1, 0, 0], [1, 1, 1]]
    table = rank_analysis.prefix_table(ranks, (1, 2))
    assert table["top-1"] == pytest.approx([2 / 3, 1 / 3, 1 / 3])
    assert table["top-2"] == pytest.approx([1.0, 2 / 3, 1 / 3])
    g2, g3 = 1 / np.log2(3), 1 / np.log2(4)
    assert table["NDCG@10"] == pytest.approx([(g2 + 2) / 3, (g2 + 1) / 3, (g3 + 1) / 3])


def test_last_level_is_the_item_metric():
    """With unique SIDs the full-length prefix is the item itself: its top-k and NDCG@10 are the item metrics."""
    rng = np.random.default_rng(0)
    codes = np.array([[a, b, c] for a in range(4) for b in range(4) for c in range(4)])
    ranked = np.stack([rng.permutation(len(codes))[:20] for _ in range(300)])
    ranked[rng.random(ranked.shape) < 0.1] = -1
    targets = rng.integers(0, len(codes), 300)
    table = rank_analysis.prefix_table(rank_analysis.prefix_ranks(ranked, targets, codes), (1, 5, 10))
    item = ranking_metrics(ranked, targets)
    assert table["top-1"][-1] == pytest.approx(item["recall@1"])
    assert table["top-10"][-1] == pytest.approx(item["recall@10"])
    assert table["NDCG@10"][-1] == pytest.approx(item["ndcg@10"])
    # shorter prefixes can only be found earlier
    assert all(a >= b for a, b in zip(table["NDCG@10"], table["NDCG@10"][1:]))
