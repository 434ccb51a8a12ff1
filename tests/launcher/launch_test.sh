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
