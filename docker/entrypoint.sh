#!/usr/bin/env bash
# Entry point of the ddp-runtime image: one ddp-train rank per visible GPU, under mpirun.
#
#   docker run --rm --gpus all --ipc=host ddp-runtime                      # configs/default.yaml
#   docker run --rm --gpus all --ipc=host ddp-runtime --set trainer.max_steps=200
#   docker run --rm --gpus all --ipc=host -e DDP_CONFIG=configs/cnn.yaml ddp-runtime
#   docker run --rm --gpus all --ipc=host ddp-runtime ddp-checkpoint ls runs/default/checkpoints
#
# Arguments that start with '-' are passed on to ddp-train (after --config and
# --set model.device=cuda, so a later --set wins); anything else is run as a command.
# Environment:
#   DDP_CONFIG  config file, relative to /opt/ddp-runtime or absolute (configs/default.yaml)
#   DDP_NPROC   number of ranks (default: one per GPU: CUDA_VISIBLE_DEVICES if set, else nvidia-smi -L)
#   OMP_NUM_THREADS  CPU threads per rank (default: the CPUs divided among the ranks)
# Exit status: ddp-train's (README "Exit codes"); 2 when no GPU is visible.
set -euo pipefail

if (($# > 0)) && [[ $1 != -* ]]; then
  exec "$@"
fi

prefix=/opt/ddp-runtime
nproc_ranks=${DDP_NPROC:-}
if [[ -z $nproc_ranks ]]; then
  if [[ -n ${CUDA_VISIBLE_DEVICES:-} ]]; then
    IFS=, read -ra visible <<<"$CUDA_VISIBLE_DEVICES"
    nproc_ranks=${#visible[@]}
  else
    nproc_ranks=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
  fi
fi
if ! [[ $nproc_ranks =~ ^[0-9]+$ ]]; then
  echo "entrypoint: DDP_NPROC must be a number of ranks, not '$nproc_ranks'" >&2
  exit 2
elif ((nproc_ranks < 1)); then
  echo "entrypoint: no GPU visible (nvidia-smi -L lists none): run the container with" \
       "'--gpus all', or set DDP_NPROC" >&2
  exit 2
fi

config=${DDP_CONFIG:-configs/default.yaml}
if [[ $config != /* && ! -e $config ]]; then
  config=$prefix/$config
fi

cpus=$(nproc)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$((cpus / nproc_ranks > 0 ? cpus / nproc_ranks : 1))}

mpirun_args=(-np "$nproc_ranks" --bind-to none -x OMP_NUM_THREADS)
if ((EUID == 0)); then  # `docker run --user root`: Open MPI refuses root without this
  mpirun_args+=(--allow-run-as-root)
fi

echo "entrypoint: mpirun -np $nproc_ranks ddp-train --config $config (OMP_NUM_THREADS=$OMP_NUM_THREADS)" >&2
exec mpirun "${mpirun_args[@]}" "$prefix/build/bin/ddp-train" \
  --config "$config" --set model.device=cuda "$@"
