#!/usr/bin/env bash
# ZeRO stage 1 against stage 0: the same model in the same job, alternating, medians.
#   1. memory: optimizer-state bytes on the rank holding the most, at 1, 2 and 4 ranks
#      (target: stage 0's / N plus less than one gradient bucket), and the reduce-scatter
#      buffers stage 1 adds;
#   2. step time at 2 ranks (target <= 1.05x stage 0): training-loop seconds per step;
#   3. save (training-thread seconds of a synchronous save) and resume (rank 0 reads, hands
#      over, every rank loads) of the same model.
# Model: the MLP 256 -> 1024x4 -> 10 (batch 64 per rank, AdamW, one thread per rank).
# BENCH_HOSTS=2 (root) runs 2 and 3 across two network-namespace hosts instead, one rank
# each, node-local disks (tests/multihost/hosts.sh).
# Leaves raw results in <build>/bench-results/zero-<hosts>host/ and rewrites
# docs/performance-zero.md from every such directory present.
#
#   bash bench/zero_bench.sh [build_dir]      # BENCH_ROUNDS (default 5), BENCH_STEPS (200)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=$(cd "${1:-$ROOT/build}" && pwd)
BIN=$BUILD/bin
PY=${BENCH_PYTHON:-/usr/bin/python3}
ROUNDS=${BENCH_ROUNDS:-5}
STEPS=${BENCH_STEPS:-200}
HOSTS=${BENCH_HOSTS:-1}
RESULTS=$BUILD/bench-results/zero-${HOSTS}host
rm -rf "$RESULTS"
mkdir -p "$RESULTS"
log() { echo "bench/zero_bench.sh: $*" >&2; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1

DISK=$RESULTS/runs
if [[ $HOSTS == 2 ]]; then
  source "$ROOT/tests/multihost/hosts.sh"
  CI= mh_require
  mh_create 2
  DISK=$MH_WORK/disk
  mh_local_disk "$DISK"
  launch() { local np=$1; shift; mh_mpirun 2 1 --bind-to none -- "$@"; }
  log "hosts $(mh_host 0), $(mh_host 1) on $MH_SUBNET"
else
  mkdir -p "$DISK"
  launch() {
    local np=$1; shift
    mpirun --oversubscribe --bind-to none -x OMP_NUM_THREADS=1 -np "$np" "$@"
  }
fi

SET=(--set data.name=synthetic_classification --set data.num_features=256
  --set data.num_classes=10 --set model.name=mlp --set "model.hidden_sizes=[1024,1024,1024,1024]"
  --set model.dropout=0.0 --set trainer.batch_size=64 --set optimizer.name=adamw
  --set optimizer.lr=0.001 --set optimizer.weight_decay=0.01 --set trainer.gradient_clip_val=1.0
  --set trainer.log_every_n_steps=50 --set ddp.backend=mpi --set trainer.max_epochs=-1
  --set trainer.check_val_every_n_epoch=0 --set trainer.progress_bar=off
  --set trainer.default_root_dir=$DISK)
train() {  # np stage tag extra...
  local np=$1 stage=$2 tag=$3
  shift 3
  launch "$np" "$BIN/ddp-train" "${SET[@]}" --set ddp.zero_stage="$stage" \
      --set trainer.name="$tag" --summary "$RESULTS/$tag.json" "$@" >"$RESULTS/$tag.log" 2>&1 \
      || { tail -20 "$RESULTS/$tag.log" >&2; exit 1; }
}

if [[ $HOSTS == 1 ]]; then
  log "1/3 memory at 1, 2, 4 ranks"
  for np in 1 2 4; do
    for stage in 0 1; do
      train "$np" "$stage" "mem_np${np}_s${stage}" --set trainer.max_steps=3 \
          --set checkpoint.enabled=false
    done
  done
fi

log "2/3 step time at 2 ranks: $ROUNDS rounds x (stage 0, stage 1) x $STEPS steps"
for ((r = 0; r < ROUNDS; ++r)); do
  order=(0 1)
  (( r % 2 )) && order=(1 0)
  for stage in "${order[@]}"; do
    train 2 "$stage" "step_r${r}_s${stage}" --set trainer.max_steps="$STEPS" \
        --set checkpoint.enabled=false
  done
  log "   round $((r + 1))/$ROUNDS"
done

log "3/3 save and resume at 2 ranks: $ROUNDS rounds x (stage 0, stage 1)"
for ((r = 0; r < ROUNDS; ++r)); do
  order=(0 1)
  (( r % 2 )) && order=(1 0)
  for stage in "${order[@]}"; do
    tag="ckpt_r${r}_s${stage}"
    train 2 "$stage" "$tag" --set trainer.max_steps=10 --set checkpoint.every_n_train_steps=10 \
        --set checkpoint.every_n_epochs=0 --set checkpoint.async=false
    train 2 "$stage" "${tag}_resume" --set trainer.max_steps=11 --set checkpoint.enabled=true \
        --set checkpoint.every_n_train_steps=0 --set checkpoint.every_n_epochs=0 \
        --resume "$DISK/$tag/checkpoints/last.h5"
    rm -rf "${DISK:?}/$tag" "${DISK:?}/${tag}_resume"
  done
done

"$PY" "$ROOT/bench/zero_report.py" "$ROOT/docs/performance-zero.md" "$BUILD/bench-results" \
    "$(date -Iseconds)" "$(cut -d' ' -f1-3 /proc/loadavg)" "$ROUNDS" "$STEPS"
