# The planned session-3 run (see README.md here: 7 of its 11 recommenders died of CUDA OOM and the machine was lost;
# rescue.sh produced the results). Started in the background: setsid nohup bash /tmp/repo/bench/gpu/s3/master.sh &
# Tokenizers (RQ-VAE, RQ-KMeans, UniSID; seeds 0-2) -> one TIGER recommender per (method, seed), all
# started together under the same time budget, plus ablation runs on seed 0 -> touch $R/M.done
source /tmp/repo/bench/gpu/s3/env.sh
T=${REC_SECONDS:-900}
# recipe (see README.md here): batch 2048, AdamW lr 1e-3 constant after 500 warm-up steps, rows grouped by
# history length (pools of 8 batches), best validation R@10 on 5,000 users every 3 epochs, patience 10
COMMON="--data $D --device cuda --rec-epochs 1000 --rec-batch-size 2048 --rec-lr 1e-3 --rec-warmup 500 \
  --rec-lr-schedule constant --rec-patience 10 --rec-eval-every 3 --valid-max-users 5000 --eval-batch-size 256 \
  --rec-max-seconds $T --rec-length-pool 8"
date +%s > $R/t0
mkdir -p $R/sids
(python3 bench/beauty_benchmark.py tokenize --data $D --out $R/sids --device cuda --seeds 0 1 2 --methods rq_kmeans rq_vae \
   --rqvae-epochs 150 > $R/tok_rq.log 2>&1; echo "rc=$?" >> $R/tok_rq.log) &
for s in 0 1 2; do
  (python3 bench/beauty_benchmark.py tokenize --data $D --out $R/sids_unisid_s$s --device cuda --seeds $s --methods unisid \
     --backbone $D/minilm --unisid-epochs 10 --unisid-batch-size 128 --summaries summaries.parquet > $R/tok_unisid_s$s.log 2>&1
   echo "rc=$?" >> $R/tok_unisid_s$s.log; cp $R/sids_unisid_s$s/sids_*.parquet $R/sids/) &
done
wait
date +%s > $R/t_tok
export OMP_NUM_THREADS=2  # 11 processes on 16 cores
# main runs: no user token; ablations on seed 0 of RQ-VAE: with the user token, and plain (ungrouped) batches
python3 bench/beauty_benchmark.py train $COMMON --out $R/rec --sids-dir $R/sids --seeds 0 1 2 \
  --methods rq_vae rq_kmeans unisid --rec-no-user-token > $R/train_main.log 2>&1 &
python3 bench/beauty_benchmark.py train $COMMON --out $R/rec_usertoken --sids-dir $R/sids --seeds 0 \
  --methods rq_vae > $R/train_usertoken.log 2>&1 &
python3 bench/beauty_benchmark.py train $COMMON --rec-length-pool 1 --out $R/rec_plain --sids-dir $R/sids --seeds 0 \
  --methods rq_vae --rec-no-user-token > $R/train_plain.log 2>&1 &
wait
date +%s > $R/t_end
touch $R/M.done
