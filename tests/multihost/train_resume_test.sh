#!/usr/bin/env bash
# Training and resume across hosts made of network namespaces (tests/multihost/hosts.sh),
# each host with its own node-local disk at the run directory: only rank 0's host ever holds
# a checkpoint. Checks, for HOSTS x RANKS_PER_HOST:
#  1. a run across the hosts saves on rank 0's disk only (the other disks stay empty), and
#     rank 0 logs the topology (hosts, ranks per host) and the network;
#  2. `--resume auto` there resumes (rank 0 reads, the others receive by broadcast) and ends
#     bitwise equal to an uninterrupted run;
#  3. (2 ranks per host) the 4-rank checkpoint resumes on 2 hosts x 1 rank (another world size);
#  4. a damaged newest checkpoint: `auto` falls back to the previous good one, across hosts;
#  5. the same job with the MPI progress thread (DDP_MPI_PROGRESS_THREAD=auto: on, since the
#     ranks span hosts) ends bitwise equal to the one without;
#  6. ZeRO stage 1: resume is bitwise at the same stage, and its checkpoint resumes at stage 0.
# Needs root (namespaces, mounts): skips (77) elsewhere, fails under CI=true.
# Usage: train_resume_test.sh <bin_dir> <hosts> <ranks_per_host>
set -uo pipefail
bin=$1
hosts=$2
per=$3
here=$(cd "$(dirname "$0")" && pwd)
source "$here/hosts.sh"
mh_require
mh_create "$hosts"
root=$MH_WORK/run          # the same path on every host, a different disk on each
mh_local_disk "$root"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
common=(--set trainer.max_epochs=-1 --set trainer.batch_size=16 --set data.num_samples=2048
        --set model.hidden_sizes=[64,64] --set trainer.progress_bar=off
        --set trainer.check_val_every_n_epoch=0 --set trainer.log_every_n_steps=20
        --set checkpoint.every_n_train_steps=20 --set checkpoint.every_n_epochs=0
        --set ddp.timeout_s=30 --set trainer.default_root_dir=$root)
run() { # hosts per log args...
  local h=$1 p=$2 log=$3
  shift 3
  mh_mpirun "$h" "$p" --bind-to none -- "$bin/ddp-train" "${common[@]}" "$@" >"$log" 2>&1
}
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
check_rc() { # want log what
  local got=$4
  [[ $got == "$1" ]] || { fail "$3: exit $got, expected $1"; tail -15 "$2" | sed 's/^/    /'; }
}
disk0=$(mh_disk 0)

# 1. Uninterrupted reference, then the first half of the job.
run "$hosts" "$per" "$MH_WORK/straight.log" --set trainer.max_steps=120 --set trainer.name=straight
check_rc 0 "$MH_WORK/straight.log" "uninterrupted run" $?
run "$hosts" "$per" "$MH_WORK/first.log" --set trainer.max_steps=60 --set trainer.name=job
check_rc 0 "$MH_WORK/first.log" "first half" $?
[[ -f $disk0/job/checkpoints/last.h5 ]] || fail "no checkpoint on rank 0's disk"
# Rank 0 tells where the ranks are and what the network is.
want="topology: $((hosts * per)) ranks on $hosts hosts: $(mh_host 0) (ranks 0$( ((per > 1)) && echo "-$((per - 1))"))"
grep -qF "$want" "$MH_WORK/first.log" || fail "no '$want' line: $(grep topology "$MH_WORK/first.log")"
grep -q "network (rank 0's view): MPI transports tcp,self (TCP interfaces: $MH_SUBNET)" \
    "$MH_WORK/first.log" || fail "no network line: $(grep network "$MH_WORK/first.log")"
for ((i = 1; i < hosts; ++i)); do
  n=$(find "$(mh_disk "$i")" -type f | wc -l)
  [[ $n == 0 ]] || fail "host $i's disk holds $n file(s); only rank 0 writes"
done
[[ -e $root/job ]] && fail "the root namespace's $root was written to; the hosts' disks were not used"

# 2. Resume with the checkpoint on rank 0's disk only.
run "$hosts" "$per" "$MH_WORK/resume.log" --set trainer.max_steps=120 --set trainer.name=job \
    --resume auto
check_rc 0 "$MH_WORK/resume.log" "resume across hosts" $?
grep -q "resumed from '.*step=60.h5' at step 60" "$MH_WORK/resume.log" ||
  fail "resume did not start from step 60: $(grep -m1 resum "$MH_WORK/resume.log")"
d=$("$bin/ddp-checkpoint" diff "$disk0/straight/checkpoints/last.h5" "$disk0/job/checkpoints/last.h5")
echo "$d" | grep -q " 0 differ;" || fail "resumed run differs from the uninterrupted one: $(echo "$d" | tail -1)"
for ((i = 1; i < hosts; ++i)); do
  n=$(find "$(mh_disk "$i")" -type f | wc -l)
  [[ $n == 0 ]] || fail "after resume, host $i's disk holds $n file(s)"
