"""Crash safety with real processes killed by SIGKILL (kill -9): nothing half-written is ever read as complete,
and the next run resumes and ends exactly where an uninterrupted run (same seed) ends.

Each test starts a child Python process that does the real work, waits until the child reports that
it reached the moment to kill, sends SIGKILL, then inspects what is on disk and resumes in this process.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest
import torch

from unisid_pipeline import warehouse
from unisid_pipeline.llm import SummaryCache, summarize_ads

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")


class Child:
    """A Python child process running `code` (with tests/core on sys.path), read line by line."""

    def __init__(self, code: str, timeout_s: float = 180.0):
        prelude = f"import sys; sys.path.insert(0, {str(HERE)!r})\n"
        self.proc = subprocess.Popen([sys.executable, "-c", prelude + textwrap.dedent(code)], cwd=REPO,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._watchdog = threading.Timer(timeout_s, self.proc.kill)  # never hang the suite
        self._watchdog.start()
        self.lines: list[str] = []

    def wait_for(self, marker: str) -> str:
        for line in self.proc.stdout:
            self.lines.append(line)
            if marker in line:
                return line
        self.proc.wait()
        pytest.fail(f"child exited (rc {self.proc.returncode}) before printing {marker!r}; "
                    f"stdout {self.lines[-5:]}, stderr {self.proc.stderr.read()[-3000:]}")

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        assert self.proc.wait(timeout=30) == -signal.SIGKILL
        self.reap()

    def reap(self) -> None:
        """After the child died of SIGKILL (ours or its own): stop the watchdog, close the pipes."""
        self._watchdog.cancel()
        self.proc.stdout.close()
        self.proc.stderr.close()


# ----------------------------------------------------------------------------- summaries


SUMMARY_CHILD = """
import time, duckdb
from test_summarizer import FakeSummarizer, make_ads
from unisid_pipeline.llm import SummaryCache, summarize_ads

class Stalls(FakeSummarizer):
    def summarize(self, rows):
        if len(self.calls) == {stall_at}:
            print("generating chunk", len(self.calls) + 1, flush=True)
            time.sleep(600)  # an LLM busy on a chunk; SIGKILL lands here
        return super().summarize(rows)

cache = SummaryCache(duckdb.connect({db!r}))
summarize_ads(make_ads(20), Stalls(), cache, chunk_size=4, progress=lambda p: print("done", p["done"], flush=True))
"""


def test_kill9_during_summary_generation_resumes_to_the_uninterrupted_result(tmp_path):
    from test_summarizer import FakeSummarizer, make_ads

    ads = make_ads(20)
    db = tmp_path / "cache.duckdb"
    child = Child(SUMMARY_CHILD.format(db=str(db), stall_at=3))
    reference = summarize_ads(ads, FakeSummarizer(), SummaryCache(duckdb.connect(":memory:")), chunk_size=4)
    child.wait_for("generating chunk 4")
    child.kill9()
    assert [ln.split()[1] for ln in child.lines if ln.startswith("done")] == ["4", "8", "12"]

    cache = SummaryCache(duckdb.connect(str(db)))
    assert len(cache) == 12  # the three committed chunks, nothing of the fourth
    resumed_fake = FakeSummarizer()
    resumed = summarize_ads(ads, resumed_fake, cache, chunk_size=4)
    assert resumed_fake.n_summarized == 8  # only what was missing
    assert int(resumed["cached"].sum()) == 12
    assert resumed.drop("cached").equals(reference.drop("cached"))
    assert len(cache) == len({*reference["content_hash"]})


CACHE_WRITER_CHILD = """
import duckdb
from test_summarizer import FakeSummarizer, make_ads
from unisid_pipeline.llm import SummaryCache, summarize_ads

cache = SummaryCache(duckdb.connect({db!r}))
summarize_ads(make_ads(1500), FakeSummarizer(), cache, chunk_size=7,  # many small commits; SIGKILL lands in one
              progress=lambda p: print("done", p["done"], flush=True))
"""


def test_kill9_during_summary_cache_commits_leaves_only_whole_chunks(tmp_path):
    from test_summarizer import FakeSummarizer, make_ads

    ads = make_ads(1500)
    db = tmp_path / "cache.duckdb"
    child = Child(CACHE_WRITER_CHILD.format(db=str(db)))
    reference = summarize_ads(ads, FakeSummarizer(), SummaryCache(duckdb.connect(":memory:")), chunk_size=7)
    child.wait_for("done 70")
    child.kill9()

    cache = SummaryCache(duckdb.connect(str(db)))
    stored = cache.to_frame()
    n_keys = len({*reference["content_hash"]})
    assert 70 <= stored.height < n_keys and stored.height % 7 == 0  # whole chunks only
    expected = dict(zip(reference["content_hash"], reference["summary"]))
    assert all(expected[h] == s for h, s in zip(stored["content_hash"], stored["summary"]))  # no torn row
    resumed = summarize_ads(ads, FakeSummarizer(), cache, chunk_size=7)
    assert resumed.drop("cached").equals(reference.drop("cached"))


# ----------------------------------------------------------------------------- UniSID training


UNISID_CHILD = """
import io, os, time, torch
torch.set_num_threads(1)
from test_unisid import labels_of, make_ads, train_cfg
from unisid_pipeline.unisid import train_unisid

