# C4: after the summaries: throughput benches (quiet GPU), then tokenizers and the synthetic benchmark in parallel
source /tmp/jobs/env.sh
while [ ! -f $R/S.done ]; do sleep 5; done
python3 bench/bench_text.py --n 512 --device cuda --batch-size 128 --embed-batch-size 256 --encoder-dir $D/minilm --show 3 > $R/bench_text.log 2>&1
for spec in "$D/minilm:tiny:128:128" "$D/minilm:smollm2:128:128" "/tmp/backbones/smollm2-135m:tiny:64:128" "/tmp/backbones/qwen2-0.5b-shape-random:tiny:32:128"; do
  IFS=: read bb rec bs ml <<< "$spec"
  python3 bench/bench_unisid.py --backbone $bb --rec-decoder $rec --batch-size $bs --max-length $ml --n-ads 2048 --steps 20 --device cuda --amp >> $R/bench_unisid.log 2>&1
  echo "rc=$? $spec" >> $R/bench_unisid.log
done
touch $R/V.done
# tokenizers on Beauty (3 seeds): RQ baselines; UniSID with LLM summaries (8x8x8 derived hierarchy, and a finer 8x8x32 one)
(python3 bench/beauty_benchmark.py tokenize --data $D --out $R/beauty --device cuda --seeds 0 1 2 --methods rq_vae rq_kmeans \
   --rqvae-epochs 150 > $R/tok_rq.log 2>&1; echo "rc=$?" >> $R/tok_rq.log) &
(python3 bench/beauty_benchmark.py tokenize --data $D --out $R/beauty_unisid --device cuda --seeds 0 1 2 --methods unisid \
   --backbone $D/minilm --unisid-epochs 10 --unisid-batch-size 128 --summaries summaries_llm.parquet > $R/tok_unisid.log 2>&1; echo "rc=$?" >> $R/tok_unisid.log) &
(python3 bench/beauty_benchmark.py tokenize --data $D --out $R/beauty_unisid_fine --device cuda --seeds 0 1 2 --methods unisid \
   --backbone $D/minilm --unisid-epochs 10 --unisid-batch-size 128 --summaries summaries_llm.parquet --branching 8 8 32 > $R/tok_unisid_fine.log 2>&1; echo "rc=$?" >> $R/tok_unisid_fine.log) &
(python3 bench/synthetic_sid_quality.py --seeds 0,1,2 --ablation-seeds 0,1 --unisid-epochs 10 --device cuda \
   --encoder-dir $D/minilm --backbone $D/minilm --summaries llm --out $R/synthetic_sid_quality_gpu.md > $R/synthetic.log 2>&1; echo "rc=$?" >> $R/synthetic.log) &
wait
touch $R/M.done
