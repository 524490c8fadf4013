# One `run` call that starts the runs and waits for their results: start_base.sh, then poll.sh until every
# JSON is in or the deadline has passed by POLL_SLACK seconds (test ranking + packing). Nothing depends on a
# later call reaching the machine within its 30 s idle release (twice in session 9 a later call found a fresh
# machine and the runs gone). Same variables as start_base.sh (BASE_RUNS, REC_SECONDS, V_*, EXTRA, BATCH).
# Budget: ~55 s of install + start, REC_SECONDS of training (first compiled epoch ~140 s included), then the test
# pass, inside the 600 s call limit; one process alone runs ~1.6 s per epoch on an H200 (session 9: 148 epochs,
# patience-stopped, in 401 s), so one run of the base recipe converges with REC_SECONDS=440.
# Usage (carry .whl .gpuR, timeout 600):
#   V_ema="--ema-decay 0.999" BASE_RUNS="rq_vae600/ema:0" REC_SECONDS=440 bash bench/gpu/s4/one_call.sh
rec=${REC_SECONDS:-440}; slack=${POLL_SLACK:-80}
[ $(( rec + slack + 60 )) -le 600 ] || { echo "one_call.sh: REC_SECONDS=$rec + POLL_SLACK=$slack + ~60 s of start exceed the 600 s call limit" >&2; exit 2; }
REC_SECONDS=$rec WATCH=5 bash bench/gpu/s4/start_base.sh || exit 1
bash /tmp/repo/bench/gpu/s4/poll.sh $(( rec + slack ))
