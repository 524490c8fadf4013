# bash poll.sh SECONDS: print progress every 60 s for SECONDS (or until every run wrote its JSON), then pack
# what exists (logs, JSON, SID reports; no SID tables) into $OUT/res.tgz. "Every run": EXPECT, by default the
# number of runs start_base.sh / start_unisid.sh started ($R/expect).
source /tmp/repo/bench/gpu/s4/env.sh
EXPECT=${EXPECT:-$(cat $R/expect 2>/dev/null || echo 9)}
end=$(( $(date +%s) + $1 ))
while :; do
  echo "== $(date +%T) t=$(( $(date +%s) - $(cat $R/t0) ))s, to deadline $(( $(cat $R/deadline) - $(date +%s) ))s; $(nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader)"
  for f in $R/rec_*.log; do [ -f $f ] && echo "$(basename $f): $(grep -ho 'epoch [0-9]*: .*' $f | tail -n 1)"; done
  for f in $R/tok_unisid_s*.log; do [ -f $f ] && echo "$(basename $f): $(tail -n 1 $f | cut -c1-120)"; done
  [ -f $R/fallbacks.txt ] && cat $R/fallbacks.txt
  n=$(ls $R/rec_*.json 2>/dev/null | wc -l)
  [ $n -ge $EXPECT ] && { echo "all $n results in"; break; }
  [ $(date +%s) -ge $end ] && break
  sleep 60
done
cd $R && tar czf $OUT/res.tgz --exclude='sids_*.parquet' --exclude='*.ckpt' $(ls -d rec_* tok_* fallbacks.txt unisid_master.log t0 deadline 2>/dev/null)
cp $R/tok_unisid_s*/sids_unisid_s*.parquet $OUT/ 2>/dev/null; ls -la $OUT
