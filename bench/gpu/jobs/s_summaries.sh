# C3: Beauty LLM summaries on the GPU, then the decoder backbone folders
source /tmp/jobs/env.sh
python3 bench/beauty_summaries.py --ads $D/ads.parquet --device cuda --batch-size 256 --chunk-size 2048 \
  --cache $R/beauty_summaries.duckdb --export $R/beauty_summaries_smollm2.parquet \
  --summaries-out $D/summaries_llm.parquet --show 20 > $R/summaries.log 2>&1
echo "rc=$?" >> $R/summaries.log
python3 bench/make_decoder_backbones.py --out /tmp/backbones --qwen-shape > $R/backbones.log 2>&1
echo "rc=$?" >> $R/backbones.log
touch $R/S.done
