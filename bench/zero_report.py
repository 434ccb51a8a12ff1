#!/usr/bin/python3
"""Writes docs/performance-zero.md from bench/zero_bench.sh's results.

    zero_report.py OUT.md RESULTS_ROOT DATE LOADAVG ROUNDS STEPS

RESULTS_ROOT holds zero-1host/ and/or zero-2host/ (ddp-train --summary files). Ratios are
stage 1 over stage 0, paired within each round (the two runs of a round are adjacent in
time), then the median over rounds.
"""
import json
import statistics
import sys
from pathlib import Path

BUCKET_BYTES = 25 * 1024 * 1024  # ddp.bucket_cap_mb's default


def load(path):
    return json.loads(Path(path).read_text())


def mib(n):
    return f"{n / 2**20:.2f} MiB"


def rounds_of(d, prefix):
    out = []
    r = 0
    while (d / f"{prefix}_r{r}_s0.json").exists() and (d / f"{prefix}_r{r}_s1.json").exists():
        out.append((load(d / f"{prefix}_r{r}_s0.json"), load(d / f"{prefix}_r{r}_s1.json"),
                    r))
        r += 1
    return out


def step_s(s):
    return (s["train_loop_s"] - s.get("checkpoint", {}).get("save_stall_s_total", 0)) / s["steps"]


def resume_s(s):
    r = s["checkpoint"]["resume"]
    return r["read_s"] + r["handover_s"] + r["load_s"]


def section(d, hosts, rows_out):
    lines = []
    where = "one host, 2 ranks" if hosts == 1 else "2 namespace hosts x 1 rank (veth)"
    steps = rounds_of(d, "step")
    if steps:
        ratios = [step_s(b) / step_s(a) for a, b, _ in steps]
        med = statistics.median(ratios)
        lines += [f"### Step time, {where}", "",
                  "| round | stage 0 ms/step | stage 1 ms/step | stage 1 / stage 0 |",
                  "|---|---|---|---|"]
        for (a, b, r), q in zip(steps, ratios):
            lines.append(f"| {r} | {step_s(a) * 1e3:.2f} | {step_s(b) * 1e3:.2f} | {q:.3f} |")
        lines += ["", f"Median ratio **{med:.3f}** (target <= 1.05: "
                  f"{'met' if med <= 1.05 else 'not met'}).", ""]
        rows_out.append((f"step time, stage 1 / stage 0 ({where})", "<= 1.05", f"{med:.3f}",
                         "met" if med <= 1.05 else "not met"))
    ck = []
    r = 0
    while all((d / f"ckpt_r{r}_s{s}{t}.json").exists() for s in (0, 1) for t in ("", "_resume")):
        ck.append([load(d / f"ckpt_r{r}_s{s}{t}.json") for s in (0, 1) for t in ("", "_resume")])
        r += 1
    if ck:
        save = [(c[0]["checkpoint"]["save_stall_s_total"], c[2]["checkpoint"]["save_stall_s_total"])
                for c in ck]
        res = [(resume_s(c[1]), resume_s(c[3])) for c in ck]
        save_med = statistics.median(b / a for a, b in save)
        res_med = statistics.median(b / a for a, b in res)
        lines += [f"### Save and resume, {where}", "",
                  "| round | save s (stage 0) | save s (stage 1) | resume s (stage 0) | "
                  "resume s (stage 1) |", "|---|---|---|---|---|"]
        for i, ((a, b), (c, e)) in enumerate(zip(save, res)):
            lines.append(f"| {i} | {a:.3f} | {b:.3f} | {c:.3f} | {e:.3f} |")
        lines += ["", f"Median ratios, stage 1 / stage 0: save **{save_med:.3f}**, resume "
                  f"**{res_med:.3f}**.", ""]
        rows_out.append((f"save, stage 1 / stage 0 ({where})", "(report)", f"{save_med:.3f}", "-"))
        rows_out.append((f"resume, stage 1 / stage 0 ({where})", "(report)", f"{res_med:.3f}",
                         "-"))
    return lines


def memory(d, rows_out):
    lines = ["### Optimizer-state memory per rank (AdamW: exp_avg, exp_avg_sq, step)", "",
             "| ranks | stage 0 | stage 1, most loaded rank | least loaded | ideal stage 0 / N | "
             "excess over ideal | reduce-scatter buffers | met |", "|---|---|---|---|---|---|---|---|"]
    for np in (1, 2, 4):
        a, b = d / f"mem_np{np}_s0.json", d / f"mem_np{np}_s1.json"
        if not (a.exists() and b.exists()):
            continue
        z0, z1 = load(a)["zero"], load(b)["zero"]
        ideal = z0["optimizer_state_bytes_max"] / np
        excess = z1["optimizer_state_bytes_max"] - ideal
        met = excess < BUCKET_BYTES
        lines.append(f"| {np} | {mib(z0['optimizer_state_bytes_max'])} | "
                     f"{mib(z1['optimizer_state_bytes_max'])} | "
                     f"{mib(z1['optimizer_state_bytes_min'])} | {mib(ideal)} | {mib(excess)} | "
                     f"{mib(z1['shard_buffer_bytes'])} | {'yes' if met else 'no'} |")
        rows_out.append((f"optimizer state per rank at {np} rank(s)",
                         "stage 0 / N + < 1 bucket (25 MiB)",
                         f"{z1['optimizer_state_bytes_max'] / z0['optimizer_state_bytes_max']:.3f}"
                         f" of stage 0 (ideal {1 / np:.3f})", "met" if met else "not met"))
    return lines + [""]


def main():
    out, root, date, load_avg, rounds, steps = sys.argv[1:7]
    root = Path(root)
    rows = []
    body = []
    one, two = root / "zero-1host", root / "zero-2host"
    if one.exists():
        body += ["## One host", ""] + memory(one, rows) + section(one, 1, rows)
    if two.exists():
        body += ["## Across hosts", ""] + section(two, 2, rows)
    head = [
        "# ZeRO stage 1: memory and speed against stage 0",
        "",
        f"Generated by `bash bench/zero_bench.sh build` (and `BENCH_HOSTS=2 bash "
        f"bench/zero_bench.sh build` as root for the across-hosts rows) on {date}, load "
        f"{load_avg}; {rounds} rounds, {steps} steps per step-time run. Model: MLP "
        "256 -> 1024x4 -> 10, batch 64 per rank, AdamW, gradient clipping 1.0, one thread per "
        "rank, MPI backend on CPU. Stage 0 and stage 1 alternate within each round (the first "
        "of a round swaps every round); a ratio is stage 1 over stage 0 within a round, and "
        "the figure is the median over rounds. Timings on this 2-core machine swing between "
        "runs: read the ratios, not the absolute times.",
        "",
        "Stage 1 assigns each parameter whole to one rank (largest first onto the least-loaded "
        "rank, as PyTorch's ZeroRedundancyOptimizer), so the most loaded rank exceeds the "
        "ideal 1/N by at most the largest parameter's state; the reduce-scatter receive "
        "buffers add 1/N of the gradients.",
        "",
        "| target | goal | measured | status |",
        "|---|---|---|---|",
    ]
    head += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    Path(out).write_text("\n".join(head + [""] + body) + "\n")
    print("\n".join(f"{a}: {c} ({d})" for a, b, c, d in rows))


if __name__ == "__main__":
    main()
