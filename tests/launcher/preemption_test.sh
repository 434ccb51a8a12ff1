#!/usr/bin/env bash
# Coordinated stop on preemption, as users meet it: SIGTERM (twice, and during an async save)
# to ONE rank of an N-rank job. Checks: every rank stops at the same step, the job exits with
# preemption.exit_code, exactly the checkpoint of that step is the latest, and `--resume auto`
# ends with parameters and optimizer state bitwise equal to an uninterrupted run.
# Usage: preemption_test.sh <bin_dir> <np> <variant: single|double_async>
set -euo pipefail
bin=$1
np=$2
variant=$3
work=$(mktemp -d)
trap 'pkill -9 -f "$work" 2>/dev/null || true; rm -rf "$work"' EXIT
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
steps=800
common=(--set trainer.max_steps=$steps --set trainer.max_epochs=-1 --set trainer.batch_size=16
        --set data.num_samples=4096 --set model.hidden_sizes=[64,64] --set trainer.progress_bar=off
        --set trainer.check_val_every_n_epoch=0 --set trainer.log_every_n_steps=50
        --set checkpoint.every_n_epochs=0 --set trainer.default_root_dir=$work)
[[ $variant == double_async ]] && common+=(--set checkpoint.async=true --set checkpoint.every_n_train_steps=7)
run() { mpirun --oversubscribe --bind-to none -np "$np" "$bin/ddp-train" "${common[@]}" "$@"; }

# 1. Uninterrupted reference.
run --set trainer.name=straight >"$work/straight.log" 2>&1

# 2. Interrupted: SIGTERM to one (not the first) rank once training is under way.
run --set trainer.name=job >"$work/job.log" 2>&1 &
job=$!
for _ in $(seq 1 200); do
  grep -q "^step " "$work/job.log" 2>/dev/null && break
  sleep 0.05
done
mapfile -t pids < <(pgrep -f "^$bin/ddp-train.*trainer.name=job" | sort -n)
(( ${#pids[@]} == np )) || { echo "FAIL: expected $np rank processes, found ${#pids[@]}"; exit 1; }
victim=${pids[$((np - 1))]}
kill -TERM "$victim"
if [[ $variant == double_async ]]; then
  # A second signal while the stop is agreed and saved, a third while the process shuts down.
  sleep 0.02; kill -TERM "$victim" 2>/dev/null || true
  sleep 0.3; kill -TERM "$victim" 2>/dev/null || true
fi
set +e
wait "$job"
rc=$?
set -e
cat "$work/job.log" | tail -5
[[ $rc == 75 ]] || { echo "FAIL: exit code $rc, expected 75 (preemption.exit_code)"; exit 1; }
stopped=$(sed -n 's/.*preempted at step \([0-9]*\).*/\1/p' "$work/job.log")
[[ -n $stopped ]] || { echo "FAIL: no 'preempted at step' line"; exit 1; }
(( stopped < steps )) || { echo "FAIL: the job was not interrupted (stopped at $stopped)"; exit 1; }
latest=$(/usr/bin/python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['global_step'])" \
         "$work/job/checkpoints/latest.json")
[[ $latest == "$stopped" ]] || { echo "FAIL: latest checkpoint is step $latest, stop was $stopped"; exit 1; }
"$bin/ddp-checkpoint" verify "$work/job/checkpoints" >/dev/null

# 3. Resume to the end and compare with the uninterrupted run.
run --set trainer.name=job --resume auto >"$work/resume.log" 2>&1
grep -q "resumed from .* at step $stopped" "$work/resume.log" || { echo "FAIL: did not resume at $stopped"; cat "$work/resume.log"; exit 1; }
diff_out=$("$bin/ddp-checkpoint" diff "$work/straight/checkpoints/last.h5" "$work/job/checkpoints/last.h5")
echo "$diff_out" | tail -1
echo "$diff_out" | grep -q " 0 differ;" || { echo "FAIL: resumed run differs from the uninterrupted one"; exit 1; }
echo "$diff_out" | grep -q "0 shape/dtype mismatches, 0 only in A, 0 only in B" || { echo "FAIL: key sets differ"; exit 1; }
echo "preemption ($variant, np=$np): stopped at step $stopped, exit 75, resumed bitwise-equal: OK"
