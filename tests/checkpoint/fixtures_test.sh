#!/usr/bin/env bash
# Checkpoints kept from earlier builds (tests/checkpoint/fixtures) still verify, inspect,
# convert to Lightning, and resume with today's build.
# Usage: fixtures_test.sh <bin_dir> <source_dir>
set -uo pipefail
bin=$1
src=$2
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
model=(--config "$src/configs/default.yaml" --set trainer.max_epochs=-1
       --set data.num_samples=256 --set data.num_features=8 --set data.num_classes=3
       --set model.hidden_sizes=[4] --set trainer.batch_size=16
       --set trainer.check_val_every_n_epoch=0 --set trainer.progress_bar=off
       --set scheduler.name=none --set "trainer.default_root_dir=$work/runs")
n=0
for fixture in "$src"/tests/checkpoint/fixtures/*.h5; do
  name=$(basename "$fixture" .h5)
  n=$((n + 1))
  # A copy: the fixtures are never written to, not even by a resumed run's housekeeping.
  mkdir -p "$work/$name"
  cp "$fixture" "$fixture.sum" "$work/$name/"
  file=$work/$name/$name.h5
  "$bin/ddp-checkpoint" verify "$file" >"$work/$name.verify" 2>&1 ||
    { fail "$name: verify"; cat "$work/$name.verify"; }
  grep -q "whole-file checksum verified" "$work/$name.verify" ||
    fail "$name: the sidecar was not used"
  "$bin/ddp-checkpoint" inspect "$file" >"$work/$name.inspect" 2>&1 ||
    { fail "$name: inspect"; cat "$work/$name.inspect"; }
  /usr/bin/python3 "$src/tools/ckpt_to_lightning.py" "$file" "$work/$name.ckpt" \
    >"$work/$name.convert" 2>&1 || { fail "$name: ckpt_to_lightning"; cat "$work/$name.convert"; }
  case $name in
    adamw*) opt=(--set optimizer.name=adamw) ;;
    sgd*) opt=(--set optimizer.name=sgd --set optimizer.momentum=0.9) ;;
    *) opt=(--set optimizer.name=adamw) ;;
  esac
  log=$work/$name.resume
  timeout 120 "$bin/ddp-train" "${model[@]}" "${opt[@]}" --set trainer.max_steps=6 \
    --set "checkpoint.dirpath=$work/$name/out" --resume "$file" >"$log" 2>&1 ||
    { fail "$name: resume exited $?"; cat "$log"; }
  grep -q "resumed from '$file' at step 4" "$log" || { fail "$name: did not resume at step 4"; cat "$log"; }
  if [[ $name == weights-only* ]]; then
    grep -q "weights only" "$log" || fail "$name: not resumed as weights only"
    grep -q "done: 6 steps" "$log" || fail "$name: a weights-only start should train 6 steps"
  else
    grep -q "done: 6 steps" "$log" || fail "$name: did not continue to step 6"
  fi
done
((n >= 4)) || fail "only $n fixtures found"
if ((failures)); then echo "checkpoint_fixtures: $failures failure(s)"; exit 1; fi
echo "checkpoint_fixtures: $n checkpoints from earlier builds verify, inspect, convert and resume"
