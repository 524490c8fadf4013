# Call 2 (carry .gpuU: MiniLM fp16, ads, summaries, labels, fp16 embeddings): train the UniSID tokenizers
# (seeds 0-2 in parallel, 10 epochs), then one recommender each under the same deadline, in the background.
# UNISID_REC=0: tokenizers only (their SID tables come back in $OUT for a later lease's .gpuR, via poll.sh).
cp -r .gpuU/* /tmp/bdata/
source /tmp/repo/bench/gpu/s4/env.sh
cat > $R/unisid.sh <<'EOS'
source /tmp/repo/bench/gpu/s4/env.sh
for s in 0 1 2; do
  ( python3 bench/beauty_benchmark.py tokenize --data $D --out $R/tok_unisid_s$s --device cuda --seeds $s --methods unisid \
      --backbone $D/minilm --unisid-epochs 10 --unisid-batch-size 128 --summaries summaries.parquet \
      --embeddings embeddings16.parquet > $R/tok_unisid_s$s.log 2>&1
    echo "rc=$?" >> $R/tok_unisid_s$s.log
    [ "$UNISID_REC" = 0 ] || bash /tmp/repo/bench/gpu/s4/run_rec.sh unisid $s $R/tok_unisid_s$s ) &
done
wait
EOS
[ "${UNISID_REC:-1}" = 0 ] || for s in 0 1 2; do echo rec_unisid_s$s.json >> $R/runs; done  # 3 more results to wait for
UNISID_REC=${UNISID_REC:-1} setsid nohup bash $R/unisid.sh > $R/unisid_master.log 2>&1 < /dev/null &
bash /tmp/repo/bench/gpu/s4/poll.sh ${POLL:-540}
