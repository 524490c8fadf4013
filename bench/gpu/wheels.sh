# Sourced by bench/gpu/prepare_carry.sh and bench/gpu/s4/prepare.sh (run from the repo root).
# gpu_wheels DIR SPEC...: download the wheels of SPEC (no dependencies) for the GPU image, CPython 3.12 on
# manylinux x86_64, into DIR, to be carried there and installed with `pip install --no-index --target`.
gpu_wheels() {
  local dir=$1; shift
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dir" "$@"
}
