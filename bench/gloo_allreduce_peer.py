#!/usr/bin/python3
"""gloo all-reduce peer for bench/run.sh: torch.distributed.all_reduce timed like bench_allreduce.

    MASTER_ADDR=127.0.0.1 MASTER_PORT=29500 mpirun -np 2 -x MASTER_ADDR -x MASTER_PORT \\
        /usr/bin/python3 bench/gloo_allreduce_peer.py --rounds 5 --block-mb 32 --min-iters 3

The same sweep as bench/bench_allreduce.cpp, with the same options and defaults: message sizes
from --min-bytes to --max-bytes (4 KiB .. 64 MiB of float32, x4 steps); per size, two warm-up
calls, then `rounds` rounds of one block of `iters` calls of
`dist.all_reduce(t, op=SUM)` (gloo, in place on a contiguous float32 slice of one zero-filled
buffer), where iters = clamp(block-mb MiB / bytes, min-iters, 2000). A block starts after a
barrier; its time is the slowest rank's (a MAX all-reduce of the elapsed seconds, outside the
timed calls); the per-call time is the median over rounds of block time / iters. Bus bandwidth
= 2(n-1)/n x bytes / time (nccl-tests).

Rank and world size come from Open MPI's environment (OMPI_COMM_WORLD_RANK/SIZE), the rendezvous
from MASTER_ADDR/MASTER_PORT. Rank 0 prints CSV on stdout:
    bytes,world_size,iters,rounds,gloo_us,gloo_busbw_gbps
and progress on stderr.
"""
import argparse
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist


def choose_iters(nbytes: int, block_bytes: int, min_iters: int) -> int:
    # bench_allreduce.cpp's choose_iters: static_cast<int>(clamp(block / bytes, min, 2000)).
    return int(min(max(block_bytes / nbytes, float(min_iters)), 2000.0))


def time_block(t: torch.Tensor, iters: int) -> float:
    """Slowest rank's seconds for `iters` in-place sum all-reduces of `t`."""
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(iters):
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    elapsed = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
    return float(elapsed.item())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=11, help="rounds per size")
    parser.add_argument("--min-bytes", type=int, default=4 << 10, help="smallest message, bytes")
    parser.add_argument("--max-bytes", type=int, default=64 << 20, help="largest message, bytes")
    parser.add_argument("--block-mb", type=float, default=64.0,
                        help="MiB one block (all iters) aims to reduce")
    parser.add_argument("--min-iters", type=int, default=5, help="calls per block at least")
    args = parser.parse_args()
    if (args.rounds < 1 or args.min_bytes < 4 or args.max_bytes < args.min_bytes
            or args.block_mb <= 0 or args.min_iters < 1):
        parser.error("need rounds >= 1, 4 <= min-bytes <= max-bytes, block-mb > 0, min-iters >= 1")

    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("RANK", "0")))
    world = int(os.environ.get("OMPI_COMM_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            print(f"gloo_allreduce_peer: {var} is not set (run.sh passes it with mpirun -x)",
                  file=sys.stderr)
            return 2
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)

    block_bytes = int(args.block_mb * (1 << 20))
    # Zeros, as bench_allreduce: repeated in-place sums of anything else overflow to inf.
    buffer = torch.zeros(args.max_bytes // 4, dtype=torch.float32)
    if rank == 0:
        print("bytes,world_size,iters,rounds,gloo_us,gloo_busbw_gbps", flush=True)
    nbytes = args.min_bytes
    while nbytes <= args.max_bytes:
        t = buffer[: nbytes // 4]  # a contiguous view: gloo reduces it in place
        time_block(t, 2)  # warm-up: first touch, gloo's pairs and buffers for this size
        iters = choose_iters(nbytes, block_bytes, args.min_iters)
        per_call = [time_block(t, iters) / iters for _ in range(args.rounds)]
        if rank == 0:
            med = statistics.median(per_call)
            busbw = 2.0 * (world - 1) / world * nbytes / med / 1e9
            print(f"{nbytes},{world},{iters},{args.rounds},{med * 1e6:.3f},{busbw:.4f}",
                  flush=True)
            print(f"gloo_allreduce_peer: {nbytes} bytes done ({iters} iters x {args.rounds} "
                  "rounds)", file=sys.stderr, flush=True)
        nbytes *= 4
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
