# One self-contained call (the machine of master.sh was lost between calls): SID tables made on the CPU
# travel in .gpuR with the sequences; train one recommender per table in parallel under REC_SECONDS,
# then pack the results into $OUT/res.tgz. Usage (repo root): REC_SECONDS=N bash bench/gpu/s3/rescue.sh
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
R=/tmp/res; mkdir -p $R
T=${REC_SECONDS:-400}
COMMON="--data .gpuR --device cuda --rec-epochs 1000 --rec-batch-size 2048 --rec-lr 1e-3 --rec-warmup 500 \
  --rec-lr-schedule constant --rec-patience 10 --rec-eval-every 3 --valid-max-users 5000 --eval-batch-size 256 \
  --rec-max-seconds $T --rec-length-pool 8 --rec-no-user-token --sids-dir .gpuR ${EXTRA:-}"
pids=()
IFS=';' read -ra specs <<< "${RUNS:-rq_vae:0 1 2}"
for ms in "${specs[@]}"; do
  python3 bench/beauty_benchmark.py train $COMMON --out $R/rec --methods ${ms%%:*} --seeds ${ms#*:} > $R/train_${ms%%:*}.log 2>&1 &
  pids+=($!)
done
( while sleep 60; do grep -h "epoch [0-9]*:" $R/rec/*.log | tail -n 2 | cut -c1-140; nvidia-smi --query-gpu=memory.used --format=csv,noheader; done ) &
mon=$!
wait "${pids[@]}"; kill $mon
sleep 1; for f in $R/train_*.log; do tail -n 12 $f; done
tar czf $OUT/res.tgz -C /tmp res; ls -la $OUT
