#!/usr/bin/env bash
# Runs every benchmark of ddp-runtime on this machine (2 ranks, 1 thread each), prints the
# table and rewrites docs/performance.md (plus docs/allreduce_bandwidth.png if matplotlib is
# available).
#
#   bash bench/run.sh [build_dir]        # full: about 5-10 minutes
#   BENCH_QUICK=1 bash bench/run.sh ...  # about 2 minutes, fewer rounds
#
# build_dir (default: build, relative to the current directory or else to the repository)
# must hold bin/ddp-train, bin/bench_allreduce and bin/bench_ddp. Raw results are kept in
# <build_dir>/bench-results/. Every figure is a ratio against a peer measured in the same run
# (alternating runs, medians); see docs/performance.md.
#
# Environment: BENCH_QUICK=1 (short run), BENCH_PYTHON (default /usr/bin/python3: the Python
# with PyTorch + gloo for the peer), MPIRUN (default mpirun).
set -euo pipefail

die() { echo "bench/run.sh: error: $*" >&2; exit 1; }
log() { echo "bench/run.sh: $*" >&2; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_ARG=${1:-build}
if [[ -d $BUILD_ARG ]]; then
  BUILD=$(cd "$BUILD_ARG" && pwd)
elif [[ -d $ROOT/$BUILD_ARG ]]; then
  BUILD=$(cd "$ROOT/$BUILD_ARG" && pwd)
else
  die "build directory '$BUILD_ARG' does not exist. Build first:
  cmake -S $ROOT -B $BUILD_ARG -DDDP_BUILD_TESTS=OFF && cmake --build $BUILD_ARG -j --target ddp-train bench_allreduce bench_ddp"
fi
BIN=$BUILD/bin
missing=()
for exe in ddp-train bench_allreduce bench_ddp; do
  [[ -x $BIN/$exe ]] || missing+=("$exe")
done
if ((${#missing[@]})); then
  die "$BIN lacks: ${missing[*]}. Build them:
  cmake --build $BUILD -j --target ddp-train bench_allreduce bench_ddp"
fi

PY=${BENCH_PYTHON:-/usr/bin/python3}
MPIRUN_BIN=${MPIRUN:-mpirun}
command -v "$MPIRUN_BIN" >/dev/null || die "'$MPIRUN_BIN' not found (Open MPI's launcher)"
[[ -x $PY ]] || die "'$PY' not found (set BENCH_PYTHON to a Python with PyTorch)"
"$PY" -c 'import torch.distributed as d; assert d.is_gloo_available()' 2>/dev/null ||
  die "'$PY' cannot import PyTorch with the gloo backend (needed for the PyTorch DDP peer)"

QUICK=${BENCH_QUICK:-0}
[[ $QUICK == 1 ]] || QUICK=0
if ((QUICK)); then
  AR_ARGS=(--rounds 5 --block-mb 32 --min-iters 3)
  OV_ARGS=(--rounds 15 --steps 40 --warmup 20)
  BK_ARGS=(--rounds 5 --steps 4 --warmup 2)
  TRAIN_STEPS=600 TRAIN_ROUNDS=3
else
  AR_ARGS=(--rounds 11 --block-mb 64 --min-iters 5)
  OV_ARGS=(--rounds 61 --steps 50 --warmup 50)
  BK_ARGS=(--rounds 7 --steps 8 --warmup 3)
  TRAIN_STEPS=1000 TRAIN_ROUNDS=4
fi
TORCH_WARMUP=20

MPI=("$MPIRUN_BIN" --oversubscribe --bind-to none -x OMP_NUM_THREADS=1)
[[ $(id -u) == 0 ]] && MPI+=(--allow-run-as-root)
export OMP_NUM_THREADS=1

RESULTS=$BUILD/bench-results
rm -rf "$RESULTS"
mkdir -p "$RESULTS/runs"
COMMANDS=()  # what ran, for docs/performance.md (paths relative to the repository)
rel() { local s="$*"; s=${s//$BUILD/<build>}; s=${s//$RESULTS/<results>}; echo "${s//$ROOT\//}"; }

START=$(date +%s)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "results in $RESULTS ($( ((QUICK)) && echo quick || echo full) mode)"

# --- 1. all-reduce
cmd=("${MPI[@]}" -np 2 "$BIN/bench_allreduce" "${AR_ARGS[@]}")
COMMANDS+=("$(rel "${cmd[@]}")")
log "1/4 all-reduce sweep"
"${cmd[@]}" >"$RESULTS/allreduce.csv" || die "bench_allreduce failed"

# --- 2a. DDP overhead at world size 1
cmd=("${MPI[@]}" -np 1 "$BIN/bench_ddp" overhead "${OV_ARGS[@]}")
COMMANDS+=("$(rel "${cmd[@]}")")
log "2/4 DDP overhead (1 rank)"
"${cmd[@]}" >"$RESULTS/overhead.json" || die "bench_ddp overhead failed"

# --- 2b. bucket sweep at 2 ranks
cmd=("${MPI[@]}" -np 2 "$BIN/bench_ddp" buckets "${BK_ARGS[@]}")
COMMANDS+=("$(rel "${cmd[@]}")")
log "3/4 bucket sweep (2 ranks)"
"${cmd[@]}" >"$RESULTS/buckets.json" || die "bench_ddp buckets failed"

# --- 3. ddp-train vs PyTorch DDP, alternating
CONFIG_ARGS=()
if [[ -f $ROOT/configs/default.yaml ]]; then
  CONFIG_ARGS=(--config "$ROOT/configs/default.yaml")
fi
# The job of configs/default.yaml, pinned even where the file says the same so that the
# comparison never drifts from what torch_ddp_peer.py does.
TRAIN_SET=(
  --set data.name=synthetic_classification --set data.num_features=64
  --set data.num_classes=10 --set model.name=mlp --set "model.hidden_sizes=[256,256]"
  --set model.dropout=0.0 --set model.device=cpu --set trainer.batch_size=64
  --set optimizer.name=adamw --set optimizer.lr=0.001 --set optimizer.weight_decay=0.01
  --set scheduler.name=cosine --set scheduler.warmup_steps=32 --set scheduler.min_lr=0.00001
  --set trainer.gradient_clip_val=1.0 --set trainer.log_every_n_steps=16
  --set ddp.backend=mpi --set ddp.bucket_cap_mb=25 --set ddp.compression=none
  --set trainer.precision=32 --set trainer.accumulate_grad_batches=1 --set trainer.max_epochs=-1
  --set "trainer.max_steps=$TRAIN_STEPS" --set trainer.check_val_every_n_epoch=0
  --set trainer.progress_bar=off --set "trainer.default_root_dir=$RESULTS/runs"
)
# Throughput of training only: the peer writes no checkpoints, so neither does ddp-train
# (where this build has checkpointing at all).
if "$BIN/ddp-train" "${CONFIG_ARGS[@]}" --print-config 2>/dev/null | grep -q '^checkpoint:'; then
  TRAIN_SET+=(--set checkpoint.enabled=false)
fi
free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# The build must accept the config file as it is now (configs/ evolves with the code).
if ! err=$("$BIN/ddp-train" "${CONFIG_ARGS[@]}" "${TRAIN_SET[@]}" --print-config 2>&1 >/dev/null); then
  die "ddp-train in $BIN rejects the training settings (stale build? rebuild ddp-train):
$err"
fi
export MASTER_ADDR=127.0.0.1
export MASTER_PORT
# Three jobs per round, in this order: ddp-train as launched by everyone (the target),
# the PyTorch DDP peer, and ddp-train with Open MPI told to yield the CPU while it polls
# (a diagnostic: on a machine with more runnable threads than cores, busy polling delays
# the peer rank).
run_ddp_train() {  # $1: kind (ddp | ddpyield), $2: run order, rest: extra mpirun options
  local kind=$1 ord=$2
  shift 2
  local summary=$RESULTS/train_${ord}_${kind}.json
  local cmd=("${MPI[@]}" "$@" -np 2 "$BIN/ddp-train" "${CONFIG_ARGS[@]}" "${TRAIN_SET[@]}"
             --set "trainer.name=bench_$ord" --summary "$summary")
  ((round == 0)) && COMMANDS+=("$(rel "${cmd[@]}")")
  "${cmd[@]}" >"$RESULTS/train_${ord}_${kind}.log" 2>&1 ||
    die "ddp-train failed; see $RESULTS/train_${ord}_${kind}.log"
  [[ -s $summary ]] || die "ddp-train wrote no summary $summary"
}
run_torch() {  # $1: run order
  local ord=$1
  MASTER_PORT=$(free_port)
  local cmd=("${MPI[@]}" -np 2 -x MASTER_ADDR -x MASTER_PORT "$PY" "$ROOT/bench/torch_ddp_peer.py"
             --steps "$TRAIN_STEPS" --warmup "$TORCH_WARMUP")
  ((round == 0)) && COMMANDS+=("MASTER_ADDR=127.0.0.1 MASTER_PORT=<free port> $(rel "${cmd[@]}")")
  "${cmd[@]}" >"$RESULTS/train_${ord}_torch.json" 2>"$RESULTS/train_${ord}_torch.log" ||
    die "PyTorch DDP peer failed; see $RESULTS/train_${ord}_torch.log"
}
log "4/4 ddp-train vs PyTorch DDP: $TRAIN_ROUNDS rounds x 3 jobs x $TRAIN_STEPS steps"
order=0
for ((round = 0; round < TRAIN_ROUNDS; ++round)); do
  run_ddp_train ddp "$order"
  run_torch "$((order + 1))"
  run_ddp_train ddpyield "$((order + 2))" --mca mpi_yield_when_idle 1
  order=$((order + 3))
  log "   round $((round + 1))/$TRAIN_ROUNDS done"
done

# --- figure (optional)
PNG=""
if "$PY" "$ROOT/bench/plot.py" "$RESULTS/allreduce.csv" "$ROOT/docs/allreduce_bandwidth.png"; then
  PNG=$ROOT/docs/allreduce_bandwidth.png
else
  log "no figure (matplotlib missing? apt-get install python3-matplotlib)"
fi

# --- report
END=$(date +%s)
INVOCATION="bash bench/run.sh $BUILD_ARG"
if ((QUICK)); then INVOCATION="BENCH_QUICK=1 $INVOCATION"; fi
export BENCH_META_COMMANDS
BENCH_META_COMMANDS=$(printf '%s\n' "${COMMANDS[@]}")
"$PY" - "$RESULTS/meta.json" <<EOF
import json, os, subprocess, sys
cpu = "unknown CPU"
with open("/proc/cpuinfo") as f:
    for line in f:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
mpi = subprocess.run(["$MPIRUN_BIN", "--version"], capture_output=True, text=True).stdout
peer = json.load(open("$RESULTS/train_1_torch.json"))  # the first peer run
meta = {
    "date": subprocess.run(["date", "-Iseconds"], capture_output=True, text=True).stdout.strip(),
    # What nproc prints without OMP_NUM_THREADS (exported above, and nproc honours it).
    "nproc": len(os.sched_getaffinity(0)),
    "cpu_model": cpu,
    "loadavg_start": "$LOAD_START",
    "loadavg_end": open("/proc/loadavg").read().split()[:3],
    "mpi_version": (mpi.splitlines() or ["mpirun ?"])[0],
    "torch_version": peer.get("torch", "?"),
    "quick": bool($QUICK),
    "wall_s": $END - $START,
    "command": "$INVOCATION",
    "train_steps": $TRAIN_STEPS,
    "torch_warmup": $TORCH_WARMUP,
    "plot_png": "$PNG",
    "commands": os.environ["BENCH_META_COMMANDS"].splitlines(),
}
meta["loadavg_end"] = " ".join(meta["loadavg_end"])
json.dump(meta, open(sys.argv[1], "w"), indent=2)
EOF
"$PY" "$ROOT/bench/report.py" "$RESULTS" "$ROOT/docs/performance.md"
