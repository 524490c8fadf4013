# Progress of the background run; with COLLECT=1 also pack the results into $OUT/res.tgz
source /tmp/repo/bench/gpu/s3/env.sh
echo "elapsed $(( $(date +%s) - $(cat $R/t0 2>/dev/null || date +%s) ))s; done: $(ls $R/*.done 2>/dev/null)"
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
for f in $R/tok_*.log; do echo "== $f: $(grep -c . $f) lines; $(tail -n 1 $f | cut -c1-200)"; done
for f in $R/rec*/rec_*.log; do echo "== $f: $(grep 'epoch [0-9]*:' $f | tail -n 1 | cut -c1-160)"; done
ls $R/rec*/*.json 2>/dev/null
if [ "${COLLECT:-0}" = 1 ]; then tar czf $OUT/res.tgz -C /tmp res && ls -la $OUT; fi
