#!/usr/bin/env bash
# Checkpoint benchmark: save throughput vs raw write+fsync, save time vs torch.save, async stall
# vs a synchronous save (through the Trainer), rank 0 peak memory during a save, resume vs a raw
# read. Prints the table and rewrites docs/performance-checkpoint.md.
#
#   bash bench/checkpoint_bench.sh [build_dir]          # full: about 2-5 minutes
#   BENCH_QUICK=1 bash bench/checkpoint_bench.sh ...    # about 1.5-3 minutes, 3 rounds
#
# build_dir (default: build) must hold bin/bench_checkpoint; it is built there if missing.
# Raw results go to <build_dir>/bench-results/checkpoint/; checkpoint files to
# BENCH_CKPT_DIR (default <build_dir>/bench-results/checkpoint/data, i.e. the build's disk).
# Every figure is a ratio against a peer measured in the same run (alternating, medians).
#
# Environment: BENCH_QUICK=1, BENCH_PYTHON (default /usr/bin/python3: Python with torch for the
# torch.save peer), MPIRUN (default mpirun), BENCH_CKPT_DIR, BENCH_DROP_CACHES=0 to never drop
# the page cache (it is dropped before each resume / raw read where permitted).
set -euo pipefail

die() { echo "bench/checkpoint_bench.sh: error: $*" >&2; exit 1; }
log() { echo "bench/checkpoint_bench.sh: $*" >&2; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_ARG=${1:-build}
if [[ -d $BUILD_ARG ]]; then
  BUILD=$(cd "$BUILD_ARG" && pwd)
elif [[ -d $ROOT/$BUILD_ARG ]]; then
  BUILD=$(cd "$ROOT/$BUILD_ARG" && pwd)
else
  die "build directory '$BUILD_ARG' does not exist. Configure first:
  cmake -S $ROOT -B $BUILD_ARG -DDDP_BUILD_TESTS=OFF"
fi
BIN=$BUILD/bin
if [[ ! -x $BIN/bench_checkpoint ]]; then
  log "building bench_checkpoint in $BUILD"
  cmake --build "$BUILD" -j2 --target bench_checkpoint >&2 || die "build of bench_checkpoint failed"
fi

PY=${BENCH_PYTHON:-/usr/bin/python3}
MPIRUN_BIN=${MPIRUN:-mpirun}
command -v "$MPIRUN_BIN" >/dev/null || die "'$MPIRUN_BIN' not found (Open MPI's launcher)"
[[ -x $PY ]] || die "'$PY' not found (set BENCH_PYTHON to a Python with PyTorch)"
"$PY" -c 'import torch' 2>/dev/null || die "'$PY' cannot import torch (needed for the torch.save peer)"

QUICK=${BENCH_QUICK:-0}
[[ $QUICK == 1 ]] || QUICK=0
if ((QUICK)); then
  ROUNDS2=3 ROUNDS1=3
else
  ROUNDS2=7 ROUNDS1=5
fi
DROP=${BENCH_DROP_CACHES:-1}

MPI=("$MPIRUN_BIN" --oversubscribe --bind-to none -x OMP_NUM_THREADS=1)
[[ $(id -u) == 0 ]] && MPI+=(--allow-run-as-root)
export OMP_NUM_THREADS=1

RESULTS=$BUILD/bench-results/checkpoint
DATA=${BENCH_CKPT_DIR:-$RESULTS/data}
rm -rf "$RESULTS"
mkdir -p "$RESULTS"
COMMANDS=()
rel() { local s="$*"; s=${s//$DATA/<data>}; s=${s//$BUILD/<build>}; s=${s//$RESULTS/<results>}; echo "${s//$ROOT\//}"; }

START=$(date +%s)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "results in $RESULTS ($( ((QUICK)) && echo quick || echo full) mode), files in $DATA"

COMMON=(--python "$PY" --peer "$ROOT/bench/torch_save_peer.py" --drop-caches "$DROP")

cmd=("${MPI[@]}" -np 2 "$BIN/bench_checkpoint" --dir "$DATA" --rounds "$ROUNDS2" "${COMMON[@]}")
COMMANDS+=("$(rel "${cmd[@]}")")
log "1/2 two ranks: save, resume, phases, async stall ($ROUNDS2 rounds)"
"${cmd[@]}" >"$RESULTS/np2.json" 2>"$RESULTS/np2.log" || { tail -20 "$RESULTS/np2.log" >&2; die "bench_checkpoint -np 2 failed; see $RESULTS/np2.log"; }

cmd=("${MPI[@]}" -np 1 "$BIN/bench_checkpoint" --dir "$DATA" --rounds "$ROUNDS1" --only save --phases 0 "${COMMON[@]}")
COMMANDS+=("$(rel "${cmd[@]}")")
log "2/2 one rank: save, resume ($ROUNDS1 rounds)"
"${cmd[@]}" >"$RESULTS/np1.json" 2>"$RESULTS/np1.log" || { tail -20 "$RESULTS/np1.log" >&2; die "bench_checkpoint -np 1 failed; see $RESULTS/np1.log"; }
rm -rf "$DATA"

END=$(date +%s)
INVOCATION="bash bench/checkpoint_bench.sh $BUILD_ARG"
if ((QUICK)); then INVOCATION="BENCH_QUICK=1 $INVOCATION"; fi
export BENCH_COMMANDS BENCH_INVOCATION=$INVOCATION BENCH_LOAD_START=$LOAD_START
export BENCH_WALL=$((END - START)) BENCH_QUICK_MODE=$QUICK BENCH_MPIRUN=$MPIRUN_BIN
BENCH_COMMANDS=$(printf '%s\n' "${COMMANDS[@]}")

"$PY" - "$RESULTS" "$ROOT/docs/performance-checkpoint.md" <<'EOF'
import json, os, re, subprocess, sys

results, doc_path = sys.argv[1], sys.argv[2]
np2 = json.load(open(os.path.join(results, "np2.json")))
np1 = json.load(open(os.path.join(results, "np1.json")))
env = os.environ

cpu = "unknown CPU"
with open("/proc/cpuinfo") as f:
    for line in f:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
mpi = subprocess.run([env["BENCH_MPIRUN"], "--version"], capture_output=True, text=True).stdout
import torch  # the peer's torch
date = subprocess.run(["date", "-Iseconds"], capture_output=True, text=True).stdout.strip()
load_end = " ".join(open("/proc/loadavg").read().split()[:3])
mb = 1e6
MiB = 1024 * 1024

def med(d, *keys):
    for k in keys:
        d = d[k]
    return d["median"]

rows = []  # (measure, ours, peer, ratio, target, met)
def row(name, ours, peer, ratio, target, met):
    rows.append((name, ours, peer, ratio, target, met))

s2, s1 = np2["save"], np1["save"]
r2, r1 = np2["resume"], np1["resume"]
st = np2["stall"]
fb = np2["file_bytes"]
for tag, s, n in (("2 ranks", s2, np2), ("1 rank", s1, np1)):
    ratio = s["throughput_ratio_ours_vs_raw"]
    row(f"1. save throughput vs raw write+fsync ({tag})",
        f"{s['throughput_ours_MBps']:.0f} MB/s ({med(s, 'ours'):.3f} s)",
        f"{s['throughput_raw_MBps']:.0f} MB/s ({med(s, 'raw'):.3f} s)",
        f"{ratio:.2f}x", ">= 0.9x", ratio >= 0.9)
for tag, s in (("2 ranks", s2), ("1 rank", s1)):
    if "torch_fsync" in s:
        ratio = s["time_ratio_ours_vs_torch_fsync"]
        row(f"2. save time vs torch.save + fsync ({tag})", f"{med(s, 'ours'):.3f} s",
            f"{med(s, 'torch_fsync'):.3f} s", f"{ratio:.2f}x", "<= 0.7x", ratio <= 0.7)
        ratio = s["time_ratio_ours_vs_torch_nofsync"]
        row(f"2'. save time vs torch.save, no fsync ({tag})", f"{med(s, 'ours'):.3f} s",
            f"{med(s, 'torch_nofsync'):.3f} s", f"{ratio:.2f}x", "(info)", None)
ratio = st["stall_ratio_async_vs_sync"]
row("3. async save stall vs sync save (Trainer, 2 ranks)", f"{med(st, 'async'):.4f} s",
    f"{med(st, 'sync'):.3f} s", f"{ratio * 100:.1f}%", "<= 5%", ratio <= 0.05)
if "next_step_slowdown_async_s" in st:
    slow = st["next_step_slowdown_async_s"]
    row("3'. async save: stall + slowdown of the next step vs sync save (2 ranks)",
        f"{med(st, 'async') + slow:.4f} s", f"{med(st, 'sync'):.3f} s",
        f"{(med(st, 'async') + slow) / med(st, 'sync') * 100:.1f}%", "(info)", None)
for tag, n in (("2 ranks", np2), ("1 rank", np1)):
    m = n["save"]["rank0_memory"]
    row(f"4. rank 0 extra memory during a save ({tag}, chunk_mb {n['chunk_mb']:g})",
        f"{m['extra_bytes'] / mb:.0f} MB", f"state {n['state_bytes'] / mb:.0f} MB",
        f"{m['extra_vs_state']:.2f}x state = {m['extra_vs_chunk']:.1f}x chunk", "(report)", None)
for tag, r in (("2 ranks", r2), ("1 rank", r1)):
    cold = "cold cache" if r["page_cache_dropped"] else "page cache (not dropped)"
    row(f"5. resume (read + load) vs raw read ({tag}, {cold})", f"{med(r, 'resume'):.3f} s",
        f"{med(r, 'raw_read'):.3f} s", f"{r['time_ratio_resume_vs_raw_read']:.2f}x", "(report)", None)

def verdict(met):
    return "" if met is None else ("met" if met else "**NOT met**")

table = ["| measure | ours | peer | ratio | target | |", "|---|---|---|---|---|---|"]
for name, ours, peer, ratio, target, met in rows:
    table.append(f"| {name} | {ours} | {peer} | {ratio} | {target} | {verdict(met)} |")

ph = np2.get("phases")
phase_lines = []
if ph:
    share0 = np2["share_bytes"][0]
    names = [
        ("snapshot_alloc_copy", f"snapshot: allocate + zero + copy the rank's share ({share0 / mb:.0f} MB on rank 0), slowest rank"),
        ("snapshot_xxh3", "snapshot: xxh3 of the share, slowest rank"),
        ("gather", f"gather of rank 1's share to rank 0 in {np2['chunk_mb']:g} MiB rounds (no write)"),
        ("h5_write_close", f"HDF5 write of all {np2['tensors']} tensors + close, from memory (rank 0, no fsync)"),
        ("fsync", "fsync of that file"),
        ("hash_file_cached", "whole-file checksum reading every block (hash_file, page cache, 2 threads here)"),
        ("commit_after_fsync", "commit_checkpoint after that fsync, without the writer's block digests (hash again + sidecar + renames + dir fsyncs + latest.json)"),
    ]
    phase_lines = ["| phase | median s | min s |", "|---|---|---|"]
    for key, label in names:
        phase_lines.append(f"| {label} | {ph[key]['median']:.3f} | {ph[key]['min']:.3f} |")
    phase_lines.append(f"| (whole save, for reference: snapshot / finish) | "
                       f"{med(s2, 'ours_snapshot'):.3f} / {med(s2, 'ours_finish'):.3f} | |")
    phase_lines.append(f"| (raw write+fsync of {fb / mb:.0f} MB, for reference) | {med(s2, 'raw'):.3f} | |")

touch = np2.get("touch_GBps", {})
touch_lines = []
if touch:
    touch_lines.append(f"- memory bandwidth on rank 0: first touch of freshly mmapped pages {touch['first_touch']:.2f} GB/s, "
                       f"rewriting the same pages {touch['rewrite']:.1f} GB/s")
for tag, s, r in (("2 ranks", s2, r2), ("1 rank", s1, r1)):
    if "rank0_first_touch_bytes_ours" in s:
        touch_lines.append(f"- fresh anonymous memory first-touched by rank 0 ({tag}; minor faults x page size): "
                           f"one save {med(s, 'rank0_first_touch_bytes_ours') / mb:.0f} MB, "
                           f"the raw write {med(s, 'rank0_first_touch_bytes_raw') / mb:.0f} MB, "
                           f"one resume {med(r, 'rank0_first_touch_bytes') / mb:.0f} MB "
                           f"(state {np2['state_bytes'] / mb:.0f} MB)")

all_met = all(m for *_, m in rows if m is not None)
met_list = [f"- {name}: {ratio} (target {target}) — {verdict(met)}"
            for name, _, _, ratio, target, met in rows if met is not None]

# Keep the hand-written analysis (between markers) across runs.
analysis = ("_No analysis written yet for this run._")
if os.path.exists(doc_path):
    old = open(doc_path).read()
    m = re.search(r"<!-- analysis:begin -->\n(.*?)<!-- analysis:end -->", old, re.S)
    if m:
        analysis = m.group(1).rstrip()

mem2 = np2["save"]["rank0_memory"]


def warm_text(run, variant):
    times = run["save"].get("warmup_rounds_untimed", {}).get(variant, [])
    return ", ".join(f"{x:.3f}" for x in times) or "none"


doc = f"""# Checkpoint performance

Produced by `{env['BENCH_INVOCATION']}` (bench/checkpoint_bench.sh, bench/bench_checkpoint.cpp,
bench/torch_save_peer.py). Every figure is a ratio against a peer measured in the same run, in
alternating rounds whose order rotates; times are medians ({np2['rounds']} rounds at 2 ranks,
{np1['rounds']} at 1 rank). Re-running the script rewrites everything but the analysis section.

## Run

- date: {date}; wall time {env['BENCH_WALL']} s ({'quick' if env['BENCH_QUICK_MODE'] == '1' else 'full'} mode)
- machine: {len(os.sched_getaffinity(0))} CPUs ({cpu}); load average before {env['BENCH_LOAD_START']}, after {load_end}
- {(mpi.splitlines() or ['mpirun ?'])[0]}; LibTorch (C++) and python torch {torch.__version__}; HDF5 as linked
- state: MLP {np2['features']} -> {np2['hidden']} -> 10 with AdamW after one step: {np2['tensors']} tensors,
  {np2['state_bytes'] / mb:.1f} MB ({np2['param_bytes'] / mb:.1f} MB parameters + exp_avg + exp_avg_sq + step);
  checkpoint file {fb / mb:.1f} MB; shares per rank at 2 ranks: {', '.join(f'{b / mb:.1f}' for b in np2['share_bytes'])} MB;
  checkpoint.chunk_mb {np2['chunk_mb']:g}
- files written to one directory of the build's file system (`<data>` below), fsync included
- commands:
```
{env['BENCH_COMMANDS'].strip()}
```

## Results

{chr(10).join(table)}

Targets: {'all met' if all_met else 'not all met'}.
{chr(10).join(met_list)}

What is measured:
1. **ours** = the real save path (`model_sources` + `optimizer_sources`, `ckpt::snapshot_for_save`,
   `PendingSave::finish` over an `MpiCommunicator`: gather to rank 0, HDF5 write, fsync + whole-file
   checksum, sidecar, rename, directory fsyncs, `latest.json`), from a barrier until every rank has
   returned. **raw** = rank 0 writes the checkpoint file's byte count from memory in 4 MiB `write`s,
   `fsync`, `close`. Throughput ratio = raw time / our time (same bytes). The first save of each
   run (the resume file) is untimed, and so are the first {np2.get('warmup', 0)} rounds of every
   variant (warm-up, as nccl-tests' warm-up iterations: the first saves after start-up are slow
   for every variant on this machine). Their times, s, at 2 ranks: ours {warm_text(np2, 'ours')},
   raw {warm_text(np2, 'raw')}; at 1 rank: ours {warm_text(np1, 'ours')}, raw {warm_text(np1, 'raw')}.
2. **torch.save** of a dict with the same tensor names, shapes and dtypes (bench/torch_save_peer.py,
   a child of rank 0 kept alive between rounds), with `flush` + `os.fsync` (the fair comparison) and
   without (data left in the page cache; shown for information).
3. Two `Trainer`s with the same model after one AdamW step, `checkpoint.async` true / false;
   `Checkpointer::save_now`, then the next training step as the loop runs it (forward + backward
   of a batch of {np2.get('batch_size', 4)}, `Checkpointer::before_update`, `optimizer.step`), then
   `last_stall_s()` (slowest rank): every second the training thread spent blocked by the save.
   Async: metadata + `snapshot_for_save` (buffers only) + the wait in `before_update` for the
   copy of parameters and optimizer state, which runs during that forward/backward on the save's
   thread (the training thread takes over what is left); sync: the whole save (with retention:
   keep_last_n=1, save_top_k=1 remove the previous file). The async save's background part
   ({med(st, 'async_background_after_stall'):.3f} s median) is waited for outside the figure.
   3'. (stricter, info) adds how much slower that next step ran than one without a save
   ({med(st, 'next_step_none'):.3f} s alone, {med(st, 'next_step_async'):.3f} s after an async
   save): the background copy and gather share the CPU with it.
4. Rank 0 during each **ours** save: peak RSS (VmHWM after resetting it through `/proc/self/clear_refs`,
   minus VmRSS just before; cross-checked on the untimed first save against a 1 ms RSS sampler:
   {mem2['cross_check_hwm'] / mb:.0f} MB by VmHWM, {mem2['cross_check_sampled'] / mb:.0f} MB sampled).
5. Every rank: `ckpt::read_checkpoint` (rank 0 verifies the whole-file checksum, as
   `Checkpointer::resume`) + `load_model_state` + `load_optimizer_state`, until every rank is done;
   peer: rank 0 reads the file sequentially in 4 MiB `read`s. Page cache dropped before each:
   {'yes' if r2['page_cache_dropped'] else 'no (not permitted): both read from the page cache'}.

## Phase breakdown of a save (2 ranks, 3 repetitions, not alternated)

{chr(10).join(phase_lines) if phase_lines else '(not measured)'}

{chr(10).join(touch_lines)}

## Analysis

<!-- analysis:begin -->
{analysis}
<!-- analysis:end -->

## Caveats

- One shared, noisy machine ({len(os.sched_getaffinity(0))} cores, load average {env['BENCH_LOAD_START']} before the run):
  other jobs compete for CPU and the disk. Alternation and medians make the ratios fair between
  variants, not the absolute times reproducible; see min/max in the raw JSON.
- Two ranks on two cores: the background part of an async save competes with training for CPU
  (not in figure 3, which is the stall only; figure 3' counts it for the next step).
- The disk is whatever backs the build directory (a virtual disk here); fsync cost depends on it.
- The page cache of the whole machine is dropped before each resume / raw read (cold reads);
  `BENCH_DROP_CACHES=0` avoids that on a machine shared with others (reads then hit the cache).
- Raw results: `<build>/bench-results/checkpoint/np2.json`, `np1.json` (all samples).
"""
with open(doc_path, "w") as f:
    f.write(doc)

print()
print("\n".join(table))
if phase_lines:
    print()
    print("\n".join(phase_lines))
print(f"\nwrote {doc_path}")
EOF
log "done in $(( $(date +%s) - START )) s"
