# Call 2 (carry .gpuU: MiniLM fp16, ads, summaries, labels, fp16 embeddings): train the UniSID tokenizers
# (seeds 0-2 in parallel, 10 epochs), then one recommender each under the same deadline, in the background.
# UNISID_FLAGS: more tokenize flags (e.g. "--unisid-sid-source embedding_rq --unisid-emb-positives co_interaction");
# UNISID_REF: flags of one more tokenizer (seed 0, no recommender) as a reference row; UNISID_EPOCHS (10), UNISID_SEEDS.
# UNISID_REC=0: tokenizers only (their SID tables come back in $OUT for a later lease's .gpuR, via poll.sh).
cp -r .gpuU/* /tmp/bdata/
source /tmp/repo/bench/gpu/s4/env.sh
cat > $R/unisid.sh <<'EOS'
source /tmp/repo/bench/gpu/s4/env.sh
tok() {  # tok NAME SEED FLAGS...: one UniSID tokenizer into $R/tok_NAME_sSEED
  local name=$1 s=$2; shift 2
  python3 bench/beauty_benchmark.py tokenize --data $D --out $R/tok_${name}_s$s --device cuda --seeds $s --methods unisid \
      --backbone $D/minilm --unisid-epochs ${UNISID_EPOCHS:-10} --unisid-batch-size 128 --summaries summaries.parquet \
      --embeddings embeddings16.parquet "$@" > $R/tok_${name}_s$s.log 2>&1
  echo "rc=$?" >> $R/tok_${name}_s$s.log
}
for s in ${UNISID_SEEDS:-0 1 2}; do
  ( tok unisid $s $UNISID_FLAGS
    [ "$UNISID_REC" = 0 ] || bash /tmp/repo/bench/gpu/s4/run_rec.sh unisid $s $R/tok_unisid_s$s ) &
done
[ -z "$UNISID_REF" ] || ( tok unisidref 0 $UNISID_REF ) &  # a reference configuration: tokenizer (SID quality) only
wait
EOS
[ "${UNISID_REC:-1}" = 0 ] || for s in ${UNISID_SEEDS:-0 1 2}; do echo rec_unisid_s$s.json >> $R/runs; done  # results to wait for
UNISID_REC=${UNISID_REC:-1} UNISID_FLAGS="${UNISID_FLAGS:-}" UNISID_REF="${UNISID_REF:-}" UNISID_SEEDS="${UNISID_SEEDS:-0 1 2}" \
  UNISID_EPOCHS=${UNISID_EPOCHS:-10} setsid nohup bash $R/unisid.sh > $R/unisid_master.log 2>&1 < /dev/null &
bash /tmp/repo/bench/gpu/s4/poll.sh ${POLL:-540}
