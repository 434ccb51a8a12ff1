#!/usr/bin/python3
"""Figures for docs/performance.md from bench/run.sh's results (run.sh calls this).

    /usr/bin/python3 bench/plot.py allreduce RESULTS_DIR docs/allreduce_bandwidth.png
    /usr/bin/python3 bench/plot.py loss RESULTS_DIR docs/loss_curve.png

`allreduce`: bus bandwidth vs message size of raw MPI_Allreduce, MpiCommunicator (blocking and
async) and, where the gloo peer ran, torch.distributed gloo (medians over alternating sweeps,
as in the report's table; RESULTS_DIR may also be one bench_allreduce CSV file).
`loss`: train loss vs step of the first 2-rank ddp-train run (its metrics.csv) and, where it
logged one, of the first PyTorch DDP peer run.

Needs matplotlib (Debian: apt-get install python3-matplotlib); exits 3 without it so that
run.sh can skip the figure and say why, and 4 when the results hold nothing to draw.
"""
import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402  (bench/report.py: reads and merges the raw results)


def human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n}{unit}"
        n //= 1024
    return f"{n}TB"


def plot_allreduce(plt, results: str, out_png: str) -> int:
    if os.path.isfile(results):  # one bench_allreduce CSV
        rows = report.merge_allreduce([report.read_csv(results)], [])
    else:
        rows = report.load_allreduce(results)
    if not rows:
        print(f"plot.py: no all-reduce results in {results}", file=sys.stderr)
        return 4
    sizes = [r["bytes"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    series = [("raw", "raw MPI_Allreduce", "o-"),
              ("comm", "MpiCommunicator::all_reduce", "s--"),
              ("async", "all_reduce_async + wait", "^:")]
    if all("gloo_us" in r for r in rows):
        series.append(("gloo", "torch.distributed gloo (PyTorch)", "d-."))
    for key, label, style in series:
        ax.plot(sizes, [r[f"{key}_busbw_gbps"] for r in rows], style, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes)
    ax.set_xticklabels([human(s) for s in sizes])
    ax.set_xlabel("message size (float32)")
    ax.set_ylabel("bus bandwidth, GB/s (median)")
    sweeps = rows[0]["sweeps"]
    ax.set_title(f"All-reduce, {rows[0]['world_size']} ranks, one machine "
                 f"({sweeps} sweep{'s' if sweeps > 1 else ''} each, bench/run.sh)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png)
    return 0


def read_metrics_curve(path: str):
    """(steps, train_loss) from a ddp-train metrics.csv (rows without a train_loss skipped)."""
    steps, losses = [], []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("train_loss"):
                steps.append(int(float(row["step"])))
                losses.append(float(row["train_loss"]))
    return steps, losses


def plot_loss(plt, results: str, out_png: str) -> int:
    runs = report.load_train_runs(results)
    ours = next((r for r in runs if r["kind"] == "ddp"), None)
    peer = next((r for r in runs if r["kind"] == "torch" and r["json"].get("loss_curve")), None)
    metrics = report.metrics_csv_of(results, ours) if ours else None
    if not metrics or not os.path.exists(metrics):
        print(f"plot.py: no ddp-train metrics.csv in {results}", file=sys.stderr)
        return 4
    steps, losses = read_metrics_curve(metrics)
    if not steps:
        print(f"plot.py: {metrics} has no train_loss rows", file=sys.stderr)
        return 4
    world = ours["json"].get("world_size", 2)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    ax.plot(steps, losses, "-", label=f"ddp-train (run {ours['order'] + 1}, metrics.csv)")
    if peer:
        curve = peer["json"]["loss_curve"]
        ax.plot([p[0] for p in curve], [p[1] for p in curve], "--",
                label=f"PyTorch DDP, gloo (run {peer['order'] + 1})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("train loss (cross-entropy)")
    ax.set_title(f"Training loss, bench/run.sh's training job, {world} ranks\n"
                 "different initialisations and samples of the same model and synthetic task",
                 fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png)
    return 0


def main() -> int:
    kinds = {"allreduce": plot_allreduce, "loss": plot_loss}
    if len(sys.argv) != 4 or sys.argv[1] not in kinds:
        print(f"usage: {sys.argv[0]} allreduce|loss RESULTS_DIR OUTPUT_PNG", file=sys.stderr)
        return 2
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot.py: matplotlib is not installed; no figure", file=sys.stderr)
        return 3
    return kinds[sys.argv[1]](plt, sys.argv[2], sys.argv[3])


if __name__ == "__main__":
    sys.exit(main())
