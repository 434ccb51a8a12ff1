#!/usr/bin/env bash
# Runs every benchmark of ddp-runtime on this machine (2 ranks, 1 thread each), prints the
# table and rewrites docs/performance.md (plus docs/allreduce_bandwidth.png and
# docs/loss_curve.png if matplotlib is available) and, through bench/checkpoint_bench.sh,
# docs/performance-checkpoint.md.
#
#   bash bench/run.sh [build_dir]        # full: about 10-15 minutes
#   BENCH_QUICK=1 bash bench/run.sh ...  # under 6 minutes, fewer rounds
#
# build_dir (default: build, relative to the current directory or else to the repository)
# must hold bin/ddp-train, bin/bench_allreduce, bin/bench_ddp and bin/bench_checkpoint. Raw
# results are kept in <build_dir>/bench-results/. Every figure is a ratio against a peer
# measured in the same run (alternating runs, medians); see docs/performance.md.
#
# What runs, in order: all-reduce sweeps (bench_allreduce: raw MPI vs MpiCommunicator,
# alternating with bench/gloo_allreduce_peer.py: PyTorch gloo); DDP engine overhead at 1 rank
# and the bucket sweep (bench_ddp); training rounds of ddp-train at 2 ranks, the PyTorch DDP
# peer (bench/torch_ddp_peer.py) and ddp-train at 1 rank; bench/checkpoint_bench.sh; the
# figures (bench/plot.py) and the report (bench/report.py).
#
# Environment: BENCH_QUICK=1 (short run), BENCH_SKIP_CHECKPOINT=1 (leave out the checkpoint
# benchmark), BENCH_PYTHON (default /usr/bin/python3: the Python with PyTorch + gloo for the
# peers), MPIRUN (default mpirun).
set -euo pipefail

die() { echo "bench/run.sh: error: $*" >&2; exit 1; }
log() { echo "bench/run.sh: $*" >&2; }
die_with_log() { tail -5 "$1" >&2; die "$2 failed; see $1"; }  # $1: log file, $2: what failed

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_ARG=${1:-build}
if [[ -d $BUILD_ARG ]]; then
  BUILD=$(cd "$BUILD_ARG" && pwd)
elif [[ -d $ROOT/$BUILD_ARG ]]; then
  BUILD=$(cd "$ROOT/$BUILD_ARG" && pwd)
else
  die "build directory '$BUILD_ARG' does not exist. Build first:
  cmake -S $ROOT -B $BUILD_ARG -DDDP_BUILD_TESTS=OFF && cmake --build $BUILD_ARG -j --target ddp-train bench_allreduce bench_ddp bench_checkpoint"
fi
BIN=$BUILD/bin
SKIP_CHECKPOINT=${BENCH_SKIP_CHECKPOINT:-0}
[[ $SKIP_CHECKPOINT == 1 ]] || SKIP_CHECKPOINT=0
NEEDED=(ddp-train bench_allreduce bench_ddp)
((SKIP_CHECKPOINT)) || NEEDED+=(bench_checkpoint)
missing=()
for exe in "${NEEDED[@]}"; do
  [[ -x $BIN/$exe ]] || missing+=("$exe")