real_save = torch.save

def save(obj, f, *args, **kwargs):
    if isinstance(obj, dict) and obj.get("step") == {tear_at}:  # SIGKILL in the middle of writing this checkpoint
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        with open(f, "wb") as fh:
            fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            fh.flush()
            os.fsync(fh.fileno())
        print("half-written", f, flush=True)
        time.sleep(600)
    return real_save(obj, f, *args, **kwargs)

torch.save = save

def on_step(rec):
    print("step", rec["step"], flush=True)

ads = make_ads()
train_unisid(train_cfg(max_steps=5, grad_accum_steps=2, batch_size=6, checkpoint_every=2), ads, None, labels_of(ads),
             seed=1, device="cpu", checkpoint_dir={ckpt!r}, on_step=on_step)
"""


def test_kill9_during_unisid_training_resumes_to_the_uninterrupted_result(tmp_path):
    """SIGKILL while the step-4 checkpoint is half on disk: the run restarts from the whole step-2 checkpoint."""
    from test_unisid import labels_of, make_ads, train_cfg

    from unisid_pipeline.unisid import train_unisid
    from unisid_pipeline.unisid.train import CHECKPOINT_NAME

    torch.set_num_threads(1)
    ads = make_ads()
    labels = labels_of(ads)
    cfg = train_cfg(max_steps=5, grad_accum_steps=2, batch_size=6, checkpoint_every=2)
    ckpt = tmp_path / "ckpt"
    child = Child(UNISID_CHILD.format(ckpt=str(ckpt), tear_at=4))
    ref, ref_hist = train_unisid(cfg, ads, None, labels, seed=1, device="cpu")  # while the child starts up
    torn = child.wait_for("half-written").split()[-1]
    child.kill9()
    assert [ln.split()[1] for ln in child.lines if ln.startswith("step")] == ["1", "2", "3"]
    assert Path(torn).exists() and Path(torn).name != CHECKPOINT_NAME  # the torn file is a temp file...
    assert torch.load(ckpt / CHECKPOINT_NAME, weights_only=False)["step"] == 2  # ...the checkpoint is still whole

    seen: list[int] = []
    res, res_hist = train_unisid(cfg, ads, None, labels, seed=1, device="cpu", checkpoint_dir=ckpt,
                                 on_step=lambda r: seen.append(r["step"]))
    assert seen == [3, 4, 5]
    for (k, v), (k2, v2) in zip(ref.state_dict().items(), res.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    assert [s["loss"] for s in res_hist["step"]] == [s["loss"] for s in ref_hist["step"]]
    assert np.array_equal(res.encode_codes(ads), ref.encode_codes(ads))
    assert not Path(torn).exists()  # the dead run's temp file was cleaned up
    assert sorted(p.name for p in ckpt.iterdir()) == [CHECKPOINT_NAME]


# ----------------------------------------------------------------------------- warehouse tables


WAREHOUSE_CHILD = """
import polars as pl
from unisid_pipeline import warehouse

def version(v):
    n = 200_000 + v  # each version has its own row count and content
    return pl.DataFrame({{"i": pl.arange(0, n, eager=True), "v": pl.repeat(v, n, eager=True),
                         "s": pl.arange(0, n, eager=True).cast(pl.Utf8) + "-" + str(v)}})

frames = [version(v) for v in (1, 2)]
print("start", flush=True)
k = 0
while True:  # replace the table over and over: SIGKILL lands inside one of the writes
    warehouse.write_table({db!r}, "t", frames[k % 2])
    k += 1
    print("wrote", k, flush=True)
"""


@pytest.mark.parametrize("after_writes", [0, 2])
def test_kill9_during_warehouse_write_leaves_the_old_table_or_the_new_never_half(tmp_path, after_writes):
    """SIGKILL 0.1 s into the first write (-> table absent or whole) or into a replace (-> old or new table, whole)."""
    db = tmp_path / "warehouse.duckdb"
    child = Child(WAREHOUSE_CHILD.format(db=str(db)))
    child.wait_for(f"wrote {after_writes}" if after_writes else "start")
    time.sleep(0.1)
    child.kill9()
    wrote = [ln for ln in child.lines if ln.startswith("wrote")]
    if not warehouse.has_table(db, "t"):
        assert not wrote  # absent only when no write had finished
        return
    t = warehouse.read_table(db, "t")
    v = int(t["v"][0])
    assert v in (1, 2) and t.height == 200_000 + v  # a whole version, never a mix or a prefix
    assert (t["v"] == v).all() and t["i"].to_list() == list(range(t.height))
    assert (t["s"] == t["i"].cast(pl.Utf8) + f"-{v}").all()


WAREHOUSE_CREATE_CHILD = """
import os, signal
import duckdb, polars as pl
from unisid_pipeline import warehouse

