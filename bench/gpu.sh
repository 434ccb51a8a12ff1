#!/usr/bin/env bash
# The GPU checks in one command, on a machine with an NVIDIA GPU and PyTorch built with CUDA:
# builds ddp-runtime against the LibTorch inside that PyTorch (NCCL from /usr/local/cuda, or
# else from the wheel's nvidia-nccl package), runs the GPU tests, measures the GPU figures,
# and writes docs/performance-gpu.md (date, GPU, tests, figures).
#
#   bash bench/gpu.sh [build_dir]          # default: build-gpu
#
# Measured (ratios against a peer in the same run, alternating, medians):
#   - DDP engine overhead at world size 1 on the GPU: bench_ddp overhead --device cuda
#     (DdpEngine step vs the plain LibTorch loop on the same MLP);
#   - checkpoint snapshot bandwidth, GPU -> page-locked host memory on a side stream (the path
#     a save takes), vs the same copy into pageable memory: bench_ddp snapshot.
# Tests: test_gpu_mpi (CUDA training through NCCL vs CPU, bf16-mixed / 16-mixed and the loss
# scaler's checkpoint, GPU <-> CPU checkpoints, pinned snapshots), test_mixed_precision,
# test_resume_mpi, test_sharded_save_mpi, all at world size 1 (one GPU per rank).
#
# Environment: PYTHON (default python3; must import torch with CUDA), MPIRUN (default mpirun),
# DEPS_PREFIX (a folder with Open MPI / HDF5 / yaml-cpp / ... development files unpacked from
# Debian or Ubuntu packages, for machines without them: added to CMAKE_PREFIX_PATH, and its
# usr/include and usr/lib/x86_64-linux-gnu to the search paths).
set -euo pipefail

