#!/usr/bin/env bash
# Speed across hosts: 2 hosts made of network namespaces (tests/multihost/hosts.sh), one rank
# each, over a veth link (optionally rate-limited with tc tbf), node-local disks. Every figure
# is a ratio against a peer run over the same link in the same job (alternating, medians):
#   1. all-reduce: MpiCommunicator::all_reduce vs raw MPI_Allreduce (bench_allreduce);
#   2. step time: overlapped buckets vs no overlap vs compute-only (no all-reduce at all), and
#      the share of the all-reduce hidden behind backward (bench_ddp buckets);
#   3. training: ddp-train vs PyTorch DDP (gloo) on the MLP 256 -> 1024x4 -> 10 (batch 64 per
#      rank, AdamW, one thread per rank), defaults on both sides, plus ddp.compression=bf16;
#   4. checkpoints: save (gather across the link, write, fsync on rank 0's disk) vs a raw
#      write+fsync of the same bytes; resume (rank 0 reads and verifies, broadcasts) vs a raw
#      read + a raw MPI broadcast of the file's bytes (bench_checkpoint, page cache dropped).
# Prints a summary, rewrites docs/performance-multihost.md, and leaves raw results in
# <build>/bench-results/multihost/.
#
#   bash bench/multihost_bench.sh [build_dir]            # root; about 5-10 minutes
#   BENCH_RATE=1gbit bash bench/multihost_bench.sh ...   # both hosts' egress limited
#   BENCH_ROUNDS=3 (training and checkpoint rounds; default 5)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=$(cd "${1:-$ROOT/build}" && pwd)
BIN=$BUILD/bin
PY=${BENCH_PYTHON:-/usr/bin/python3}
ROUNDS=${BENCH_ROUNDS:-5}
RESULTS=$BUILD/bench-results/multihost
rm -rf "$RESULTS"
mkdir -p "$RESULTS"
log() { echo "bench/multihost_bench.sh: $*" >&2; }
source "$ROOT/tests/multihost/hosts.sh"
CI= mh_require
mh_create 2
DISK=$MH_WORK/disk
mh_local_disk "$DISK"
if [[ -n ${BENCH_RATE:-} ]]; then
  mh_rate 0 "$BENCH_RATE"
  mh_rate 1 "$BENCH_RATE"
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
run2() { # [-x VAR ...] command...
  local extra=()
  while [[ $1 == -x ]]; do extra+=("$1" "$2"); shift 2; done
  mh_mpirun 2 1 --bind-to none -x MASTER_ADDR -x MASTER_PORT "${extra[@]}" -- "$@"
}
export MASTER_ADDR=$MH_NET.10 MASTER_PORT=29517
log "hosts $(mh_host 0), $(mh_host 1) on $MH_SUBNET, link ${BENCH_RATE:-unlimited (veth)}"

# 1. All-reduce.
log "1/4 all-reduce sweep (4 MiB .. 64 MiB)"
run2 "$BIN/bench_allreduce" --rounds 7 --min-bytes $((4 << 20)) --max-bytes $((64 << 20)) \
    >"$RESULTS/allreduce.csv" 2>"$RESULTS/allreduce.log"

# 2. Overlap.
log "2/4 step time: buckets, no overlap, compute only"
run2 "$BIN/bench_ddp" buckets --rounds "$ROUNDS" --steps 20 --hidden 1024,1024,1024,1024 \
    >"$RESULTS/buckets.json" 2>"$RESULTS/buckets.log"

# 3. Training, alternating.
TRAIN_STEPS=${BENCH_TRAIN_STEPS:-300}
TRAIN_SET=(--set data.name=synthetic_classification --set data.num_features=256
  --set data.num_classes=10 --set model.name=mlp --set "model.hidden_sizes=[1024,1024,1024,1024]"
  --set model.dropout=0.0 --set model.device=cpu --set trainer.batch_size=64
  --set optimizer.name=adamw --set optimizer.lr=0.001 --set optimizer.weight_decay=0.01
  --set scheduler.name=cosine --set scheduler.warmup_steps=32 --set scheduler.min_lr=0.00001
  --set trainer.gradient_clip_val=1.0 --set trainer.log_every_n_steps=16
  --set ddp.backend=mpi --set trainer.precision=32 --set trainer.max_epochs=-1
  --set trainer.max_steps=$TRAIN_STEPS --set trainer.check_val_every_n_epoch=0
  --set trainer.progress_bar=off --set checkpoint.enabled=false
  --set trainer.default_root_dir=$DISK)
log "3/4 training: $ROUNDS rounds x (ddp-train, PyTorch DDP gloo, ddp-train bf16) x $TRAIN_STEPS steps"
for ((r = 0; r < ROUNDS; ++r)); do
  for kind in ddp torch bf16; do
    case $kind in
      ddp) run2 "$BIN/ddp-train" "${TRAIN_SET[@]}" --set trainer.name=b$r \
             --summary "$RESULTS/train_${r}_ddp.json" >"$RESULTS/train_${r}_ddp.log" 2>&1 ;;
      bf16) run2 "$BIN/ddp-train" "${TRAIN_SET[@]}" --set trainer.name=c$r \
              --set ddp.compression=bf16 \
              --summary "$RESULTS/train_${r}_bf16.json" >"$RESULTS/train_${r}_bf16.log" 2>&1 ;;
      # gloo advertises the address of GLOO_SOCKET_IFNAME (else its hostname's, which the
      # namespace hosts cannot resolve).
      torch) MASTER_PORT=$((29517 + r)) GLOO_SOCKET_IFNAME=eth0 run2 -x GLOO_SOCKET_IFNAME \
               "$PY" "$ROOT/bench/torch_ddp_peer.py" \
               --steps "$TRAIN_STEPS" --features 256 --hidden 1024,1024,1024,1024 \
               >"$RESULTS/train_${r}_torch.json" 2>"$RESULTS/train_${r}_torch.log" ;;
    esac
  done
  log "   round $((r + 1))/$ROUNDS done"
done

# 4. Checkpoints (rank 0's node-local disk; the other host never sees the files).
log "4/4 checkpoints: save vs raw write+fsync, resume vs raw read + broadcast"
run2 "$BIN/bench_checkpoint" --dir "$DISK/ckpt" --rounds "$ROUNDS" --only all \
    --hidden 2048,2048,2048 --python "$PY" --peer "$ROOT/bench/torch_save_peer.py" \
    >"$RESULTS/checkpoint.json" 2>"$RESULTS/checkpoint.log"

"$PY" "$ROOT/bench/multihost_report.py" "$RESULTS" "${BENCH_RATE:-unlimited}" \
    "$ROOT/docs/performance-multihost.md" "$(date -Iseconds)" "$(cut -d' ' -f1-3 /proc/loadavg)" \
    "$ROUNDS" "$TRAIN_STEPS"