real_connect = duckdb.connect
def dying_connect(database, *args, **kwargs):  # SIGKILL while DuckDB writes a new file's headers
    if not os.path.exists(database):
        with open(database, "wb") as fh:
            fh.write(bytes(8192))
        os.kill(os.getpid(), signal.SIGKILL)
    return real_connect(database, *args, **kwargs)

duckdb.connect = dying_connect
warehouse.write_table({db!r}, "t", pl.DataFrame({{"i": [1]}}))
"""


def test_kill9_while_the_warehouse_file_is_created_leaves_no_unopenable_file(tmp_path):
    """A process killed while DuckDB creates the file must not leave a half-made file under the warehouse's name:
    every later open would fail on it."""
    db = tmp_path / "warehouse.duckdb"
    child = Child(WAREHOUSE_CREATE_CHILD.format(db=str(db)))
    assert child.proc.wait(timeout=60) == -signal.SIGKILL
    child.reap()
    assert not warehouse.has_table(db, "t")
    warehouse.write_table(db, "t", pl.DataFrame({"i": [7]}))
    assert warehouse.read_table(db, "t")["i"].to_list() == [7]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["warehouse.duckdb"]  # the dead child's temp is gone


# ----------------------------------------------------------------------------- MLflow model artifacts


MLFLOW_CHILD = """
import os, time
import numpy as np
import mlflow.store.artifact.local_artifact_repo as local_repo
from unisid_pipeline.models.rq import RQKMeansConfig, fit_rq_kmeans
from pathlib import Path
from unisid_pipeline.tracking import open_run, register_if_changed

def torn_copy(self, local_dir, artifact_path=None):  # SIGKILL while the model files are being copied
    target = self._get_or_create_artifact_dir(artifact_path)
    first = sorted(os.path.join(r, f) for r, _, fs in os.walk(local_dir) for f in fs)[0]
    data = open(first, "rb").read()
    with open(os.path.join(target, os.path.basename(first)), "wb") as fh:
        fh.write(data[: len(data) // 2])
    print("half-written", flush=True)
    time.sleep(600)

local_repo.LocalArtifactRepository.log_artifacts = torn_copy
x = np.random.default_rng(0).normal(size=(32, 8)).astype(np.float32)
model, _ = fit_rq_kmeans(RQKMeansConfig(n_levels=2, codebook_size=4, n_iter=3), x, seed=0, device="cpu")
with open_run({uri!r}, "exp", "killed", {{"dagster.asset_key": "rq_kmeans_model"}}, artifact_root=Path({root!r})) as run:
    print("run", run.run_id, flush=True)
    register_if_changed(run, model, "model", "rq_kmeans_tokenizer", "fp-1")
"""


def test_kill9_while_logging_a_model_never_registers_a_partial_artifact(tmp_path):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from unisid_pipeline.models.rq import RQKMeansConfig, fit_rq_kmeans
    from unisid_pipeline.tracking import load_registered_model, open_run, register_if_changed

    uri, root = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "artifacts"
    child = Child(MLFLOW_CHILD.format(uri=uri, root=str(root)))
    run_id = child.wait_for("run ").split()[1]
    child.wait_for("half-written")
    child.kill9()

    client = MlflowClient(tracking_uri=uri)
    assert client.search_model_versions("name = 'rq_kmeans_tokenizer'") == []  # nothing points at the torn files
    with pytest.raises(MlflowException):
        load_registered_model(uri, "models:/rq_kmeans_tokenizer/1")
    assert client.get_run(run_id).info.status == "RUNNING"  # the killed run never claims success...

    # The re-run logs and registers a whole model: version 1, which loads and encodes like the trained one.
    x = np.random.default_rng(0).normal(size=(32, 8)).astype(np.float32)
    model, _ = fit_rq_kmeans(RQKMeansConfig(n_levels=2, codebook_size=4, n_iter=3), x, seed=0, device="cpu")
    with open_run(uri, "exp", "rerun", {"dagster.asset_key": "rq_kmeans_model"}, artifact_root=root) as run:
        assert register_if_changed(run, model, "model", "rq_kmeans_tokenizer", "fp-1") == ("1", True)
    assert client.get_run(run_id).info.status == "KILLED"  # ...and the next run marks it as killed
    assert client.get_run(run.run_id).info.status == "FINISHED"
    loaded = load_registered_model(uri, "models:/rq_kmeans_tokenizer/1")
    assert np.array_equal(loaded.encode(x), model.encode(x))
