# Call 1 and 2: install the carried wheels, copy the repo and the carried inputs to /tmp (carried
# paths do not survive the next call). Usage: bash bench/gpu/s3/stage.sh   (from the repo root)
set -e
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl; fi
rm -rf /tmp/repo && mkdir -p /tmp/repo /tmp/bdata /tmp/res && cp -r unisid_pipeline bench /tmp/repo/
for d in .gpuA .gpuB; do [ -d $d ] && cp -r $d/* /tmp/bdata/; done
ls -la /tmp/bdata; python3 -c "import sys; sys.path.insert(0,'/tmp/site'); import polars, torch; print('polars', polars.__version__, 'torch', torch.__version__, torch.cuda.get_device_name())"
