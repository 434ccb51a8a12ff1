#!/usr/bin/env bash
# ZeRO stage 1 checkpoints as users meet them, with real processes:
#  1. a 4-rank stage-1 run saves ordinary checkpoints: `ddp-checkpoint verify` passes, the file
#     has a dataset per parameter and optimizer field (the layout a stage-0 run writes), its
#     metadata says zero_stage 1, and the Lightning export carries every parameter's state;
#  2. its step-20 checkpoint resumes with no conversion on (4 ranks, stage 1) bitwise equal to
#     the uninterrupted run, and on (2, stage 1), (3, stage 1), (2, stage 0) and (1, stage 0);
#     a 4-rank stage-0 checkpoint resumes on (3, stage 1). Each run ends at step 40 with Adam's
#     per-parameter step count 40: the optimizer state was carried, not restarted;
#  3. a stage-1 checkpoint whose optimizer bytes are damaged is skipped for the previous one;
#  4. kill -9 of one rank of a stage-1 job: every rank is gone within 2 x ddp.timeout_s, and
#     ddp-launch restarts it from the last checkpoint to the end.
# Usage: zero_resume_test.sh <bin_dir> <source_dir>
set -euo pipefail
bin=$1
src=$2
work=$(mktemp -d)
trap 'pkill -9 -f "$work" 2>/dev/null || true; rm -rf "$work"' EXIT
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
py=/usr/bin/python3
common=(--set trainer.max_steps=40 --set trainer.max_epochs=-1 --set trainer.batch_size=8
        --set data.num_samples=1200 --set data.num_features=11 --set data.num_classes=5
        --set model.hidden_sizes=[37,13] --set trainer.progress_bar=off
        --set trainer.check_val_every_n_epoch=0 --set trainer.log_every_n_steps=10
        --set optimizer.name=adam --set optimizer.lr=0.01 --set model.dropout=0.1
        --set checkpoint.every_n_train_steps=10 --set checkpoint.every_n_epochs=0
        --set checkpoint.save_top_k=-1 --set trainer.default_root_dir=$work)
train() {  # np, stage, name, extra args...
  local np=$1 stage=$2 name=$3
  shift 3
  mpirun --oversubscribe --bind-to none -np "$np" "$bin/ddp-train" "${common[@]}" \
      --set ddp.zero_stage="$stage" --set trainer.name="$name" "$@"
}
fail() { echo "FAIL: $*"; exit 1; }
# Adam's step count of every parameter in a checkpoint, one per line.
adam_steps() {
  "$py" - "$1" <<'EOF'
import sys, h5py
with h5py.File(sys.argv[1], "r") as f:
    steps = []
    f["optimizer"].visititems(lambda n, o: steps.append(int(o[()].reshape(-1)[0]))
                              if isinstance(o, h5py.Dataset) and n.endswith("/step") else None)
    print("\n".join(map(str, steps)))
EOF
}
expect_state_carried() {  # file, step: every parameter has state, at that step count
  local steps
  steps=$(adam_steps "$1" | sort -u)
  [[ $(adam_steps "$1" | wc -l) == 6 ]] || fail "$1: optimizer state for $(adam_steps "$1" | wc -l) of 6 parameters"
  [[ $steps == "$2" ]] || fail "$1: Adam's step counts are '$steps', expected $2 (state restarted?)"
}

# 1. The stage-1 reference run and its files.
train 4 1 straight >"$work/straight.log" 2>&1 || { cat "$work/straight.log"; fail "stage-1 run"; }
ck="$work/straight/checkpoints"
"$bin/ddp-checkpoint" verify "$ck" >/dev/null || fail "verify of the stage-1 checkpoints"
expect_state_carried "$ck/last.h5" 40
"$bin/ddp-checkpoint" inspect "$ck/last.h5" | grep -q 'optimizer  *adam, ZeRO stage 1' \
    || fail "inspect does not show zero_stage 1"
train 4 0 stage0 >"$work/stage0.log" 2>&1 || fail "stage-0 run"
"$py" - "$ck/last.h5" "$work/stage0/checkpoints/last.h5" <<'EOF' || fail "layouts differ"
import sys, h5py
def datasets(path):
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: out.__setitem__(n, (o.shape, o.dtype.str))
                     if isinstance(o, h5py.Dataset) and not n.startswith("meta") else None)
    return out
a, b = datasets(sys.argv[1]), datasets(sys.argv[2])
assert a == b, sorted(set(a.items()) ^ set(b.items()))
print(f"stage 1 and stage 0 files: the same {len(a)} datasets, shapes and dtypes")
EOF
"$py" "$src/tools/ckpt_to_lightning.py" "$ck/last.h5" "$work/export.ckpt" >/dev/null
"$py" - "$work/export.ckpt" <<'EOF' || fail "Lightning export of a stage-1 checkpoint"
import sys, torch
ck = torch.load(sys.argv[1])
state = ck["optimizer_states"][0]["state"]
assert len(state) == 6 and all(int(s["step"]) == 40 for s in state.values()), state.keys()
print("Lightning export: optimizer state for all 6 parameters")
EOF

