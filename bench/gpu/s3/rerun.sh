# Second wave, for the runs of master.sh that died of CUDA OOM when 11 processes of batch 2048 shared the
# GPU: wait for the survivors to finish, pack their results into $OUT/res1.tgz, then start the missing
# main runs (same recipe, REC_SECONDS budget) with a less fragmenting allocator. Usage: REC_SECONDS=N bash rerun.sh
source /tmp/repo/bench/gpu/s3/env.sh
while pgrep -f bench_recommender.py > /dev/null; do sleep 2; done
while pgrep -f "beauty_benchmark.py train" > /dev/null; do sleep 1; done
date +%s > $R/t_wave1_end
mkdir -p $R/oom && for f in $R/rec*/rec_*.log; do j=${f%.log}.json; [ -f $j ] || mv $f $R/oom/$(basename $(dirname $f))_$(basename $f); done
tar czf $OUT/res1.tgz -C /tmp res
export OMP_NUM_THREADS=2 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
T=${REC_SECONDS:-400}
COMMON="--data $D --device cuda --rec-epochs 1000 --rec-batch-size 2048 --rec-lr 1e-3 --rec-warmup 500 \
  --rec-lr-schedule constant --rec-patience 10 --rec-eval-every 3 --valid-max-users 5000 --eval-batch-size 256 \
  --rec-max-seconds $T --rec-length-pool 8 --rec-no-user-token --sids-dir $R/sids"
date +%s > $R/t_wave2
for ms in "rq_vae:0 1" "rq_kmeans:1 2" "unisid:0 2"; do
  setsid nohup python3 bench/beauty_benchmark.py train $COMMON --out $R/rec2 --methods ${ms%%:*} --seeds ${ms#*:} \
    > $R/train_wave2_${ms%%:*}.log 2>&1 < /dev/null &
done
sleep 1; echo "wave 2 started with T=$T"
