#!/usr/bin/env bash
# Prints, one per line, the Debian/Ubuntu packages that own the shared libraries the given
# executables load (ldd, transitively). The Dockerfile's build stage runs it on the freshly
# built executables and its runtime stage installs exactly that list, so the runtime stage
# never names a library package by hand (names like libhdf5-103-1t64 change with every
# release). Libraries that no package owns (LibTorch and NCCL from the Python venv, which is
# copied whole) are skipped. A library that ldd cannot find is an error: the build stage has
# every library the executables were linked against.
#
#   usage: docker/runtime_packages.sh EXECUTABLE...
set -euo pipefail
if (($# == 0)); then
  echo "usage: $0 EXECUTABLE..." >&2
  exit 2
fi

# "libfoo.so.1 => /usr/lib/x86_64-linux-gnu/libfoo.so.1 (0x...)"; "=> not found" is fatal,
# except for the driver's libraries (libcuda.so.1, libnvidia-*.so.1): the NVIDIA Container
# Toolkit mounts the host's at `docker run --gpus`, so the build has none.
ldd_out=$(ldd "$@")
missing=$(awk '$2 == "=>" && $3 == "not" && $1 !~ /^lib(cuda|nvidia-[a-z-]+)\.so/ {print $1}' \
            <<<"$ldd_out" | sort -u)
if [[ -n $missing ]]; then
  echo "runtime_packages: libraries that ldd cannot find: $(tr '\n' ' ' <<<"$missing")" >&2
  exit 1
fi

owner_of() {  # prints the package owning library path $1, or nothing
  local path p owner
  path=$(realpath "$1")
  # With merged /usr, dpkg may have recorded /lib/... or /usr/lib/..., and the link or its target.
  for p in "$1" "$path" "${1#/usr}" "${path#/usr}" "/usr${1#/usr}" "/usr${path#/usr}"; do
    if owner=$(dpkg-query -S "$p" 2>/dev/null | grep -v '^diversion' | head -n 1) && [[ -n $owner ]]; then
      echo "${owner%%:*}"
      return
    fi
  done
}

awk '$2 == "=>" && $3 ~ /^\// {print $3}' <<<"$ldd_out" | sort -u | while read -r lib; do
  owner_of "$lib"
done | sort -u
