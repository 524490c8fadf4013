"""Warehouse writes when the disk fills up: the previous version stays whole, the error says disk full and where."""
import errno
import os
import subprocess
import sys

import polars as pl
import pytest

from unisid_pipeline import files, warehouse
from unisid_pipeline.warehouse import DiskFullError


def test_object_write_hitting_enospc_midway_keeps_the_previous_object(tmp_path, monkeypatch):
    target = tmp_path / "objects" / "model.pkl"
    warehouse.write_object(target, {"version": 1})
    real_fdopen = os.fdopen

    class HalfThenFull:
        """A file whose disk fills up half-way through the write."""

        def __init__(self, fh):
            self.fh = fh

        def write(self, data):
            self.fh.write(data[: len(data) // 2])
            self.fh.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    monkeypatch.setattr(files.os, "fdopen", lambda fd, mode: HalfThenFull(real_fdopen(fd, mode)))
    with pytest.raises(DiskFullError) as err:
        warehouse.write_object(target, {"version": 2, "payload": "x" * 100_000})
    monkeypatch.undo()
    msg = str(err.value)
    assert err.value.errno == errno.ENOSPC
    assert f"disk full while writing an object to {target} (" in msg and "MB free there" in msg
    assert "No space left on device" in msg and "The previous version is intact" in msg
    assert warehouse.read_object(target) == {"version": 1}
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.pkl"]  # no half-written temp file left


FILLER = """
import os, resource, signal, sys
import polars as pl
from unisid_pipeline import warehouse
db = sys.argv[1]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the limit a write fails with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(db) + 100_000, resource.RLIM_INFINITY))
n = 2_000_000
try:
    warehouse.write_table(db, "t", pl.DataFrame({"i": range(n), "s": [str(i) * 3 for i in range(n)]}))
except warehouse.DiskFullError as exc:
    print(exc)
    sys.exit(3)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_table_write_running_out_of_room_keeps_the_previous_table(tmp_path):
    """A real DuckDB write that runs out of room (a file-size limit on the writing process stands in for a full
    disk, which needs no root): DiskFullError naming the file, and the old table intact afterwards."""
    db = tmp_path / "warehouse.duckdb"
    old = pl.DataFrame({"i": list(range(1000)), "s": ["old"] * 1000})
    warehouse.write_table(db, "t", old)
    proc = subprocess.run([sys.executable, "-c", FILLER, str(db)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert proc.stdout.startswith(f"[Errno {errno.ENOSPC}] disk full while writing table 't' to {db} (")
    assert "File too large" in proc.stdout and "The previous version is intact" in proc.stdout
    assert warehouse.read_table(db, "t").equals(old)
    warehouse.write_table(db, "t", old.with_columns(pl.lit("new").alias("s")))  # and the file still takes writes
    assert warehouse.read_table(db, "t")["s"].unique().to_list() == ["new"]


def test_is_no_space_recognises_os_and_duckdb_errors():
    assert warehouse.is_no_space(OSError(errno.ENOSPC, "No space left on device"))
    assert warehouse.is_no_space(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert warehouse.is_no_space(RuntimeError('IO Error: Could not write file "x": No space left on device'))
    assert not warehouse.is_no_space(OSError(errno.EACCES, "Permission denied"))


CACHE_FILLER = """
import os, resource, signal, sys
import duckdb
from test_summarizer import FakeSummarizer
from test_warehouse import big_ads
from unisid_pipeline import warehouse
from unisid_pipeline.llm import SummaryCache, summarize_ads
db = sys.argv[1]
cache = SummaryCache(duckdb.connect(db))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(db) + 600_000, resource.RLIM_INFINITY))
try:
    summarize_ads(big_ads(), FakeSummarizer(), cache, chunk_size=500)
except warehouse.DiskFullError as exc:
    print(exc)
    sys.exit(3)
"""


def big_ads():
    """3000 distinct ads with ~450-byte summaries (FakeSummarizer echoes the description)."""
    from test_summarizer import make_ads

    return make_ads(3000).with_columns(description=pl.format("ad {} ", pl.col("ad_id")) + "x" * 400)


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_summary_cache_running_out_of_room_keeps_committed_chunks(tmp_path):
    """Summaries written chunk by chunk into a cache file that runs out of room: DiskFullError naming the file,
    the chunks committed before it intact, and a later run (with room) completes from them."""
    import duckdb

    from test_summarizer import FakeSummarizer

    from unisid_pipeline.llm import SummaryCache, summarize_ads

    db = tmp_path / "cache.duckdb"
    SummaryCache(duckdb.connect(str(db))).con.execute("CHECKPOINT").close()
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {here!r})\n" + CACHE_FILLER,
                           str(db)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert proc.stdout.startswith(f"[Errno {errno.ENOSPC}] disk full while writing cache rows to {db} (")
    cache = SummaryCache(duckdb.connect(str(db)))
    committed = len(cache)
    assert committed > 0 and committed % 500 == 0  # the chunks committed before the disk filled, whole
    fake = FakeSummarizer()
    out = summarize_ads(big_ads(), fake, cache, chunk_size=500)
    assert fake.n_summarized == 3000 - committed and int(out["cached"].sum()) == committed


def test_training_checkpoint_hitting_enospc_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import torch

    from test_unisid import labels_of, make_ads, train_cfg
    from unisid_pipeline.unisid import train_unisid
    from unisid_pipeline.unisid import train as unisid_train

    ads = make_ads(per_leaf=2)
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if obj["step"] == 2:  # the disk fills up while the second checkpoint is written
            with open(f, "wb") as fh:
                fh.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(unisid_train.torch, "save", save)
    with pytest.raises(DiskFullError, match=r"disk full while writing a training checkpoint to .*unisid_train_latest\.pt"):
        train_unisid(train_cfg(max_steps=3, batch_size=4, checkpoint_every=1), ads, None, labels_of(ads), seed=0,
                     device="cpu", checkpoint_dir=tmp_path)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["unisid_train_latest.pt"]  # no temp file left
    assert torch.load(tmp_path / "unisid_train_latest.pt", weights_only=False)["step"] == 1  # the previous one, whole


def test_torch_stages_import_without_duckdb():
    """The tokenizers, the SID builder and the recommender need no duckdb (the GPU image has none)."""
    code = ("import sys; sys.modules['duckdb'] = None\n"
            "import unisid_pipeline.unisid, unisid_pipeline.recommender, unisid_pipeline.models.rq, unisid_pipeline.sid\n"
            "import unisid_pipeline.files\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
