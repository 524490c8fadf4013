# bash poll.sh SECONDS: print progress every 60 s for SECONDS (or until every run wrote its JSON), then pack
# what exists (logs, JSON, SID reports; no SID tables) into $OUT/res.tgz, and an fp16 copy of each SAVE_MODEL model
# of these runs into $OUT. "Every run": the JSON files listed in $R/runs by start_base.sh / start_unisid.sh (this
# lease's runs only; until session 10 any rec_*.json counted, so on a warm machine a previous call's result made the
# next poll return at once); EXPECT overrides how many must exist.
source /tmp/repo/bench/gpu/s4/env.sh
if [ -s $R/runs ]; then EXPECT=${EXPECT:-$(grep -c . $R/runs)}; else EXPECT=${EXPECT:-9}; fi  # no list: runs started by hand
done_runs() { local n=0 f; [ -f $R/runs ] && while read -r f; do [ -s "$R/$f" ] && n=$((n + 1)); done < $R/runs; echo $n; }
end=$(( $(date +%s) + $1 ))
while :; do
  echo "== $(date +%T) t=$(( $(date +%s) - $(cat $R/t0) ))s, to deadline $(( $(cat $R/deadline) - $(date +%s) ))s; $(nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader)"
  for f in $R/rec_*.log; do [ -f $f ] && echo "$(basename $f): $(grep -ho 'epoch [0-9]*: .*' $f | tail -n 1)"; done
  for f in $R/tok_unisid_s*.log; do [ -f $f ] && echo "$(basename $f): $(tail -n 1 $f | cut -c1-120)"; done
  [ -f $R/fallbacks.txt ] && cat $R/fallbacks.txt
  n=$(done_runs)
  [ $n -ge $EXPECT ] && { echo "all $n results in"; break; }
  [ $(date +%s) -ge $end ] && break
  sleep 60
done
cd $R && tar czf $OUT/res.tgz --exclude='sids_rq_*.parquet' --exclude='emb_*.parquet' --exclude='*.ckpt' $(ls -d rec_* tok_* fallbacks.txt unisid_master.log t0 deadline 2>/dev/null)
for f in $R/tok_*/emb_*.parquet; do [ -f "$f" ] && cp "$f" $OUT/$(basename $(dirname "$f"))_$(basename "$f"); done  # UniSID embeddings (fp16)
# SAVE_MODEL runs of this start: an fp16 copy of each model (fp32 is ~20 MB, over a returned file's 16 MiB)
[ -s $R/runs ] && sed 's/^rec_\(.*\)\.json$/model_\1.pt/' $R/runs | while read -r m; do
  [ -s $R/$m ] && python3 -c "import sys, torch; d = torch.load(sys.argv[1], map_location='cpu', weights_only=False)
d['state_dict'] = {k: v.half() if v.is_floating_point() else v for k, v in d['state_dict'].items()}; torch.save(d, sys.argv[2])" \
    $R/$m $OUT/${m%.pt}.fp16.pt
done
ls -la $OUT
