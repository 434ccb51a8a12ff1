#!/usr/bin/env bash
# CMake consumer test (HighFive's tests/cmake_integration habit): install this build into a
# temporary prefix, build examples/custom_model against it with find_package(ddp_runtime), and
# train the user's model for a few steps on 2 ranks.
# Usage: custom_model_consumer.sh <build_dir> <source_dir>
set -euo pipefail
build=$1
src=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cmake --install "$build" --prefix "$work/prefix" >/dev/null
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S "$src/examples/custom_model" -B "$work/build" -DCMAKE_PREFIX_PATH="$work/prefix" \
      -DCMAKE_BUILD_TYPE=RelWithDebInfo "${launcher[@]}" >/dev/null
cmake --build "$work/build" -j2 >/dev/null
out=$(cd "$work" && OMP_NUM_THREADS=1 mpirun --allow-run-as-root --oversubscribe -np 2 \
      "$work/build/my-train" --config "$src/examples/custom_model/config.yaml" \
      --set trainer.max_steps=3 --set trainer.default_root_dir="$work/runs" \
      --set trainer.progress_bar=off 2>&1)
echo "$out"
grep -q "model my_model" <<<"$out" || { echo "FAIL: my_model was not the trained model"; exit 1; }
grep -q "done: 3 steps" <<<"$out" || { echo "FAIL: run did not finish 3 steps"; exit 1; }
echo "custom model consumer: OK"