done
if ((${#missing[@]})); then
  die "$BIN lacks: ${missing[*]}. Build them:
  cmake --build $BUILD -j --target ${NEEDED[*]}"
fi

PY=${BENCH_PYTHON:-/usr/bin/python3}
MPIRUN_BIN=${MPIRUN:-mpirun}
command -v "$MPIRUN_BIN" >/dev/null || die "'$MPIRUN_BIN' not found (Open MPI's launcher)"
[[ -x $PY ]] || die "'$PY' not found (set BENCH_PYTHON to a Python with PyTorch)"
"$PY" -c 'import torch.distributed as d; assert d.is_gloo_available()' 2>/dev/null ||
  die "'$PY' cannot import PyTorch with the gloo backend (needed for the gloo and PyTorch DDP peers)"

QUICK=${BENCH_QUICK:-0}
[[ $QUICK == 1 ]] || QUICK=0
# AR_SWEEPS: whole all-reduce sweeps of each kind (MPI, gloo), run alternately; the report
# takes the median over sweeps of each sweep's per-size median over its AR_ARGS rounds.
if ((QUICK)); then
  AR_SWEEPS=1 AR_ARGS=(--rounds 5 --block-mb 32 --min-iters 3)
  OV_ARGS=(--rounds 15 --steps 40 --warmup 20)
  BK_ARGS=(--rounds 5 --steps 4 --warmup 2)
  TRAIN_STEPS=600 TRAIN_ROUNDS=3
else
  AR_SWEEPS=3 AR_ARGS=(--rounds 4 --block-mb 64 --min-iters 5)
  OV_ARGS=(--rounds 61 --steps 50 --warmup 50)
  BK_ARGS=(--rounds 7 --steps 8 --warmup 3)
  TRAIN_STEPS=1000 TRAIN_ROUNDS=4
fi
TORCH_WARMUP=20
LOG_EVERY=16  # trainer.log_every_n_steps, and the peer's --loss-every (loss curve points)

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

free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# The Python peers rendezvous over TCP (init_process_group("gloo")); rank and size come from
# Open MPI's environment.
export MASTER_ADDR=127.0.0.1
export MASTER_PORT

# --- 1. all-reduce: whole sweeps, MPI (raw / comm / async) then gloo, AR_SWEEPS times each
log "1/6 all-reduce: $AR_SWEEPS x (bench_allreduce sweep, gloo sweep)"
for ((sweep = 0; sweep < AR_SWEEPS; ++sweep)); do
  cmd=("${MPI[@]}" -np 2 "$BIN/bench_allreduce" "${AR_ARGS[@]}")
  ((sweep == 0)) && COMMANDS+=("$(rel "${cmd[@]}")")
  "${cmd[@]}" >"$RESULTS/allreduce_$sweep.csv" 2>"$RESULTS/allreduce_$sweep.log" ||
    die_with_log "$RESULTS/allreduce_$sweep.log" bench_allreduce
  MASTER_PORT=$(free_port)
  cmd=("${MPI[@]}" -np 2 -x MASTER_ADDR -x MASTER_PORT "$PY" "$ROOT/bench/gloo_allreduce_peer.py"
       "${AR_ARGS[@]}")
  ((sweep == 0)) && COMMANDS+=("MASTER_ADDR=127.0.0.1 MASTER_PORT=<free port> $(rel "${cmd[@]}")")
  "${cmd[@]}" >"$RESULTS/gloo_allreduce_$sweep.csv" 2>"$RESULTS/gloo_allreduce_$sweep.log" ||
    die_with_log "$RESULTS/gloo_allreduce_$sweep.log" "the gloo all-reduce peer"
  log "   sweep $((sweep + 1))/$AR_SWEEPS done"
done

# --- 2a. DDP overhead at world size 1
cmd=("${MPI[@]}" -np 1 "$BIN/bench_ddp" overhead "${OV_ARGS[@]}")
COMMANDS+=("$(rel "${cmd[@]}")")
log "2/6 DDP overhead (1 rank)"
"${cmd[@]}" >"$RESULTS/overhead.json" || die "bench_ddp overhead failed"

# --- 2a'. the per-step preemption agreement's marginal cost, 2 ranks, default config's model
cmd=("${MPI[@]}" -np 2 "$BIN/bench_ddp" agreement "${OV_ARGS[@]}")
COMMANDS+=("$(rel "${cmd[@]}")")
log "2/6 stop-agreement cost (2 ranks)"
"${cmd[@]}" >"$RESULTS/agreement.json" || die "bench_ddp agreement failed"

# --- 2b. bucket sweep at 2 ranks
cmd=("${MPI[@]}" -np 2 "$BIN/bench_ddp" buckets "${BK_ARGS[@]}")
COMMANDS+=("$(rel "${cmd[@]}")")
log "3/6 bucket sweep (2 ranks)"
"${cmd[@]}" >"$RESULTS/buckets.json" || die "bench_ddp buckets failed"

# --- 3. ddp-train (2 ranks) vs PyTorch DDP vs ddp-train (1 rank), alternating
CONFIG_ARGS=()
if [[ -f $ROOT/configs/default.yaml ]]; then
  CONFIG_ARGS=(--config "$ROOT/configs/default.yaml")
fi
# The benchmark job (configs/default.yaml's, but an MLP [256, 256] where the file now says
# [512, 512], and other warm-up / logging periods), pinned on the command line so that the
# comparison never drifts from what torch_ddp_peer.py does.
TRAIN_SET=(
  --set data.name=synthetic_classification --set data.num_features=64
  --set data.num_classes=10 --set model.name=mlp --set "model.hidden_sizes=[256,256]"
  --set model.dropout=0.0 --set model.device=cpu --set trainer.batch_size=64
  --set optimizer.name=adamw --set optimizer.lr=0.001 --set optimizer.weight_decay=0.01
  --set scheduler.name=cosine --set scheduler.warmup_steps=32 --set scheduler.min_lr=0.00001
  --set trainer.gradient_clip_val=1.0 --set "trainer.log_every_n_steps=$LOG_EVERY"
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
# The build must accept the config file as it is now (configs/ evolves with the code).
if ! err=$("$BIN/ddp-train" "${CONFIG_ARGS[@]}" "${TRAIN_SET[@]}" --print-config 2>&1 >/dev/null); then
  die "ddp-train in $BIN rejects the training settings (stale build? rebuild ddp-train):
$err"
fi
# Three jobs per round, in this order: ddp-train at 2 ranks (the target), the PyTorch DDP
# peer at 2 ranks, and ddp-train at 1 rank (scaling). (The former third job, ddp-train with
# --mca mpi_yield_when_idle 1, is gone: MpiRuntime now sets that itself unless the user did.)
run_ddp_train() {  # $1: kind (ddp: 2 ranks | ddp1: 1 rank), $2: run order
  local kind=$1 ord=$2 np=2
  [[ $kind == ddp1 ]] && np=1
  local summary=$RESULTS/train_${ord}_${kind}.json
  local cmd=("${MPI[@]}" -np "$np" "$BIN/ddp-train" "${CONFIG_ARGS[@]}" "${TRAIN_SET[@]}"
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
             --steps "$TRAIN_STEPS" --warmup "$TORCH_WARMUP" --loss-every "$LOG_EVERY")
  ((round == 0)) && COMMANDS+=("MASTER_ADDR=127.0.0.1 MASTER_PORT=<free port> $(rel "${cmd[@]}")")
  "${cmd[@]}" >"$RESULTS/train_${ord}_torch.json" 2>"$RESULTS/train_${ord}_torch.log" ||
    die "PyTorch DDP peer failed; see $RESULTS/train_${ord}_torch.log"
}
log "4/6 training: $TRAIN_ROUNDS rounds x (ddp-train 2 ranks, PyTorch DDP, ddp-train 1 rank) x $TRAIN_STEPS steps"
order=0
for ((round = 0; round < TRAIN_ROUNDS; ++round)); do
  run_ddp_train ddp "$order"
  run_torch "$((order + 1))"
  run_ddp_train ddp1 "$((order + 2))"
  order=$((order + 3))
  log "   round $((round + 1))/$TRAIN_ROUNDS done"
done

# --- 5. checkpoints (its own script: results in $RESULTS/checkpoint, its own page)
CHECKPOINT=skipped
if ((SKIP_CHECKPOINT)); then
  log "5/6 checkpoints: skipped (BENCH_SKIP_CHECKPOINT=1)"
else
  log "5/6 checkpoints: bench/checkpoint_bench.sh (log: $RESULTS/checkpoint_bench.log)"
  if ((QUICK)); then
    COMMANDS+=("BENCH_QUICK=1 bash bench/checkpoint_bench.sh <build>")
  else
    COMMANDS+=("bash bench/checkpoint_bench.sh <build>")
  fi
  if BENCH_QUICK=$QUICK BENCH_PYTHON=$PY MPIRUN=$MPIRUN_BIN \
      bash "$ROOT/bench/checkpoint_bench.sh" "$BUILD" >"$RESULTS/checkpoint_bench.log" 2>&1; then
    CHECKPOINT=ran
  else
    CHECKPOINT=failed
    tail -20 "$RESULTS/checkpoint_bench.log" >&2
    log "checkpoint_bench.sh failed (see $RESULTS/checkpoint_bench.log); reporting the rest"
  fi
fi

# --- figures (optional: plot.py exits 3 without matplotlib)
log "6/6 figures and report"
PNG="" LOSS_PNG=""
if "$PY" "$ROOT/bench/plot.py" allreduce "$RESULTS" "$ROOT/docs/allreduce_bandwidth.png"; then
  PNG=$ROOT/docs/allreduce_bandwidth.png
else
  log "no all-reduce figure (matplotlib missing? apt-get install python3-matplotlib)"
fi
if "$PY" "$ROOT/bench/plot.py" loss "$RESULTS" "$ROOT/docs/loss_curve.png"; then
  LOSS_PNG=$ROOT/docs/loss_curve.png
else
  log "no loss-curve figure"
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
    "log_every": $LOG_EVERY,
    "allreduce_sweeps": $AR_SWEEPS,
    "plot_png": "$PNG",
    "loss_png": "$LOSS_PNG",
    "checkpoint": "$CHECKPOINT",
    "commands": os.environ["BENCH_META_COMMANDS"].splitlines(),
}
meta["loadavg_end"] = " ".join(meta["loadavg_end"])
json.dump(meta, open(sys.argv[1], "w"), indent=2)
EOF
"$PY" "$ROOT/bench/report.py" "$RESULTS" "$ROOT/docs/performance.md"
# A failed checkpoint benchmark still leaves the rest reported, then fails the command.
[[ $CHECKPOINT != failed ]] || die "checkpoint_bench.sh failed; see $RESULTS/checkpoint_bench.log"
