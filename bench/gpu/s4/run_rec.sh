# One recommender run: bash run_rec.sh METHOD SEED SIDS_DIR. Trains until the shared deadline $R/deadline
# (epoch seconds, training end) under torch.compile; if that run fails without a result, re-runs it eager
# with the time left. Writes $R/rec_METHOD_sSEED.{log,json}. BATCH (default 1024) and EXTRA (more
# bench_recommender.py flags, appended, so they override the recipe, e.g. "--lr-schedule cosine --epochs 80"),
# then a variant's flags (below). SAVE_MODEL=1: also write the trained model to $R/model_METHOD_sSEED.pt (poll.sh
# brings an fp16 copy back, ~10 MB, for bench/rank_analysis.py on the CPU).
source /tmp/repo/bench/gpu/s4/env.sh
# METHOD may name a variant, TABLE/VARIANT (e.g. rq_vae600/d3): the table sids_TABLE_sSEED.parquet trained with
# the flags in $V_VARIANT appended after EXTRA (e.g. V_d3="--dropout 0.3"); results are rec_TABLE-VARIANT_sSEED.*.
s=$2; parse_run "$1"
sids=$3/sids_${table}_s${s}.parquet; js=$R/rec_${name}_s${s}.json; log=$R/rec_${name}_s${s}.log
RECIPE="--sequences $D/sequences.parquet --sids $sids --device cuda --seed $s --epochs 1000 --batch-size ${BATCH:-1024} \
  --lr 1e-3 --warmup-steps 500 --lr-schedule constant --patience 8 --eval-every 4 --valid-max-users 4000 \
  --eval-batch-size 512 --length-pool-batches 8 --no-user-token --bf16 --no-valid-eval --json-out $js \
  ${SAVE_MODEL:+--save $R/model_${name}_s${s}.pt} ${EXTRA:-} $vflags"
left() { echo $(( $(cat $R/deadline) - $(date +%s) )); }
python3 bench/bench_recommender.py $RECIPE --max-train-seconds $(left) --compile --compile-mode reduce-overhead \
  --compile-length-step 4 > $log 2>&1
rc=$?
if [ ! -s $js ]; then
  echo "compiled run failed (rc=$rc); eager re-run with $(left) s" | tee -a $R/fallbacks.txt >> $log
  mv $log $log.compiled
  python3 bench/bench_recommender.py $RECIPE --max-train-seconds $(left) > $log 2>&1
  echo "eager rc=$?" >> $log
fi
