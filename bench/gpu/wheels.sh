# Sourced by bench/gpu/graph/prepare.sh and bench/gpu/launch.sh (run from the repo root).
# gpu_wheels DIR SPEC...: download the wheels of SPEC (no dependencies) for the GPU image, CPython 3.12 on
# manylinux x86_64, into DIR, to be carried there and installed with `pip install --no-index --target`.
# gpu_wheels_closure DIR SPEC...: the same, with every dependency (pure-Python wheels included).
gpu_wheels() { _gpu_download --no-deps "$@"; }
gpu_wheels_closure() { _gpu_download --platform=any "$@"; }
_gpu_download() {
  local opt=$1 dir=$2; shift 2
  python3 -m pip download -q $opt --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dir" "$@"
}
