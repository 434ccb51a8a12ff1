#!/usr/bin/env bash
# Keeps docker/Dockerfile in step with tools/setup.sh: every Debian package in setup.sh's
# `packages=(...)` must be installed by an `apt-get install` in the Dockerfile, or be listed
# below with what stands for it in the image (and that must be there), or with the reason the
# image does without it. Fails naming every package that is neither, and every entry below
# that setup.sh no longer has. No Docker engine is needed. (ctest: docker_packages_in_step)
#
#   usage: tools/check_docker_packages.sh [SETUP_SH [DOCKERFILE]]
#          (defaults: tools/setup.sh and docker/Dockerfile of this checkout)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
setup_sh=${1:-$root/tools/setup.sh}
dockerfile=${2:-$root/docker/Dockerfile}

# setup.sh package -> the package that replaces it in the image, as "pip:NAME" (a `pip install`
# in the Dockerfile) or "apt:NAME" (an `apt-get install` under another name).
declare -A replaced_by=(
  [libtorch-dev]=pip:torch          # Debian's LibTorch 1.13 is CPU-only; the wheel's has CUDA
  [python3-torch]=pip:torch         # the same wheel serves Python (tools/ckpt_to_lightning.py)
  [libopenblas0-pthread]=pip:torch  # picks the BLAS of Debian's LibTorch; the wheel has its own
)
# setup.sh package -> why the image does without it.
declare -A not_in_image=(
  [clang-14]="libFuzzer for the fuzz_smoke test; fuzzing is not run in the GPU image"
  [libclang-rt-14-dev]="ASan/UBSan runtimes for the fuzz_smoke test, as clang-14"
  [python3-matplotlib]="only bench/plot.py draws figures"
)

for f in "$setup_sh" "$dockerfile"; do
  [[ -f $f ]] || { echo "check_docker_packages: no such file: $f" >&2; exit 2; }
done

# setup.sh's array: from `packages=(` to the first `)` outside a comment, comments dropped.
read -ra packages <<<"$(awk '
  /^[[:space:]]*packages=\(/ { on = 1; sub(/^[[:space:]]*packages=\(/, "") }
  on { sub(/#.*/, ""); if (index($0, ")")) { sub(/\).*/, ""); print; exit } print }
' "$setup_sh" | tr '\n' ' ')"
if ((${#packages[@]} == 0)); then
  echo "check_docker_packages: no 'packages=(...)' array, or an empty one, in $setup_sh" >&2
  exit 2
fi

# The Dockerfile's instructions, one per line: continuation lines joined, comment lines
# (which Docker drops even inside a continued RUN) removed. Then the words after each
# `apt-get install` / `pip install` up to the end of that command (&&, ||, ;, |), less options
# and version pins (torch==2.13.0 -> torch).
installed_by() {  # $1: "apt-get" or "pip"
  awk '/^[[:space:]]*#/ {next}
       { line = line $0 }
       /\\[[:space:]]*$/ { sub(/\\[[:space:]]*$/, "", line); next }
       { print line; line = "" }
       END { if (line != "") print line }' "$dockerfile" |
    awk -v tool="$1" '{
      for (i = 1; i < NF; i++) {
        if ($i != tool || $(i + 1) != "install") continue
        for (j = i + 2; j <= NF; j++) {
          w = $j
          if (w == "&&" || w == "||" || w == "|" || w == ";") break
          last = sub(/;$/, "", w)
          gsub(/["\047]/, "", w)
          if (w !~ /^-/ && w != "") { sub(/[=<>~!].*$/, "", w); print w }
          if (last) break
        }
      }
    }' | sort -u
}
mapfile -t apt_installed < <(installed_by apt-get)
mapfile -t pip_installed < <(installed_by pip)
declare -A in_image=()
for p in "${apt_installed[@]}"; do in_image[apt:$p]=1; done
for p in "${pip_installed[@]}"; do in_image[pip:$p]=1; done
if ((${#apt_installed[@]} == 0)); then
  echo "check_docker_packages: no 'apt-get install' found in $dockerfile" >&2
  exit 2
fi

problems=()
declare -A in_setup=()
for p in "${packages[@]}"; do
  in_setup[$p]=1
  if [[ -n ${in_image[apt:$p]:-} ]]; then
    continue
  elif [[ -n ${replaced_by[$p]:-} ]]; then
    [[ -n ${in_image[${replaced_by[$p]}]:-} ]] ||
      problems+=("$p: replaced by '${replaced_by[$p]#*:}' (${replaced_by[$p]%%:*}), which the Dockerfile does not install")
  elif [[ -n ${not_in_image[$p]:-} ]]; then
    continue
  else
    problems+=("$p: in setup.sh but not installed by the Dockerfile; add it to an apt-get install there, or to replaced_by / not_in_image in $0 with the reason")
  fi
done
for p in "${!replaced_by[@]}" "${!not_in_image[@]}"; do
  [[ -n ${in_setup[$p]:-} ]] ||
    problems+=("$p: listed in $0 but no longer in setup.sh; remove the entry")
done

if ((${#problems[@]})); then
  echo "check_docker_packages: $dockerfile is out of step with $setup_sh:" >&2
  printf '  %s\n' "${problems[@]}" >&2
  exit 1
fi
echo "check_docker_packages: all ${#packages[@]} packages of $(basename "$setup_sh") are in" \
     "$(basename "$dockerfile") (${#replaced_by[@]} replaced, ${#not_in_image[@]} left out with a reason)"
