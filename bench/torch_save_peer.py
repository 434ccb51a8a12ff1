#!/usr/bin/env python3
"""torch.save peer for bench_checkpoint: saves a dict of tensors with the same paths, shapes and
dtypes as the C++ trainer's model + optimizer state, on request, and reports how long it took.

    torch_save_peer.py SPEC.json

SPEC.json is a list of {"path": "model/layers.0.weight", "dtype": "float32", "shape": [..]}
written by bench_checkpoint. The peer builds the tensors once (random values), prints
"ready <payload bytes>" and then answers one line per command read from stdin:

    save <file> <fsync 0|1>   ->  "<seconds>"   torch.save to <file>; with fsync=1 the file is
                                                 opened here, written, flushed and os.fsync'ed
                                                 before close (the C++ save fsyncs too)
    quit                      ->  exits

The time covers open .. close (and fsync) only: no Python start-up, no tensor creation.
"""
import json
import os
import sys
import time

import torch

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int32": torch.int32,
    "int64": torch.int64,
    "uint8": torch.uint8,
}


def build_state(spec):
    gen = torch.Generator().manual_seed(0)
    state = {}
    for item in spec:
        dtype = DTYPES[item["dtype"]]
        shape = item["shape"]
        if dtype.is_floating_point:
            t = torch.randn(shape, generator=gen).to(dtype)
        else:
            t = torch.randint(0, 100, shape, generator=gen).to(dtype)
        state[item["path"]] = t
    return state


def save(state, path, do_fsync):
    t0 = time.perf_counter()
    if do_fsync:
        with open(path, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    else:
        torch.save(state, path)
    return time.perf_counter() - t0


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: torch_save_peer.py SPEC.json")
    torch.set_num_threads(1)
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    state = build_state(spec)
    payload = sum(t.numel() * t.element_size() for t in state.values())
    print(f"ready {payload}", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "quit":
            break
        if words[0] == "save" and len(words) == 3:
            print(f"{save(state, words[1], words[2] == '1'):.6f}", flush=True)
        else:
            print(f"error: unknown command {line.strip()!r}", flush=True)


if __name__ == "__main__":
    main()
