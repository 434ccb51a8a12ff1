#!/usr/bin/env bash
# ddp-launch as users meet it:
#  1. kill -9 of one rank mid-training: every other process of the job is gone within
#     2 x ddp.timeout_s, ddp-launch restarts with --resume auto, the job finishes from the last
#     checkpoint;
#  2. SIGTERM to ddp-launch: passed on, the ranks save and exit 75, no restart.
# Usage: launch_test.sh <bin_dir>
set -euo pipefail
bin=$1
work=$(mktemp -d)
trap 'pkill -9 -f "$work" 2>/dev/null || true; rm -rf "$work"' EXIT
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
timeout_s=10
job=(mpirun --oversubscribe --bind-to none -np 2 "$bin/ddp-train" --set trainer.max_steps=600
     --set trainer.max_epochs=-1 --set trainer.batch_size=16 --set data.num_samples=4096
     --set model.hidden_sizes=[64,64] --set trainer.progress_bar=off
     --set trainer.check_val_every_n_epoch=0 --set trainer.log_every_n_steps=20
     --set checkpoint.every_n_train_steps=20 --set checkpoint.every_n_epochs=0
     --set ddp.timeout_s=$timeout_s --set trainer.default_root_dir=$work)

wait_for_step() {  # file, minimum step
  for _ in $(seq 1 600); do
    local s
    s=$(sed -n 's/^step \([0-9]*\)\/.*/\1/p' "$1" 2>/dev/null | tail -1)
    [[ -n $s && $s -ge $2 ]] && return 0
    sleep 0.05
  done
  echo "FAIL: training did not reach step $2"; cat "$1"; exit 1
}

# 1. kill -9 one rank.
"$bin/ddp-launch" --max-restarts 2 --backoff 0.5 -- "${job[@]}" --set trainer.name=killed \
    >"$work/killed.log" 2>&1 &
launcher=$!
wait_for_step "$work/killed.log" 60
victim=$(pgrep -f "^$bin/ddp-train.*trainer.name=killed" | sort -n | tail -1)
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
t0=$(now_ms)
kill -9 "$victim"
# Every rank of the killed attempt must be gone within 2 x timeout_s (the restart's ranks
# appear only after "attempt 2", so stop looking then).
while pgrep -f "^$bin/ddp-train.*trainer.name=killed" >/dev/null; do
  grep -q "attempt 2 of" "$work/killed.log" && break
  (( $(now_ms) - t0 > 2000 * timeout_s )) && { echo "FAIL: ranks alive after 2 x ddp.timeout_s"; exit 1; }
  sleep 0.05
done
gone=$(( $(now_ms) - t0 ))
wait "$launcher"
grep -q "attempt 2 of 3" "$work/killed.log" || { echo "FAIL: no restart"; cat "$work/killed.log"; exit 1; }
grep -q "resumed from .* at step" "$work/killed.log" || { echo "FAIL: restart did not resume"; exit 1; }
grep -q "done: 600 steps" "$work/killed.log" || { echo "FAIL: job did not finish"; tail "$work/killed.log"; exit 1; }
echo "kill -9: the other ranks were gone after ${gone} ms (limit $((2 * timeout_s)) s); restarted, resumed and finished"

# 2. SIGTERM to ddp-launch.
"$bin/ddp-launch" --max-restarts 2 --backoff 0.5 -- "${job[@]}" --set trainer.name=term \
    >"$work/term.log" 2>&1 &
launcher=$!
wait_for_step "$work/term.log" 40
kill -TERM "$launcher"
set +e
wait "$launcher"
rc=$?
set -e
[[ $rc == 75 ]] || { echo "FAIL: ddp-launch exit $rc after SIGTERM, expected 75"; cat "$work/term.log"; exit 1; }
grep -q "not restarting" "$work/term.log" || { echo "FAIL: expected no restart"; exit 1; }
grep -q "attempt 2 of" "$work/term.log" && { echo "FAIL: restarted after SIGTERM"; exit 1; }
"$bin/ddp-checkpoint" verify "$work/term/checkpoints" >/dev/null
echo "SIGTERM to ddp-launch: job saved and exited 75, no restart: OK"

# 3. A job that cannot finish ending itself once a rank has aborted it (mpirun waiting forever
#    for a host across a partition; here a script that ignores SIGTERM): ddp-launch ends it and
#    everything it started within --abort-grace + 3 s, and counts it as exit 3. It also hands
#    the job Open MPI's daemon keepalive (--network-timeout) unless the user set it.
cat >"$work/stuck_job.sh" <<'JOB'
trap '' TERM
echo "keepalive=$OMPI_MCA_oob_tcp_keepalive_time/$OMPI_MCA_oob_tcp_keepalive_intvl/$OMPI_MCA_oob_tcp_keepalive_probes"
echo "ddp: rank 1: MPI_Allreduce did not complete within 10.0 s (ddp.timeout_s): ...; aborting all ranks" >&2
sleep 300 &
echo "child=$!"
wait
JOB
t0=$(now_ms)
set +e
"$bin/ddp-launch" --max-restarts 0 --abort-grace 2 --network-timeout 12 -- bash "$work/stuck_job.sh" \
    >"$work/stuck.log" 2>&1
rc=$?
set -e
took=$(( $(now_ms) - t0 ))
[[ $rc == 3 ]] || { echo "FAIL: a job stuck after an abort: ddp-launch exit $rc, expected 3"; cat "$work/stuck.log"; exit 1; }
(( took < 8000 )) || { echo "FAIL: the stuck job was ended after $took ms (grace 2 s + 3 s)"; exit 1; }
grep -q "has not exited 2 s after a rank aborted it" "$work/stuck.log" || { echo "FAIL: no message"; cat "$work/stuck.log"; exit 1; }
child=$(sed -n 's/^child=//p' "$work/stuck.log")
# (A zombie is gone: killed, waiting only for init to reap it.)
if [[ -e /proc/$child ]] && ! grep -q '^State:.*Z' "/proc/$child/status" 2>/dev/null; then
  echo "FAIL: the job's child $child outlived it"; exit 1
fi
grep -q "keepalive=6/2/3" "$work/stuck.log" || { echo "FAIL: keepalive not set: $(grep keepalive "$work/stuck.log")"; exit 1; }
OMPI_MCA_oob_tcp_keepalive_time=99 "$bin/ddp-launch" --max-restarts 0 -- \
    bash -c 'echo "keepalive=$OMPI_MCA_oob_tcp_keepalive_time"' >"$work/keep.log" 2>&1
grep -q "keepalive=99" "$work/keep.log" || { echo "FAIL: ddp-launch overrode the user's keepalive"; exit 1; }
echo "stuck job after an abort: ended after ${took} ms (grace 2 s), exit 3, nothing left behind: OK"
