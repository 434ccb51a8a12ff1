#!/usr/bin/python3
"""Turns bench/run.sh's raw results into the summary table and docs/performance.md.

    /usr/bin/python3 bench/report.py RESULTS_DIR OUTPUT_MD

RESULTS_DIR holds what run.sh collected:
- allreduce_<k>.csv (bench_allreduce, sweep k) and gloo_allreduce_<k>.csv (the gloo peer,
  sweep k), run alternately; an older single allreduce.csv is read too;
- overhead.json and buckets.json (bench_ddp);
- train_<k>_<kind>.json, one per training run in run order k: kind ddp (ddp-train, 2 ranks:
  its --summary), torch (the PyTorch DDP peer's JSON line), ddp1 (ddp-train, 1 rank);
- checkpoint/np2.json and np1.json (bench/checkpoint_bench.sh, which also writes
  docs/performance-checkpoint.md);
- meta.json (command, machine, settings, which figures were drawn).
Every piece is optional: what is missing is reported as "not measured". Prints the detail
tables and then the targets table on stdout; exits 0 whether or not the targets are met (the
table says which). plot.py imports the loaders below.
"""
import csv
import glob
import json
import os
import re
import statistics
import sys

# Targets of the issues (the table at the top of docs/performance.md). Ratios are
# "ours / peer" throughput with >= better, except time ratios, where <= is better.
ALLREDUCE_MIN_RATIO = 0.95      # MpiCommunicator throughput vs raw MPI_Allreduce, sizes >= 1 MiB
ALLREDUCE_FROM_BYTES = 1 << 20
OVERHEAD_MAX_RATIO = 1.03       # DDP step time / plain step time at world size 1
TRAIN_MIN_RATIO = 1.2           # ddp-train samples/s vs PyTorch DDP samples/s
AGREEMENT_MAX_FRACTION = 0.01   # per-step preemption all-reduce / training loop time
CKPT_SAVE_VS_RAW_MIN = 0.9      # save throughput / raw write+fsync throughput
CKPT_SAVE_VS_TORCH_MAX = 0.7    # save time / torch.save+fsync time
CKPT_STALL_MAX = 0.05           # async save stall / sync save time

MET, NOT_MET, REPORT, MISSING = "met", "NOT met", "report only", "not measured"

JOB_NAMES = {
    "ddp": "ddp-train, 2 ranks",
    "torch": "PyTorch DDP (gloo), 2 ranks",
    "ddp1": "ddp-train, 1 rank",
    "ddpyield": "ddp-train, mpi_yield_when_idle=1 (diagnostic)",  # results of older run.sh
}


# ----------------------------------------------------------------------------- loaders

def read_csv(path: str):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _median_or_none(values):
    return statistics.median(values) if values else None


def merge_allreduce(mpi_sweeps, gloo_sweeps):
    """Per message size: the median over sweeps of each sweep's per-call median, bus bandwidth
    from it, and throughput ratios (peer time / our time). gloo columns only where every gloo
    sweep has that size."""
    if not mpi_sweeps or not mpi_sweeps[0]:
        return []
    by_size = lambda sweep: {int(r["bytes"]): r for r in sweep}  # noqa: E731
    mpi = [by_size(s) for s in mpi_sweeps]
    gloo = [by_size(s) for s in gloo_sweeps if s]
    rows = []
    for nbytes in sorted(mpi[0]):
        if not all(nbytes in s for s in mpi):
            continue
        first = mpi[0][nbytes]
        n = int(first["world_size"])
        row = {"bytes": nbytes, "world_size": n, "iters": int(first["iters"]),
               "rounds": sum(int(s[nbytes]["rounds"]) for s in mpi), "sweeps": len(mpi)}
        keys = ["raw", "comm", "async"]
        for key in keys:
            row[f"{key}_us"] = statistics.median(float(s[nbytes][f"{key}_us"]) for s in mpi)
        if gloo and all(nbytes in s for s in gloo):
            row["gloo_us"] = statistics.median(float(s[nbytes]["gloo_us"]) for s in gloo)
            row["gloo_sweeps"] = len(gloo)
            keys.append("gloo")
        for key in keys:
            row[f"{key}_busbw_gbps"] = 2.0 * (n - 1) / n * nbytes / row[f"{key}_us"] / 1e3
        row["comm_vs_raw"] = row["raw_us"] / row["comm_us"]
        row["async_vs_raw"] = row["raw_us"] / row["async_us"]
        if "gloo_us" in row:
            row["comm_vs_gloo"] = row["gloo_us"] / row["comm_us"]
        rows.append(row)
    return rows


def _sweep_files(results: str, prefix: str):
    files = glob.glob(os.path.join(results, f"{prefix}_*.csv"))
    numbered = []
    for path in files:
        m = re.fullmatch(rf"{prefix}_(\d+)\.csv", os.path.basename(path))
        if m:
            numbered.append((int(m.group(1)), path))
    return [p for _, p in sorted(numbered)]


