# Calls 1-3: install the carried wheels into /tmp/site, copy the repo and the carried inputs to /tmp
# (carried paths do not survive the next call). Usage: bash bench/gpu/s3/stage.sh   (from the repo root)
set -e
for w in .whl .whl2; do
  if [ -d $w ]; then python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $w/*.whl; fi
done
rm -rf /tmp/repo && mkdir -p /tmp/repo /tmp/bdata /tmp/res && cp -r unisid_pipeline bench /tmp/repo/
for d in .gpuA .gpuB; do
  if [ -d $d ]; then cp -r $d/* /tmp/bdata/; fi
done
ls /tmp/site /tmp/bdata
python3 -c "import sys; sys.path.insert(0,'/tmp/site'); import polars, torch; print('polars', polars.__version__, 'torch', torch.__version__, torch.cuda.get_device_name())"