done

# 3. Another world size: the 2x2 checkpoint on 2 hosts x 1 rank.
if ((per > 1)); then
  run "$hosts" 1 "$MH_WORK/reshard.log" --set trainer.max_steps=140 --set trainer.name=job \
      --resume auto
  check_rc 0 "$MH_WORK/reshard.log" "resume on another world size" $?
  grep -q "written by $((hosts * per)) ranks, resuming on $hosts" "$MH_WORK/reshard.log" ||
    fail "no resharding message: $(grep -m2 -i resum "$MH_WORK/reshard.log")"
fi

# 4. The newest checkpoint damaged on rank 0's disk: auto falls back to the one before.
newest=$(/usr/bin/python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['file'])" \
         "$disk0/job/checkpoints/latest.json")
size=$(stat -c %s "$disk0/job/checkpoints/$newest")
printf '\xff\xff\xff\xff' | dd of="$disk0/job/checkpoints/$newest" bs=1 seek=$((size / 2)) \
    conv=notrunc status=none
# latest.json and last.h5 name the damaged file; last.h5 is a link to it.
run "$hosts" "$per" "$MH_WORK/fallback.log" --set trainer.max_steps=160 --set trainer.name=job \
    --resume auto
check_rc 0 "$MH_WORK/fallback.log" "fallback resume" $?
grep -q "is not usable" "$MH_WORK/fallback.log" || fail "no warning about the damaged checkpoint"
grep -q "resumed from" "$MH_WORK/fallback.log" || fail "did not resume from an older checkpoint"
grep "is not usable\|resumed from" "$MH_WORK/fallback.log" | head -3

# 5. The progress thread changes when bytes move, never what they sum to.
DDP_MPI_PROGRESS_THREAD=auto mh_mpirun "$hosts" "$per" --bind-to none -x DDP_MPI_PROGRESS_THREAD -- \
    "$bin/ddp-train" "${common[@]}" --set trainer.max_steps=120 --set trainer.name=progress \
    >"$MH_WORK/progress.log" 2>&1
check_rc 0 "$MH_WORK/progress.log" "run with the progress thread" $?
d=$("$bin/ddp-checkpoint" diff "$disk0/straight/checkpoints/last.h5" "$disk0/progress/checkpoints/last.h5")
echo "$d" | grep -q " 0 differ;" || fail "the progress thread changed the result: $(echo "$d" | tail -1)"

# 6. ZeRO stage 1 across hosts: each optimizer tensor crosses the link from its owner to rank
#    0's disk, resume sends each host's ranks their own share; bitwise at the same stage, and
#    the same file resumes at stage 0.
zero=(--set ddp.zero_stage=1 --set optimizer.name=adamw --set optimizer.lr=0.001)
run "$hosts" "$per" "$MH_WORK/zstraight.log" "${zero[@]}" --set trainer.max_steps=120 --set trainer.name=zstraight
check_rc 0 "$MH_WORK/zstraight.log" "stage-1 run" $?
run "$hosts" "$per" "$MH_WORK/zfirst.log" "${zero[@]}" --set trainer.max_steps=60 --set trainer.name=zjob
check_rc 0 "$MH_WORK/zfirst.log" "stage-1 first half" $?
run "$hosts" "$per" "$MH_WORK/zresume.log" "${zero[@]}" --set trainer.max_steps=120 --set trainer.name=zjob \
    --resume auto
check_rc 0 "$MH_WORK/zresume.log" "stage-1 resume across hosts" $?
d=$("$bin/ddp-checkpoint" diff "$disk0/zstraight/checkpoints/last.h5" "$disk0/zjob/checkpoints/last.h5")
echo "$d" | grep -q " 0 differ;" || fail "stage-1 resume differs from the uninterrupted run: $(echo "$d" | tail -1)"
run "$hosts" "$per" "$MH_WORK/zstage0.log" "${zero[@]}" --set ddp.zero_stage=0 --set trainer.max_steps=140 \
    --set trainer.name=zjob --resume auto
check_rc 0 "$MH_WORK/zstage0.log" "stage-1 checkpoint resumed at stage 0" $?
grep -q "resumed from '.*step=120.h5' at step 120" "$MH_WORK/zstage0.log" ||
  fail "stage 0 did not resume the stage-1 checkpoint: $(grep -m1 resum "$MH_WORK/zstage0.log")"
for ((i = 1; i < hosts; ++i)); do
  n=$(find "$(mh_disk "$i")" -type f | wc -l)
  [[ $n == 0 ]] || fail "after the stage-1 runs, host $i's disk holds $n file(s)"
done

if ((failures)); then
  echo "multihost train/resume ${hosts}x${per}: $failures failure(s)"
  exit 1
fi
echo "multihost train/resume ${hosts}x${per}: node-local disks, resume by broadcast, bitwise equal: OK"