def load_allreduce(results: str):
    mpi_files = _sweep_files(results, "allreduce")
    if not mpi_files and os.path.exists(os.path.join(results, "allreduce.csv")):
        mpi_files = [os.path.join(results, "allreduce.csv")]
    mpi = [read_csv(p) for p in mpi_files]
    gloo = [read_csv(p) for p in _sweep_files(results, "gloo_allreduce")]
    return merge_allreduce(mpi, gloo)


def load_train_runs(results: str):
    """Every training run, in run order: {order, kind, json, sps}."""
    runs = []
    for path in glob.glob(os.path.join(results, "train_*_*.json")):
        m = re.fullmatch(r"train_(\d+)_(\w+)\.json", os.path.basename(path))
        if not m:
            continue
        try:
            with open(path) as f:
                data = json.load(f)
            sps = float(data["samples_per_s"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"report.py: skipping {path}: {e}", file=sys.stderr)
            continue
        runs.append({"order": int(m.group(1)), "kind": m.group(2), "json": data, "sps": sps})
    runs.sort(key=lambda r: r["order"])
    return runs


def metrics_csv_of(results: str, run):
    """metrics.csv of a ddp-train run (its summary's run_dir, else run.sh's naming)."""
    run_dir = run["json"].get("run_dir") or os.path.join(results, "runs", f"bench_{run['order']}")
    return os.path.join(run_dir, "metrics.csv")


def load_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------- formatting

def human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n} {unit}"
        n //= 1024
    return f"{n} TB"


def met(ok: bool) -> str:
    return MET if ok else NOT_MET


