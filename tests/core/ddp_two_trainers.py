"""Run under torchrun by tests/core/test_distributed.py: both training entry points in one process group
(one launch instead of two: each start imports torch and transformers, ~10 s on a loaded 2-core machine).

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/core/ddp_two_trainers.py DATA OUT
"""
import sys
from pathlib import Path

from unisid_pipeline import distributed
from unisid_pipeline.cli import train_recommender, train_unisid

if __name__ == "__main__":
    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    with distributed.session():
        assert train_unisid.main(["--config", str(data / "unisid.json"), "--ads", str(data / "ads.parquet"),
                                  "--labels", str(data / "labels.parquet"), "--out", str(out / "unisid")]) == 0
        assert train_recommender.main(["--config", str(data / "rec.json"), "--sids", str(data / "sids.parquet"),
                                       "--sequences", str(data / "seqs.parquet"), "--out", str(out / "rec")]) == 0