# 2. Resume the step-20 checkpoint everywhere.
resume_from() {  # file, np, stage, name
  local file=$1 np=$2 stage=$3 name=$4
  train "$np" "$stage" "$name" --resume "$file" >"$work/$name.log" 2>&1 \
      || { tail -20 "$work/$name.log"; fail "resume on ($np, stage $stage)"; }
  grep -q "resumed from .* at step 20" "$work/$name.log" || fail "$name did not resume at 20"
  expect_state_carried "$work/$name/checkpoints/last.h5" 40
  echo "resumed the step-20 checkpoint on $np rank(s), stage $stage: ran to 40 with the state carried"
}
resume_from "$ck/epoch=0-step=20.h5" 4 1 same
diff_out=$("$bin/ddp-checkpoint" diff "$ck/last.h5" "$work/same/checkpoints/last.h5")
echo "$diff_out" | grep -q " 0 differ;" || { echo "$diff_out" | tail -3; fail "same world and stage: not bitwise"; }
for pair in "2 1" "3 1" "2 0" "1 0"; do
  set -- $pair
  resume_from "$ck/epoch=0-step=20.h5" "$1" "$2" "from1_np$1_s$2"
done
resume_from "$work/stage0/checkpoints/epoch=0-step=20.h5" 3 1 from0_np3_s1

# 3. Damaged optimizer bytes in the newest stage-1 checkpoint: the one before it is used.
mkdir -p "$work/damaged/checkpoints"
cp "$ck"/epoch=0-step=10.h5* "$ck"/epoch=0-step=20.h5* "$work/damaged/checkpoints/"
"$py" - "$work/damaged/checkpoints/epoch=0-step=20.h5" <<'EOF'
import sys, h5py
path = sys.argv[1]
with h5py.File(path, "r") as f:
    names = []
    f["optimizer"].visititems(lambda n, o: names.append(n) if n.endswith("exp_avg") else None)
    offset = f["optimizer"][names[0]].id.get_offset()
with open(path, "r+b") as f:
    f.seek(offset + 5)
    b = f.read(1)
    f.seek(offset + 5)
    f.write(bytes([b[0] ^ 0x40]))
EOF
train 2 1 damaged --resume auto >"$work/damaged.log" 2>&1 || { tail "$work/damaged.log"; fail "fallback run"; }
grep -q "step=20.h5' is not usable" "$work/damaged.log" || fail "the damaged file was not reported"
grep -q "resumed from .*step=10.h5' at step 10" "$work/damaged.log" || fail "no fallback to step 10"
expect_state_carried "$work/damaged/checkpoints/last.h5" 40
echo "damaged stage-1 checkpoint: reported, previous one resumed, finished with the state carried"

# 4. kill -9 of one rank of a stage-1 job under ddp-launch.
timeout_s=10
"$bin/ddp-launch" --max-restarts 1 --backoff 0.5 -- mpirun --oversubscribe --bind-to none -np 3 \
    "$bin/ddp-train" "${common[@]}" --set trainer.max_steps=600 --set ddp.zero_stage=1 \
    --set ddp.timeout_s=$timeout_s --set trainer.name=killed >"$work/killed.log" 2>&1 &
launcher=$!
for _ in $(seq 1 600); do
  s=$(sed -n 's/^step \([0-9]*\)\/.*/\1/p' "$work/killed.log" 2>/dev/null | tail -1)
  [[ -n $s && $s -ge 100 ]] && break
  sleep 0.05
done
victim=$(pgrep -f "^$bin/ddp-train.*trainer.name=killed" | sort -n | tail -1)
[[ -n $victim ]] || fail "no rank to kill"
t0=$(date +%s)
kill -9 "$victim"
while pgrep -f "^$bin/ddp-train.*trainer.name=killed" >/dev/null; do
  grep -q "attempt 2 of" "$work/killed.log" && break
  (( $(date +%s) - t0 > 2 * timeout_s )) && fail "ranks alive 2 x ddp.timeout_s after kill -9"
  sleep 0.05
done
wait "$launcher" || { tail -20 "$work/killed.log"; fail "ddp-launch did not finish the job"; }
grep -q "resumed from .* at step" "$work/killed.log" || fail "the restart did not resume"
grep -q "done: 600 steps" "$work/killed.log" || fail "the job did not finish"
"$bin/ddp-checkpoint" verify "$work/killed/checkpoints" >/dev/null || fail "verify after the kill"
expect_state_carried "$work/killed/checkpoints/last.h5" 600
echo "kill -9 of a stage-1 rank: all ranks gone after $(( $(date +%s) - t0 )) s or less, restarted, resumed, finished"