def md_table(header, rows) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def text_table(header, rows) -> str:
    cells = [list(map(str, header))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _get(d, *keys):
    """d[k0][k1]...; None where any level is missing (older bench_checkpoint JSON)."""
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


# ----------------------------------------------------------------------------- sections
# Each returns what the targets table and the page need; none raises on missing results.

def allreduce_section(results):
    rows = load_allreduce(results)
    out = {"rows": rows, "target": None, "gloo_target": None, "has_gloo": False}
    if not rows:
        return out
    big = [r for r in rows if r["bytes"] >= ALLREDUCE_FROM_BYTES] or rows
    worst = min(big, key=lambda r: r["comm_vs_raw"])
    out["worst"] = worst
    out["async_worst"] = min(r["async_vs_raw"] for r in big)
    out["has_gloo"] = all("gloo_us" in r for r in rows)
    header = ["size", "iters x rounds", "raw us", "comm us", "async us", "raw busbw GB/s",
              "comm busbw GB/s", "async busbw GB/s", "comm / raw", "async / raw"]
    if out["has_gloo"]:
        header += ["gloo us", "gloo busbw GB/s", "ours vs gloo"]
        gloo_worst = min(big, key=lambda r: r["comm_vs_gloo"])
        out["gloo_worst"] = gloo_worst
        out["gloo_best"] = max(big, key=lambda r: r["comm_vs_gloo"])
    table = []
    for r in rows:
        per_sweep = r["rounds"] // r["sweeps"]
        cells = [human_bytes(r["bytes"]), f"{r['iters']} x {per_sweep}" +
                 (f" x {r['sweeps']} sweeps" if r["sweeps"] > 1 else ""),
                 f"{r['raw_us']:.1f}", f"{r['comm_us']:.1f}", f"{r['async_us']:.1f}",
                 f"{r['raw_busbw_gbps']:.2f}", f"{r['comm_busbw_gbps']:.2f}",
                 f"{r['async_busbw_gbps']:.2f}", f"{r['comm_vs_raw']:.3f}",
                 f"{r['async_vs_raw']:.3f}"]
        if out["has_gloo"]:
            cells += [f"{r['gloo_us']:.1f}", f"{r['gloo_busbw_gbps']:.2f}",
                      f"{r['comm_vs_gloo']:.3f}"]
        table.append(cells)
    out["header"], out["table"] = header, table
    return out


def overhead_section(results):
    overhead = load_json(os.path.join(results, "overhead.json"))
    if not overhead:
        return None
    ov = {v["name"]: v for v in overhead["variants"]}
    plain = ov["plain"]["median_step_ms"]
    return {
        "data": overhead,
        "ratio": ov["ddp"]["median_step_ms"] / plain,
        "paired": statistics.median(d / p for d, p in zip(ov["ddp"]["step_ms"],
                                                          ov["plain"]["step_ms"])),
        "rows": [[v["name"], f"{v['median_step_ms']:.4f}", f"{v['median_step_ms'] / plain:.3f}"]
                 for v in overhead["variants"]],
    }


def agreement_section(results):
    """bench_ddp agreement: DDP steps with the trainer's per-step stop all-reduce vs without."""
    data = load_json(os.path.join(results, "agreement.json"))
    if not data:
        return None
    v = {x["name"]: x for x in data["variants"]}
    base, with_ = v["ddp"], v["ddp_agreement"]
    return {
        "data": data,
        "cost": with_["median_step_ms"] / base["median_step_ms"] - 1.0,
        "paired": statistics.median(a / b for a, b in zip(with_["step_ms"], base["step_ms"])) - 1.0,
        "us": (with_["median_step_ms"] - base["median_step_ms"]) * 1e3,
        "step_ms": base["median_step_ms"],
    }


def buckets_section(results):
    buckets = load_json(os.path.join(results, "buckets.json"))
    if not buckets:
        return None
    return {
        "data": buckets,
        "rows": [[v["name"], f"{v['bucket_cap_mb']:g}" if v["bucket_cap_mb"] < 1e5 else "all",
                  "on" if v["overlap"] else "off", v["num_buckets"],
                  v["buckets_launched_in_backward"], f"{v['median_step_ms']:.2f}",
                  f"{v['ratio_vs_no_overlap']:.3f}"] for v in buckets["variants"]],
    }


def train_section(results):
    runs = load_train_runs(results)
    sps = {k: [r["sps"] for r in runs if r["kind"] == k] for k in JOB_NAMES}
    med = {k: statistics.median(v) for k, v in sps.items() if v}
    out = {"runs": runs, "med": med, "n": {k: len(v) for k, v in sps.items()}}
    out["all_rows"] = [[r["order"] + 1, JOB_NAMES.get(r["kind"], r["kind"]), f"{r['sps']:.0f}"]
                       for r in runs]
    if "ddp" in med and "torch" in med:
        out["ratio"] = med["ddp"] / med["torch"]
        out["vs_torch_rows"] = [[JOB_NAMES[k], f"{med[k]:.0f}", f"{med[k] / med['torch']:.3f}"]
                                for k in ("ddp", "torch", "ddpyield") if k in med]
    if "ddp" in med and "ddp1" in med:
        out["efficiency"] = med["ddp"] / (2 * med["ddp1"])
        out["speedup"] = med["ddp"] / med["ddp1"]
        out["scaling_rows"] = [[JOB_NAMES["ddp1"], f"{med['ddp1']:.0f}", "1.000", "1.000"],
                               [JOB_NAMES["ddp"], f"{med['ddp']:.0f}", f"{out['speedup']:.3f}",
                                f"{out['efficiency']:.3f}"]]
    # Preemption agreement: rank 0's seconds in the per-step stop all-reduce over the
    # training loop's seconds, per 2-rank ddp-train run.
    ddp_runs = [r for r in runs if r["kind"] == "ddp"]
    fractions, per_step_us = [], []
    for r in ddp_runs:
        j = r["json"]
        check, loop = j.get("preemption_check_s"), j.get("train_loop_s")
        if not isinstance(check, (int, float)) or not isinstance(loop, (int, float)) or loop <= 0:
            fractions = []
            break
        fractions.append(check / loop)
        if j.get("steps"):
            per_step_us.append(check / j["steps"] * 1e6)
    if fractions:
        out["agreement"] = statistics.median(fractions)
        out["agreement_runs"] = fractions
        out["agreement_us"] = _median_or_none(per_step_us)
    elif ddp_runs:
        out["agreement_missing"] = True
    # Loss curves: the first 2-rank ddp-train run and the first peer run with a curve.
    out["loss_ours"] = next((r for r in ddp_runs), None)
    out["loss_peer"] = next((r for r in runs if r["kind"] == "torch" and
                             r["json"].get("loss_curve")), None)
    return out


def checkpoint_section(results):
    d = os.path.join(results, "checkpoint")
    np2, np1 = load_json(os.path.join(d, "np2.json")), load_json(os.path.join(d, "np1.json"))
    if not np2 and not np1:
        return None
    per_rank = [(tag, n) for tag, n in (("2 ranks", np2), ("1 rank", np1)) if n]

    def collect(keys):
        return [(tag, _get(n, *keys)) for tag, n in per_rank if _get(n, *keys) is not None]

    out = {
        "save_vs_raw": collect(("save", "throughput_ratio_ours_vs_raw")),
        "save_vs_torch": collect(("save", "time_ratio_ours_vs_torch_fsync")),
        "resume_vs_raw": collect(("resume", "time_ratio_resume_vs_raw_read")),
        "stall": _get(np2, "stall", "stall_ratio_async_vs_sync") if np2 else None,
        "cold": _get(np2 or np1, "resume", "page_cache_dropped"),
        "np2": np2, "np1": np1,
    }
    return out


# ----------------------------------------------------------------------------- targets

def ckpt_row(name, pairs, goal, ok, fmt):
    if not pairs:
        return [name, goal, MISSING, MISSING]
    measured = "; ".join(f"{tag}: {fmt(v)}" for tag, v in pairs)
    return [name, goal, measured, REPORT if ok is None else met(all(ok(v) for _, v in pairs))]


def targets_table(ar, ov, tr, ck, meta, ag=None):
    rows = []
    if ar.get("rows"):
        w = ar["worst"]
        rows.append(["MpiCommunicator all_reduce / raw MPI_Allreduce, sizes >= 1 MB (worst size)",
                     f">= {ALLREDUCE_MIN_RATIO:.2f}x",
                     f"{w['comm_vs_raw']:.3f}x ({human_bytes(w['bytes'])})",
                     met(w["comm_vs_raw"] >= ALLREDUCE_MIN_RATIO)])
    else:
        rows.append(["MpiCommunicator all_reduce / raw MPI_Allreduce, sizes >= 1 MB",
                     f">= {ALLREDUCE_MIN_RATIO:.2f}x", MISSING, MISSING])
    if ar.get("has_gloo"):
        g, b = ar["gloo_worst"], ar["gloo_best"]
        rows.append(["MpiCommunicator all_reduce / PyTorch gloo all_reduce, sizes >= 1 MB",
                     "(report)", f"{g['comm_vs_gloo']:.2f}x ({human_bytes(g['bytes'])}) .. "
                     f"{b['comm_vs_gloo']:.2f}x ({human_bytes(b['bytes'])})", REPORT])
    else:
        rows.append(["MpiCommunicator all_reduce / PyTorch gloo all_reduce", "(report)",
                     MISSING, MISSING])
    if ov:
        rows.append(["DdpEngine step time / plain LibTorch step, world size 1",
                     f"<= {OVERHEAD_MAX_RATIO:.2f}x", f"{ov['ratio']:.3f}x",
                     met(ov["ratio"] <= OVERHEAD_MAX_RATIO)])
    else:
        rows.append(["DdpEngine step time / plain LibTorch step, world size 1",
                     f"<= {OVERHEAD_MAX_RATIO:.2f}x", MISSING, MISSING])
    if "ratio" in tr:
        rows.append(["ddp-train samples/s / PyTorch DDP (gloo) samples/s, 2 ranks",
                     f">= {TRAIN_MIN_RATIO:.1f}x", f"{tr['ratio']:.3f}x",
                     met(tr["ratio"] >= TRAIN_MIN_RATIO)])
    else:
        rows.append(["ddp-train samples/s / PyTorch DDP (gloo) samples/s, 2 ranks",
                     f">= {TRAIN_MIN_RATIO:.1f}x", MISSING, MISSING])
    if "efficiency" in tr:
        rows.append(["ddp-train scaling 1 -> 2 ranks: samples/s(2) / (2 x samples/s(1))",
                     "(report)", f"{tr['efficiency']:.3f} (speed-up {tr['speedup']:.2f}x)",
                     REPORT])
    else:
        rows.append(["ddp-train scaling 1 -> 2 ranks", "(report)", MISSING, MISSING])
    agreement_name = ("preemption stop agreement: training thread's time in it / training loop "
                      "time, ddp-train 2 ranks (rank 0)")
    if "agreement" in tr:
        us = tr.get("agreement_us")
        rows.append([agreement_name, f"< {AGREEMENT_MAX_FRACTION * 100:g}%",
                     f"{tr['agreement'] * 100:.3f}%" + (f" ({us:.1f} us/step)" if us else ""),
                     met(tr["agreement"] < AGREEMENT_MAX_FRACTION)])
    else:
        rows.append([agreement_name, f"< {AGREEMENT_MAX_FRACTION * 100:g}%",
                     "not measured (rebuild ddp-train)" if tr.get("agreement_missing")
                     else MISSING, MISSING])
    if ag:
        rows.append(["preemption stop agreement: step time with / without it - 1, 2 ranks "
                     "(bench_ddp agreement; noise about +-2% here)", "(report)",
                     f"{ag['cost'] * 100:.2f}% (paired {ag['paired'] * 100:.2f}%)", REPORT])
    else:
        rows.append(["preemption stop agreement (bench_ddp agreement)", "(report)", MISSING,
                     MISSING])
    ck_status = meta.get("checkpoint", "ran" if ck else "not run")
    if not ck:
        why = {"skipped": "skipped (BENCH_SKIP_CHECKPOINT=1)",
               "failed": "not measured (checkpoint_bench.sh failed)"}.get(ck_status, MISSING)
        for name, goal in (("checkpoint save throughput / raw write+fsync",
                            f">= {CKPT_SAVE_VS_RAW_MIN:g}x"),
                           ("checkpoint save time / torch.save+fsync",
                            f"<= {CKPT_SAVE_VS_TORCH_MAX:g}x"),
                           ("async save stall / sync save time", f"<= {CKPT_STALL_MAX:.0%}"),
                           ("resume (read + load) time / raw read", "(report)")):
            rows.append([name, goal, why, MISSING])
        return rows
    rows.append(ckpt_row("checkpoint save throughput / raw write+fsync", ck["save_vs_raw"],
                         f">= {CKPT_SAVE_VS_RAW_MIN:g}x", lambda v: v >= CKPT_SAVE_VS_RAW_MIN,
                         lambda v: f"{v:.2f}x"))
    rows.append(ckpt_row("checkpoint save time / torch.save+fsync", ck["save_vs_torch"],
                         f"<= {CKPT_SAVE_VS_TORCH_MAX:g}x",
                         lambda v: v <= CKPT_SAVE_VS_TORCH_MAX, lambda v: f"{v:.2f}x"))
    stall = [("2 ranks", ck["stall"])] if ck["stall"] is not None else []
    rows.append(ckpt_row("async save stall / sync save time", stall,
                         f"<= {CKPT_STALL_MAX:.0%}", lambda v: v <= CKPT_STALL_MAX,
                         lambda v: f"{v * 100:.1f}%"))
    cache = "" if ck["cold"] is None else (", cold cache" if ck["cold"] else ", page cache")
    rows.append(ckpt_row(f"resume (read + load) time / raw read{cache}", ck["resume_vs_raw"],
                         "(report)", None, lambda v: f"{v:.2f}x"))
    return rows


# ----------------------------------------------------------------------------- main

def main() -> int:
    if len(sys.argv) != 3:
        print(f"usage: {sys.argv[0]} RESULTS_DIR OUTPUT_MD", file=sys.stderr)
        return 2
    results, out_md = sys.argv[1], sys.argv[2]
    meta = load_json(os.path.join(results, "meta.json")) or {}
    ar = allreduce_section(results)
    ov = overhead_section(results)
    bk = buckets_section(results)
    tr = train_section(results)
    ck = checkpoint_section(results)
    ag = agreement_section(results)
    targets = targets_table(ar, ov, tr, ck, meta, ag)
    target_header = ["target", "goal", "measured", "status"]
    train_steps = meta.get("train_steps", "?")

    # --- stdout: the details, then the targets last (what a terminal shows at the end)
    if ar.get("rows"):
        print()
        print("== all-reduce, %s ranks (medians; ratios are throughput vs the peer)" %
              ar["rows"][0]["world_size"])
        print(text_table(ar["header"], ar["table"]))
    if ov:
        print()
        print("== DDP overhead, world size 1, MLP %s (median step ms)" % ov["data"]["hidden"])
        print(text_table(["loop", "median step ms", "ratio vs plain"], ov["rows"]))
        print(f"   (median of per-round paired ratios: {ov['paired']:.3f})")
    if bk:
        b = bk["data"]
        print()
        print("== bucket sweep, %d ranks, MLP %s, %.1f MB of gradients" %
              (b["world_size"], b["hidden"], b["grad_mb"]))
        print(text_table(["variant", "bucket_cap_mb", "overlap", "buckets",
                          "launched in backward", "median step ms", "ratio vs no overlap"],
                         bk["rows"]))
    if tr["runs"]:
        print()
        print("== training runs, %s steps per run" % train_steps)
        print(text_table(["run", "job", "samples/s"], tr["all_rows"]))
        if "vs_torch_rows" in tr:
            print(text_table(["job", "median samples/s", "ratio vs PyTorch DDP"],
                             tr["vs_torch_rows"]))
        if "scaling_rows" in tr:
            print(text_table(["job", "median samples/s", "speed-up", "efficiency"],
                             tr["scaling_rows"]))
    if ck:
        print()
        print("== checkpoints: see docs/performance-checkpoint.md (bench/checkpoint_bench.sh)")
    print()
    print("== targets")
    print(text_table(target_header, targets))

    write_page(out_md, meta, targets, target_header, ar, ov, bk, tr, ck, ag)
    print(f"\nwrote {out_md}")
    return 0


def write_page(out_md, meta, targets, target_header, ar, ov, bk, tr, ck, ag=None):
    train_steps = meta.get("train_steps", "?")
    lines = [
        "# Performance",
        "",
        "Generated by `bench/run.sh`; rerun it to refresh this page (it overwrites it). Every",
        "figure below is a **ratio against a peer measured in the same run**, from alternating",
        "runs (A, B, A, B, ...) and **medians**; absolute times are shown alongside only to",
        "give a scale, they are not claims about this code's speed anywhere else.",
        "",
        f"- Date: {meta.get('date', '?')}",
        f"- Machine: {meta.get('nproc', '?')} CPUs (`nproc`), {meta.get('cpu_model', '?')}; load "
        f"average {meta.get('loadavg_start', '?')} at the start, {meta.get('loadavg_end', '?')} "
        "at the end",
        f"- Software: {meta.get('mpi_version', '?')}; PyTorch (peers) "
        f"{meta.get('torch_version', '?')}",
    ]
    # The benchmarks keep every CPU busy themselves, so load from others before they
    # started means it competed with them (the load at the end includes our own ranks).
    try:
        others = float(str(meta.get("loadavg_start", "0")).split()[0])
        nproc = int(meta.get("nproc", 0))
    except ValueError:
        others, nproc = 0.0, 0
    if nproc and others > 0.5 * nproc:
        lines += [
            f"- **Noisy run**: a 1-minute load average of {others:.1f} on {nproc} CPUs "
            "before it started: other work competed with every measurement, so expect",
            "  run-to-run spread of the ratios (see Caveats).",
        ]
    lines += [
        f"- Mode: {'quick (BENCH_QUICK=1)' if meta.get('quick') else 'full'}, wall time "
        f"{meta.get('wall_s', 0):.0f} s",
        f"- Command: `{meta.get('command', 'bash bench/run.sh')}`",
        "",
        "## Targets",
        "",
        md_table(target_header, targets),
        "",
        "Checkpoint rows: from the same run's `bench/checkpoint_bench.sh`; the full table, the "
        "phase breakdown of a save and the analysis are in "
        "[performance-checkpoint.md](performance-checkpoint.md). \"report only\": a figure the "
        "issues ask to measure without a target.",
        "",
        "Every figure here is from one host (ranks talk over shared memory). Across hosts "
        "(namespace hosts over a veth link: all-reduce, overlap, training against PyTorch DDP, "
        "save and resume) see [performance-multihost.md](performance-multihost.md), written by "
        "`bench/multihost_bench.sh`.",
        "",
    ]

    # --- 1. all-reduce
    lines += ["## 1. All-reduce: MpiCommunicator vs raw MPI and vs gloo", ""]
    if ar.get("rows"):
        r0 = ar["rows"][0]
        sweeps = r0["sweeps"]
        if sweeps > 1:
            sweep_text = (f"run.sh ran {sweeps} `bench_allreduce` sweeps and "
                          f"{r0.get('gloo_sweeps', 0)} gloo sweeps alternately (MPI, gloo, MPI, gloo, ...); a per-call time "
                          "below is the median over sweeps of each sweep's median over its rounds "
                          f"({r0['rounds'] // sweeps} rounds per sweep).")
        else:
            sweep_text = ("run.sh ran one `bench_allreduce` sweep and then one gloo sweep "
                          "(quick mode: not alternated; the full run alternates several); a "
                          "per-call time is the median over the sweep's rounds.")
        lines += [
            f"`bench_allreduce`, {r0['world_size']} ranks, float32 sum in place. A round times "
            "one block of each method (`raw` = `MPI_Allreduce(MPI_IN_PLACE, ..., "
            "MPI_COMM_WORLD)`, `comm` = `MpiCommunicator::all_reduce`, `async` = "
            "`all_reduce_async(...)->wait()`), rotating which goes first; a block's time is the "
            "slowest rank's. `gloo` = `torch.distributed.all_reduce` on the gloo backend "
            "(`bench/gloo_allreduce_peer.py`, PyTorch's Python API, same sizes, iterations per "
            "block, barrier and slowest-rank rule), in its own processes. " + sweep_text +
            " Bus bandwidth = 2(n-1)/n x bytes / time (nccl-tests). Ratios are peer time / our "
            "time (>= 1: ours as fast as the peer).",
            "",
            md_table(ar["header"], ar["table"]),
            "",
            f"Worst `comm / raw` at >= 1 MB: {ar['worst']['comm_vs_raw']:.3f}; worst "
            f"`async / raw` at >= 1 MB: {ar['async_worst']:.3f}."
            + (f" `ours vs gloo` (= gloo time / comm time) at >= 1 MB: "
               f"{ar['gloo_worst']['comm_vs_gloo']:.2f} .. {ar['gloo_best']['comm_vs_gloo']:.2f}; "
               "at small sizes the gloo figure includes the Python call per all-reduce."
               if ar["has_gloo"] else " (The gloo peer did not run.)"),
            "",
        ]
        if meta.get("plot_png"):
            lines += [f"![all-reduce bus bandwidth]({os.path.basename(meta['plot_png'])})", ""]
    else:
        lines += ["Not measured in this run.", ""]

    # --- 2a / 2b
    lines += ["## 2a. DdpEngine overhead at world size 1", ""]
    if ov:
        o = ov["data"]
        lines += [
            f"`bench_ddp overhead` under `mpirun -np 1`: MLP 64 -> {o['hidden']} -> 10 "
            f"({o['parameters']} parameters), batch {o['batch']}, AdamW, random data. "
            "`ddp` = engine zero_grad / prepare_backward / backward / finish_backward / step; "
            "`plain` = optimizer zero_grad / backward / step on a second replica with the same "
            f"weights. {o['rounds']} rounds x {o['steps_per_block']} steps per variant, "
            "alternating.",
            "",
            md_table(["loop", "median step ms", "ratio vs plain"], ov["rows"]),
            "",
            f"Median of the per-round paired ratios (a cross-check): {ov['paired']:.3f}.",
            "",
        ]
    else:
        lines += ["Not measured in this run.", ""]
    lines += ["## 2b. Bucket size and overlap, 2 ranks", ""]
    if bk:
        b = bk["data"]
        lines += [
            f"`bench_ddp buckets` under `mpirun -np 2`: MLP 64 -> {b['hidden']} -> 10 "
            f"({b['parameters']} parameters, {b['grad_mb']:.1f} MB of float32 "
            f"gradients), batch {b['batch']} per rank, AdamW. `no_overlap` = one bucket, "
            "reduced after backward (`DdpOptions.overlap = false`). "
            f"{b['rounds']} rounds x {b['steps_per_block']} steps per variant, "
            "alternating. `launched in backward` = buckets whose all-reduce started from an "
            "autograd hook in the last step. Ratio < 1: faster than no overlap.",
            "",
            md_table(["variant", "bucket_cap_mb", "overlap", "buckets", "launched in backward",
                      "median step ms", "ratio vs no overlap"], bk["rows"]),
            "",
        ]
    else:
        lines += ["Not measured in this run.", ""]

    # --- 3. training
    lines += [
        "## 3. ddp-train vs PyTorch DDP",
        "",
        f"One job, 2 ranks, one thread each, {train_steps} optimizer steps per run, validation "
        "off: MLP 64 -> [256, 256] -> 10 on the synthetic classification task (a random tanh "
        "teacher labels Gaussian inputs), batch 64 per rank, cross-entropy, AdamW (lr 1e-3, "
        "weight decay 0.01) under a cosine schedule (32 warm-up steps, down to 1e-5), gradient "
        "clipping at norm 1.0. run.sh pins these with `--set` (they differ from "
        "`configs/default.yaml`, whose MLP is [512, 512]) and `bench/torch_ddp_peer.py` does "
        "the same with PyTorch `DistributedDataParallel` (gloo, its defaults: 25 MB buckets). "
        "ddp-train's `samples_per_s` (from `--summary`) counts the whole fit, its first "
        "(warm-up) steps, per-batch gathering from the dataset and logging every 16 steps "
        f"included; the peer excludes its {meta.get('torch_warmup', '?')} warm-up steps, uses "
        "pre-made batches and only keeps its loss as a tensor while the clock runs. All of this "
        "favours the peer. Each round runs ddp-train at 2 ranks, the peer, then ddp-train at "
        "1 rank (section 3b).",
        "",
    ]
    if "vs_torch_rows" in tr:
        lines += [md_table(["job", "median samples/s", "ratio vs PyTorch DDP"],
                           tr["vs_torch_rows"]), ""]
    elif not tr["runs"]:
        lines += ["Not measured in this run.", ""]
    if tr["runs"]:
        lines += ["Every run, in the order they ran:", "",
                  md_table(["run", "job", "samples/s"], tr["all_rows"]), ""]

    lines += ["## 3b. Scaling 1 -> 2 ranks", ""]
    if "scaling_rows" in tr:
        lines += [
            "The same ddp-train job at `mpirun -np 1` and `-np 2` (same per-rank batch, so the "
            "global batch doubles), alternating within each round; samples/s are global. "
            "Efficiency = samples/s(2) / (2 x samples/s(1)). On this machine 2 ranks on "
            f"{meta.get('nproc', '?')} cores is the whole machine: the second rank shares it "
            "with mpirun, the OS and whatever else runs (load average above), so this is a "
            "lower bound on what two dedicated cores give.",
            "",
            md_table(["job", "median samples/s", "speed-up", "efficiency"], tr["scaling_rows"]),
            "",
        ]
    else:
        lines += ["Not measured in this run.", ""]

    lines += ["## 3c. Preemption agreement cost", ""]
    if ag:
        d = ag["data"]
        lines += [
            f"`bench_ddp agreement` under `mpirun -np 2`: MLP 64 -> {d['hidden']} -> 10 "
            f"(configs/default.yaml's model), batch {d['batch']}, AdamW; DDP steps with the "
            "trainer's per-step stop agreement (one int64 MAX all-reduce after the optimizer "
            f"step) against the same steps without it, {d['rounds']} alternating rounds x "
            f"{d['steps_per_block']} steps. Step time {ag['step_ms']:.3f} ms without it; "
            f"cost **{ag['cost'] * 100:.2f}%** ({ag['us']:.1f} us per step; median of per-round "
            f"paired ratios: {ag['paired'] * 100:.2f}%). Run-to-run noise on this machine is "
            "about +-2% of a step, more than the effect, so this is a cross-check; the target "
            "is judged on the direct measurement below.",
            "",
        ]
    if "agreement" in tr:
        runs_pct = ", ".join(f"{f * 100:.3f}%" for f in tr["agreement_runs"])
        lines += [
            "After every step each rank starts a non-blocking all-reduce (MAX) of one int64 "
            "(\"a stop signal reached me\") and waits for it after the next step, so that a "
            "signal on any rank stops all of them after the same step without adding a "
            "synchronisation point. From the 2-rank ddp-train runs of section 3: "
            "`preemption_check_s` (rank 0's seconds starting and waiting for it) / "
            "`train_loop_s` (seconds of the training loop), both from `--summary`. Median "
            f"**{tr['agreement'] * 100:.3f}%** (runs: {runs_pct})"
            + (f", about {tr['agreement_us']:.1f} us per step" if tr.get("agreement_us") else "")
            + f"; target < {AGREEMENT_MAX_FRACTION * 100:g}%.",
            "",
        ]
    elif tr.get("agreement_missing"):
        lines += ["Not measured: this ddp-train's `--summary` lacks `preemption_check_s` / "
                  "`train_loop_s` (rebuild ddp-train).", ""]
    else:
        lines += ["Not measured in this run.", ""]

    lines += ["## 4. Training loss curve", ""]
    if meta.get("loss_png"):
        peer_note = ("and the first PyTorch DDP peer run's (its loss averaged the same way, "
                     "after the clock stopped)" if tr.get("loss_peer")
                     else "(the peer logged no curve)")
        lines += [
            "`train_loss` from `metrics.csv` of the first 2-rank ddp-train run (the mean over "
            "ranks of the last 16 steps' losses, every 16 steps) " + peer_note + ". Different "
            "initialisations and different samples of the same model on the same kind of "
            "synthetic task: the curves should have the same shape, not the same values.",
            "",
            f"![training loss]({os.path.basename(meta['loss_png'])})",
            "",
        ]
        ours, peer = tr.get("loss_ours"), tr.get("loss_peer")
        finals = []
        if ours and isinstance(ours["json"].get("final_train_loss"), (int, float)):
            finals.append(f"ddp-train {ours['json']['final_train_loss']:.4f}")
        if peer:
            finals.append(f"PyTorch DDP {peer['json']['loss_curve'][-1][1]:.4f}")
        if finals:
            lines += [f"Final train loss: {', '.join(finals)}.", ""]
    else:
        lines += ["No figure in this run (matplotlib missing, or no ddp-train metrics.csv).", ""]

    # --- 5. checkpoints
    lines += ["## 5. Checkpoints", ""]
    if ck:
        lines += ["Measured by `bench/checkpoint_bench.sh` as part of this run; its figures are "
                  "in the targets table above and everything else (peers, phases, memory, "
                  "analysis) in [performance-checkpoint.md](performance-checkpoint.md).", ""]
    elif meta.get("checkpoint") == "skipped":
        lines += ["Skipped (`BENCH_SKIP_CHECKPOINT=1`); "
                  "[performance-checkpoint.md](performance-checkpoint.md) is from an earlier run.",
                  ""]
    else:
        lines += ["Not measured in this run (see `<build>/bench-results/checkpoint_bench.log`).",
                  ""]

    # --- 6. GPU (bench/gpu.sh writes its own page on a GPU machine)
    lines += ["## 6. GPU", ""]
    gpu_page = os.path.join(os.path.dirname(os.path.abspath(out_md)), "performance-gpu.md")
    if os.path.exists(gpu_page):
        lines += ["On a GPU machine `bash bench/gpu.sh` builds against a CUDA PyTorch's LibTorch "
                  "and runs the GPU tests and figures: [performance-gpu.md](performance-gpu.md).",
                  ""]
    else:
        lines += ["Not measured: this machine has no GPU, and `bash bench/gpu.sh` (GPU tests, "
                  "DDP overhead on the GPU, pinned snapshot bandwidth; writes "
                  "`docs/performance-gpu.md`) has not been run on a GPU machine yet. The CUDA / "
                  "NCCL code compiles and links in every CI run; the code behind the CUDA "
                  "LibTorch seam was compiled (syntax-checked) against PyTorch 2.11 (cu130) "
                  "headers only.", ""]

    lines += [
        "## Caveats",
        "",
        "- One shared machine with few cores: other processes (the load average above) add",
        "  noise. Alternation and medians make the ratios robust to it, not immune; compare",
        "  ratios across runs, not absolute times.",
        "- Two ranks on one machine communicate through shared memory; on a network the",
        "  all-reduce costs, and what overlap can hide, are different.",
        "- Open MPI waits by polling; `MpiRuntime` sets `mpi_yield_when_idle=1` unless the user",
        "  set it, so that a polling rank gives its core to the peer rank on a machine with more",
        "  runnable threads than cores (gloo, the peers' backend, sleeps in the kernel).",
        "",
        "## How to reproduce",
        "",
        "```sh",
        "cmake -S . -B build -DDDP_BUILD_TESTS=OFF",
        "cmake --build build -j --target ddp-train bench_allreduce bench_ddp bench_checkpoint",
        "bash bench/run.sh build                  # full, about 10-15 minutes",
        "BENCH_QUICK=1 bash bench/run.sh build    # under 6 minutes, fewer rounds",
        "```",
        "",
        "Needs Open MPI's `mpirun` and, for the peers, `/usr/bin/python3` with PyTorch (gloo);",
        "python3-matplotlib for the figures (optional). `BENCH_SKIP_CHECKPOINT=1` leaves out the "
        "checkpoint benchmark. Raw results are left in `<build>/bench-results/`. The underlying "
        "commands:",
        "",
        "```sh",
    ]
    lines += meta.get("commands", [])
    lines += ["```", ""]
    os.makedirs(os.path.dirname(os.path.abspath(out_md)), exist_ok=True)
    with open(out_md, "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
