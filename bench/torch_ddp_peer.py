#!/usr/bin/python3
"""PyTorch DDP peer for bench/run.sh: its ddp-train job, written the PyTorch way.

    MASTER_ADDR=127.0.0.1 MASTER_PORT=29500 mpirun -np 2 -x MASTER_ADDR -x MASTER_PORT \\
        /usr/bin/python3 bench/torch_ddp_peer.py --steps 2000 [--loss-every 16]

The job run.sh pins on ddp-train's command line: model Linear(64,256)-ReLU-Linear(256,256)-
ReLU-Linear(256,10), per-rank batch 64, cross-entropy, AdamW(lr 1e-3, weight_decay 0.01) under
a cosine schedule with 32 warm-up steps down to 1e-5, gradient clipping at global L2 norm 1.0;
one intra-op thread, gloo backend, DistributedDataParallel with its defaults (bucket_cap_mb 25).

The data is ddp-train's synthetic_classification task rebuilt here (runtime/data/synthetic.cpp:
a random 2-layer tanh teacher, hidden width 32, logits centred over 8192 draws, label =
argmax(teacher logits + 0.1 x noise)), but with this script's own samples, drawn per rank and
pre-batched before the clock starts (--num-batches distinct batches, cycled). The loss is never
read back while the clock runs (with --loss-every it is kept as a tensor and averaged after
the clock stops), so the peer pays nothing for data loading or logging (ddp-train gathers each
batch from its dataset and logs every 16 steps): the comparison favours the peer.

Rank and world size come from Open MPI's environment (OMPI_COMM_WORLD_RANK/SIZE). Rank 0
prints one JSON line: global samples/s over the steps after --warmup, and with --loss-every N
"loss_curve": [[step, loss], ...], the loss averaged over the last N steps and over ranks at
every N-th step and the last one (what ddp-train writes as train_loss to metrics.csv with
trainer.log_every_n_steps = N).
"""
import argparse
import json
import math
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

TEACHER_HIDDEN = 32          # runtime/data/synthetic.cpp kTeacherHidden
CALIBRATION_SAMPLES = 8192   # runtime/data/synthetic.cpp kCalibrationSamples
MASK64 = (1 << 64) - 1


def stream_seed(seed: int, stream: int) -> int:
    """runtime/data/synthetic.cpp's splitmix64 seed of one random stream."""
    z = (seed + 0x9E3779B97F4A7C15 * (stream + 1)) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def make_teacher(seed: int, features: int, classes: int):
    """The synthetic_classification teacher (float64 logits); returns logits(x)."""
    gen = torch.Generator().manual_seed(stream_seed(seed, 0))
    f64 = torch.float64
    w1 = torch.randn(features, TEACHER_HIDDEN, generator=gen, dtype=f64)
    w1 *= 1.5 / math.sqrt(features)
    w2 = torch.randn(TEACHER_HIDDEN, classes, generator=gen, dtype=f64)
    w2 *= 2.0 / math.sqrt(TEACHER_HIDDEN)
    calib = torch.randn(CALIBRATION_SAMPLES, features, generator=gen, dtype=f64)
    bias = torch.tanh(calib @ w1).matmul(w2).mean(0)
    return lambda x: torch.tanh(x.to(f64) @ w1).matmul(w2) - bias


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="optimizer steps in total")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps at the start")
    parser.add_argument("--batch", type=int, default=64, help="per-rank batch size")
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--hidden", type=str, default="256,256")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--lr-warmup", type=int, default=32, help="cosine warm-up steps")
    parser.add_argument("--min-lr", type=float, default=1e-5)
    parser.add_argument("--clip", type=float, default=1.0, help="max grad norm; 0: off")
    parser.add_argument("--num-batches", type=int, default=128,
                        help="distinct pre-made batches per rank, cycled")
    parser.add_argument("--seed", type=int, default=42, help="teacher and model seed")
    parser.add_argument("--noise", type=float, default=0.1, help="label noise on the logits")
    parser.add_argument("--loss-every", type=int, default=0,
                        help="add a loss curve to the JSON, one point every N steps; 0: none")
    args = parser.parse_args()
    if args.steps <= args.warmup:
        parser.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup})")

    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("RANK", "0")))
    world = int(os.environ.get("OMPI_COMM_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            print(f"torch_ddp_peer: {var} is not set (run.sh passes it with mpirun -x)",
                  file=sys.stderr)
            return 2
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)

    torch.manual_seed(args.seed)
    sizes = [args.features] + [int(h) for h in args.hidden.split(",")]
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(sizes[-1], args.classes))
    model = DistributedDataParallel(nn.Sequential(*layers))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    loss_fn = nn.CrossEntropyLoss()

    teacher = make_teacher(args.seed, args.features, args.classes)
    gen = torch.Generator().manual_seed(1000 + rank)
    batches = []
    for _ in range(args.num_batches):
        x = torch.randn(args.batch, args.features, generator=gen)
        noise = torch.randn(args.batch, args.classes, generator=gen, dtype=torch.float64)
        batches.append((x, (teacher(x) + args.noise * noise).argmax(1)))
    losses = []  # one detached scalar per step with --loss-every, read after the clock stops

    def lr_at(i: int) -> float:  # ddp-runtime's LrSchedule, "cosine"
        if i < args.lr_warmup:
            return args.lr * (i + 1) / args.lr_warmup
        t = min(1.0, (i - args.lr_warmup) / max(1, args.steps - args.lr_warmup))
        return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1.0 + math.cos(math.pi * t))

    def step(i: int) -> None:
        x, y = batches[i % len(batches)]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(i)
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        if args.loss_every > 0:
            losses.append(loss.detach())
        if args.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()

    for i in range(args.warmup):
        step(i)
    dist.barrier()
    t0 = time.perf_counter()
    for i in range(args.warmup, args.steps):
        step(i)
    dist.barrier()
    elapsed = time.perf_counter() - t0
    timed = args.steps - args.warmup
    result = {
        "samples_per_s": timed * args.batch * world / elapsed,
        "timed_steps": timed,
        "warmup_steps": args.warmup,
        "wall_s": elapsed,
        "world_size": world,
        "torch": torch.__version__,
    }
    if args.loss_every > 0:
        per_step = torch.stack(losses).to(torch.float64)
        dist.all_reduce(per_step, op=dist.ReduceOp.SUM)
        per_step /= world
        ends = list(range(args.loss_every, args.steps + 1, args.loss_every))
        if not ends or ends[-1] != args.steps:
            ends.append(args.steps)
        starts = [0] + ends[:-1]
        result["loss_every"] = args.loss_every
        result["loss_curve"] = [[e, float(per_step[b:e].mean())] for b, e in zip(starts, ends)]
    if rank == 0:
        print(json.dumps(result), flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
