source /tmp/jobs/env.sh
ls -la $R $R/beauty* 2>/dev/null | head -60; nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv
for f in $R/*.log; do echo "== $f"; tail -n ${TAILN:-4} $f; done
tar czf $OUT/res.tgz --exclude='*.duckdb' -C /tmp res
