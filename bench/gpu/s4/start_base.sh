# Call 1 (carry .whl .gpuR): install polars, copy the repo + inputs to /tmp, set the training deadline
# (now + REC_SECONDS), start the RQ-VAE and RQ-KMeans recommenders (seeds 0-2; BASE_RUNS="method:seeds;..."
# picks others; "rq_vae600/d3:0 1 2" with V_d3="--dropout 0.3" runs a variant of a table, see run_rec.sh) in the
# background. BATCH / EXTRA / V_* pass through to run_rec.sh.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
rm -rf /tmp/repo && mkdir -p /tmp/repo /tmp/bdata /tmp/res && cp -r unisid_pipeline bench /tmp/repo/ && cp .gpuR/* /tmp/bdata/
source /tmp/repo/bench/gpu/s4/env.sh
echo $(( $(date +%s) + ${REC_SECONDS:-1250} )) > $R/deadline; date +%s > $R/t0
python3 -c "import polars, torch; print('polars', polars.__version__, 'torch', torch.__version__, torch.cuda.get_device_name())"
IFS=';' read -ra specs <<< "${BASE_RUNS:-rq_vae:0 1 2;rq_kmeans:0 1 2}"
for ms in "${specs[@]}"; do  # TABLE/VARIANT runs need their table and V_VARIANT (run_rec.sh), checked before any starts
  parse_run "${ms%%:*}"
  for s in ${ms#*:}; do [ -f $D/sids_${table}_s$s.parquet ] || { echo "BASE_RUNS: no $D/sids_${table}_s$s.parquet (.gpuR)"; exit 1; }; done
  [ -z "$variant" ] || [ -n "$vflags" ] || { echo "BASE_RUNS: ${ms%%:*} needs V_$variant=\"<flags>\" (a variant name of letters, digits, _)"; exit 1; }
done
: > $R/runs  # the results poll.sh waits for: this start's, not those a warm machine kept from an earlier call
mkdir -p $R/prev
for ms in "${specs[@]}"; do parse_run "${ms%%:*}"; for s in ${ms#*:}; do
  for f in $R/rec_${name}_s$s.* $R/model_${name}_s$s.pt; do [ -e "$f" ] && mv "$f" $R/prev/; done  # same name run before
  echo rec_${name}_s$s.json >> $R/runs
  setsid nohup bash /tmp/repo/bench/gpu/s4/run_rec.sh ${ms%%:*} $s $D > /dev/null 2>&1 < /dev/null &
done; done
sleep ${WATCH:-50}; bash /tmp/repo/bench/gpu/s4/poll.sh 0
