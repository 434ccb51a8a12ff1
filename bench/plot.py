#!/usr/bin/python3
"""All-reduce bus-bandwidth curve from bench_allreduce's CSV (bench/run.sh calls this).

    /usr/bin/python3 bench/plot.py allreduce.csv docs/allreduce_bandwidth.png

Needs matplotlib (Debian: apt-get install python3-matplotlib); exits 3 without it so that
run.sh can skip the figure and say why.
"""
import csv
import sys


def main() -> int:
    if len(sys.argv) != 3:
        print(f"usage: {sys.argv[0]} ALLREDUCE_CSV OUTPUT_PNG", file=sys.stderr)
        return 2
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot.py: matplotlib is not installed; no figure", file=sys.stderr)
        return 3
    with open(sys.argv[1], newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        print(f"plot.py: {sys.argv[1]} has no rows", file=sys.stderr)
        return 2
    sizes = [int(r["bytes"]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for key, label, style in (("raw", "raw MPI_Allreduce", "o-"),
                              ("comm", "MpiCommunicator::all_reduce", "s--"),
                              ("async", "all_reduce_async + wait", "^:")):
        ax.plot(sizes, [float(r[f"{key}_busbw_gbps"]) for r in rows], style, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes)
    ax.set_xticklabels([human(s) for s in sizes])
    ax.set_xlabel("message size (float32)")
    ax.set_ylabel("bus bandwidth, GB/s (median)")
    ax.set_title(f"All-reduce, {rows[0]['world_size']} ranks, one machine (bench/run.sh)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(sys.argv[2])
    return 0


def human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n}{unit}"
        n //= 1024
    return f"{n}TB"


if __name__ == "__main__":
    sys.exit(main())
