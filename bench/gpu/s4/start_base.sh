# Call 1 (carry .whl .gpuR): install polars, copy the repo + inputs to /tmp, set the training deadline
# (now + REC_SECONDS), start the RQ-VAE and RQ-KMeans recommenders (seeds 0-2; BASE_RUNS="method:seeds;..."
# picks others) in the background. BATCH / EXTRA pass through to run_rec.sh.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
rm -rf /tmp/repo && mkdir -p /tmp/repo /tmp/bdata /tmp/res && cp -r unisid_pipeline bench /tmp/repo/ && cp .gpuR/* /tmp/bdata/
source /tmp/repo/bench/gpu/s4/env.sh
echo $(( $(date +%s) + ${REC_SECONDS:-1250} )) > $R/deadline; date +%s > $R/t0
python3 -c "import polars, torch; print('polars', polars.__version__, 'torch', torch.__version__, torch.cuda.get_device_name())"
IFS=';' read -ra specs <<< "${BASE_RUNS:-rq_vae:0 1 2;rq_kmeans:0 1 2}"
for ms in "${specs[@]}"; do for s in ${ms#*:}; do
  setsid nohup bash /tmp/repo/bench/gpu/s4/run_rec.sh ${ms%%:*} $s $D > /dev/null 2>&1 < /dev/null &
done; done
sleep ${WATCH:-50}; bash /tmp/repo/bench/gpu/s4/poll.sh 0