die() { echo "bench/gpu.sh: error: $*" >&2; exit 1; }
log() { echo "bench/gpu.sh: $*" >&2; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${1:-build-gpu}
[[ $BUILD = /* ]] || BUILD=$ROOT/$BUILD
PY=${PYTHON:-python3}
MPIRUN_BIN=${MPIRUN:-mpirun}

command -v nvidia-smi >/dev/null || die "nvidia-smi not found: this script needs an NVIDIA GPU"
GPU=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1)
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' ||
  die "'$PY' cannot use CUDA through torch (set PYTHON to a Python with a CUDA PyTorch)"
TORCH_PREFIX=$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')
TORCH_VERSION=$("$PY" -c 'import torch; print(torch.__version__)')
CXX_STD=17
"$PY" - <<'EOF' || CXX_STD=20
import sys, torch
major, minor = (int(x) for x in torch.__version__.split(".")[:2])
sys.exit(0 if (major, minor) < (2, 14) else 1)  # LibTorch 2.14+ headers need C++20
EOF
command -v "$MPIRUN_BIN" >/dev/null || die "'$MPIRUN_BIN' not found (Open MPI's launcher)"

# NCCL: the CUDA toolkit's, else the one the torch wheel depends on (nvidia-nccl-cu*), which
# ships libnccl.so.2 only: the linker gets an unversioned link in the build directory.
mkdir -p "$BUILD"
if [[ ! -f /usr/local/cuda/include/nccl.h && -z ${NCCL_HOME:-} ]]; then
  wheel_nccl=$("$PY" -c 'import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__file__))' \
               2>/dev/null || true)
  [[ -n $wheel_nccl && -f $wheel_nccl/include/nccl.h ]] ||
    die "no NCCL: neither /usr/local/cuda/include/nccl.h nor the wheel's nvidia-nccl package"
  mkdir -p "$BUILD/nccl/lib"
  ln -sfn "$wheel_nccl/include" "$BUILD/nccl/include"
  ln -sf "$wheel_nccl/lib/libnccl.so.2" "$BUILD/nccl/lib/libnccl.so"
  ln -sf "$wheel_nccl/lib/libnccl.so.2" "$BUILD/nccl/lib/libnccl.so.2"
  export NCCL_HOME=$BUILD/nccl
fi
PREFIX_PATH=$TORCH_PREFIX
if [[ -n ${DEPS_PREFIX:-} ]]; then
  PREFIX_PATH="$PREFIX_PATH;$DEPS_PREFIX;$DEPS_PREFIX/usr"
  export CPATH=$DEPS_PREFIX/usr/include:$DEPS_PREFIX/usr/include/hdf5/serial${CPATH:+:$CPATH}
  export LIBRARY_PATH=$DEPS_PREFIX/usr/lib/x86_64-linux-gnu${LIBRARY_PATH:+:$LIBRARY_PATH}
  export LD_LIBRARY_PATH=$DEPS_PREFIX/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  export PATH=$DEPS_PREFIX/usr/bin:$PATH
fi

START=$(date +%s)
log "building into $BUILD against torch $TORCH_VERSION (C++$CXX_STD) on $GPU"
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DDDP_WITH_NCCL=ON \
  -DCMAKE_CXX_STANDARD=$CXX_STD "-DCMAKE_PREFIX_PATH=$PREFIX_PATH" >/dev/null
TESTS=(test_gpu_mpi test_mixed_precision test_resume_mpi test_sharded_save_mpi)
cmake --build "$BUILD" -j"$(nproc)" --target "${TESTS[@]}" bench_ddp ddp-train

RESULTS=$BUILD/gpu-results
rm -rf "$RESULTS"
mkdir -p "$RESULTS"
MPI=("$MPIRUN_BIN" --bind-to none -x OMP_NUM_THREADS=1 -np 1)
[[ $(id -u) == 0 ]] && MPI=("$MPIRUN_BIN" --allow-run-as-root --bind-to none -x OMP_NUM_THREADS=1 -np 1)
export OMP_NUM_THREADS=1 DDP_BIN_DIR=$BUILD/bin DDP_SOURCE_DIR=$ROOT

failed=0
declare -A TEST_RESULT
for t in "${TESTS[@]}"; do
  log "test $t"
  if "${MPI[@]}" "$BUILD/bin/$t" --gtest_brief=1 >"$RESULTS/$t.log" 2>&1; then
    TEST_RESULT[$t]="passed: $(grep -o 'PASSED.*' "$RESULTS/$t.log" | tail -1)"
  else
    TEST_RESULT[$t]="FAILED (see $RESULTS/$t.log)"
    failed=1
  fi
  grep -q "SKIPPED" "$RESULTS/$t.log" && TEST_RESULT[$t]+=", some skipped"
done

log "figure: DDP engine overhead on the GPU (world size 1)"
"${MPI[@]}" "$BUILD/bin/bench_ddp" overhead --device cuda --rounds 41 --steps 100 \
  --warmup 50 >"$RESULTS/overhead_cuda.json"
log "figure: snapshot bandwidth GPU -> host (pinned vs pageable)"
"${MPI[@]}" "$BUILD/bin/bench_ddp" snapshot --rounds 11 --mb 1024 >"$RESULTS/snapshot.json"

OUT=$ROOT/docs/performance-gpu.md
export GPU TORCH_VERSION RESULTS START OUT
export TESTS_TEXT
TESTS_TEXT=$(for t in "${TESTS[@]}"; do echo "- \`$t\`: ${TEST_RESULT[$t]}"; done)
"$PY" - <<'EOF'
import json, os, statistics, subprocess, time
r = os.environ["RESULTS"]
ov = json.load(open(os.path.join(r, "overhead_cuda.json")))
sn = json.load(open(os.path.join(r, "snapshot.json")))
v = {x["name"]: x for x in ov["variants"]}
ratio = v["ddp"]["median_step_ms"] / v["plain"]["median_step_ms"]
lines = [
    "# GPU performance and tests",
    "",
    "Generated by `bash bench/gpu.sh` (rerun it on a GPU machine to refresh this page).",
    "",
    f"- Date: {time.strftime('%Y-%m-%dT%H:%M:%S%z')}",
    f"- GPU: {os.environ['GPU']}; PyTorch (LibTorch) {os.environ['TORCH_VERSION']}",
    f"- Wall time: {int(time.time()) - int(os.environ['START'])} s (build included)",
    "",
    "## Tests (world size 1)",
    "",
    os.environ["TESTS_TEXT"],
    "",
    "## Figures",
    "",
    "| measure | ours | peer | ratio | target |",
    "|---|---|---|---|---|",
    f"| DdpEngine step / plain LibTorch step, world size 1, MLP {ov['hidden']}, GPU | "
    f"{v['ddp']['median_step_ms']:.4f} ms | {v['plain']['median_step_ms']:.4f} ms | "
    f"{ratio:.3f}x | <= 1.03x: {'met' if ratio <= 1.03 else 'NOT met'} |",
    f"| checkpoint snapshot GPU -> host, {sn['bytes'] >> 20} MiB | pinned {sn['pinned_GBps']:.1f} GB/s "
    f"| pageable {sn['pageable_GBps']:.1f} GB/s | {sn['pinned_vs_pageable']:.2f}x | (report) |",
    "",
    "Raw JSON: `<build>/gpu-results/`.",
    "",
]
open(os.environ["OUT"], "w").write("\n".join(lines))
print("\n".join(lines))
EOF
log "wrote $OUT"
exit $failed
