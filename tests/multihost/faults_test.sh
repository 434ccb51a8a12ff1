#!/usr/bin/env bash
# Faults across hosts made of network namespaces (tests/multihost/hosts.sh), 2 hosts x RANKS
# ranks, node-local disks, every job under ddp-launch:
#  step    host 1's link taken down while training;
#  save    host 1's link taken down while its rank is in a save (DDP_FAULT_PAUSE=save), the
#          one at step 400, with the one at step 200 committed;
#  resume  host 1's link taken down while the checkpoint is handed over (DDP_FAULT_PAUSE=resume);
#  host    every process on host 1 killed (a dead host);
#  nokeepalive  as step, with ddp-launch --network-timeout 0 (Open MPI's daemons keep their
#          default 300 s keepalive): only the collective deadline, the rank's daemon reaper
#          and ddp-launch's --abort-grace can end the job in time.
# For each: every process of the job on every host (ranks, orted, mpirun) is gone within
# 2 x ddp.timeout_s + 10 s of the fault, with no process left in any host's namespace; the
# attempt ends with a non-zero exit; once the link is back ddp-launch restarts and the job
# resumes from the newest good checkpoint and finishes.
# Needs root: skips (77) elsewhere, fails under CI=true.
# Usage: faults_test.sh <bin_dir> <ranks_per_host> [fault...]
set -uo pipefail
bin=$1
per=$2
shift 2
faults=("$@")
((${#faults[@]})) || faults=(step save resume host nokeepalive)
here=$(cd "$(dirname "$0")" && pwd)
source "$here/hosts.sh"
mh_require
mh_create 2
root=$MH_WORK/run
mh_local_disk "$root"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
timeout_s=10
bound=$((2 * timeout_s + 10))
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
now_ms() { echo $(($(date +%s%N) / 1000000)); }

# The job: 3000 steps (several seconds), a checkpoint every 200, so that a fault lands
# mid-run with checkpoints committed before it.
job() { # name
  # shellcheck disable=SC2046
  echo $(mh_mpirun_cmd 2 "$per") --bind-to none "$bin/ddp-train" \
    --set trainer.max_steps=3000 --set trainer.max_epochs=-1 --set trainer.batch_size=64 \
    --set data.num_samples=8192 --set model.hidden_sizes=[256,256] \
    --set trainer.progress_bar=off --set trainer.check_val_every_n_epoch=0 \
    --set trainer.log_every_n_steps=10 --set checkpoint.every_n_train_steps=200 \
    --set checkpoint.every_n_epochs=0 --set ddp.timeout_s=$timeout_s \
    --set trainer.default_root_dir=$root --set trainer.name="$1"
}

wait_for() { # log pattern seconds -> 0 when the pattern appeared
  local i
  for ((i = 0; i < $3 * 20; ++i)); do
    grep -q -- "$2" "$1" 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}
last_step() { sed -n 's/^step \([0-9]*\)\/.*/\1/p' "$1" | tail -1; }

# job_gone HOSTFILE: no mpirun of this harness and no process in any host's namespace.
job_gone() {
  [[ -z $(mh_orphans) ]] && ! pgrep -f "^mpirun .*$MH_WORK/hostfile" >/dev/null
}

run_fault() { # fault
  local fault=$1 log=$MH_WORK/$1.log
  local env=() network_timeout=6
  case $fault in
    nokeepalive) network_timeout=0 ;;
    save) env=(DDP_FAULT_PAUSE=save:1:3:400) ;;  # a later save: one is committed before
    resume) env=(DDP_FAULT_PAUSE=resume:1:3) ;;
  esac
  if [[ $fault == resume ]]; then
    # Resume needs a checkpoint: a first run of 400 steps leaves two on host 0's disk.
    # shellcheck disable=SC2046
    $(job "$fault") --set trainer.max_steps=400 >"$MH_WORK/$fault.first.log" 2>&1 ||
      { fail "$fault: the first run failed"; tail "$MH_WORK/$fault.first.log"; return; }
  fi
  # --backoff leaves time to see every process gone and heal the link before the restart.
  # shellcheck disable=SC2046
  env "${env[@]}" "$bin/ddp-launch" --max-restarts 2 --backoff 5 \
      --network-timeout $network_timeout -- $(job "$fault") $([[ $fault == resume ]] && echo --resume auto) \
      >"$log" 2>&1 &
  local launcher=$!
  case $fault in
    step | host | nokeepalive)
      wait_for "$log" "^step 600/" 120 || { fail "$fault: training did not reach step 600"; tail "$log"; kill $launcher; return; } ;;
    save) wait_for "$log" "pauses .* at save" 120 || { fail "$fault: no save pause"; tail "$log"; kill $launcher; return; } ;;
    resume) wait_for "$log" "pauses .* at resume" 120 || { fail "$fault: no resume pause"; tail "$log"; kill $launcher; return; } ;;
  esac
  local t0
  t0=$(now_ms)
  if [[ $fault == host ]]; then mh_kill_host 1; else mh_link_down 1; fi
  local gone_ms=
  while (($(now_ms) - t0 < (bound + 5) * 1000)); do
    if job_gone; then gone_ms=$(($(now_ms) - t0)); break; fi
    [[ -n ${MH_TRACE:-} ]] && { echo "t=$(($(now_ms) - t0)) ms"; mh_orphans | cut -c1-90; }
    sleep ${MH_TRACE:-0.2}
  done
  mh_link_up 1
  if [[ -z $gone_ms ]]; then
    fail "$fault: processes still alive $((bound + 5)) s after the fault:"
    mh_orphans | sed 's/^/    /'
    pgrep -fa "^mpirun .*$MH_WORK/hostfile" | cut -c1-120 | sed 's/^/    /'
  elif ((gone_ms > bound * 1000)); then
    fail "$fault: the job took $gone_ms ms to end everywhere (bound ${bound} s)"
  fi
  local rc=0
  wait $launcher || rc=$?
  local first_rc
  first_rc=$(sed -n 's/.*attempt 1 ended with exit code \([0-9]*\).*/\1/p' "$log")
  [[ -n $first_rc && $first_rc != 0 ]] || fail "$fault: the failed attempt reported exit '${first_rc}'"
  [[ $rc == 0 ]] || { fail "$fault: ddp-launch exit $rc, expected 0 after a restart"; tail -20 "$log" | sed 's/^/    /'; }
  [[ -n ${MH_KEEP_LOGS:-} ]] && cp "$log" "$MH_KEEP_LOGS/"
  grep -q "resumed from" "$log" || fail "$fault: the restart did not resume from a checkpoint"
  local resumed
  resumed=$(grep -o "resumed from '[^']*' at step [0-9]*" "$log" | tail -1)
  echo "$fault: every process gone after ${gone_ms:-?} ms (bound ${bound} s); attempt 1 exit ${first_rc}; restart: ${resumed}; final step $(last_step "$log")"
  [[ $(last_step "$log") == 3000 ]] || fail "$fault: the restarted job did not reach step 3000"
  # The fault landed mid-run: the first attempt had not finished.
  grep -q "resumed from .* at step [1-9]" "$log" || fail "$fault: the restart did not resume past step 0"
}

for f in "${faults[@]}"; do run_fault "$f"; done
if ((failures)); then
  echo "multihost faults 2x${per}: $failures failure(s)"
  exit 1
fi
echo "multihost faults 2x${per} (${faults[*]}): bounded exit, no orphans, restart and resume: OK"
