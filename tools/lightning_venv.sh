#!/usr/bin/env bash
# Creates a Python venv with real PyTorch Lightning over Debian's torch 1.13, for the Lightning
# interop tests (tests/tools/test_lightning_interop.py):
#
#   bash tools/lightning_venv.sh [DIR]          # DIR defaults to build/lightning-venv
#
# The venv sees Debian's site-packages (--system-site-packages: python3-torch, numpy, h5py,
# yaml, packaging, typing-extensions, xxhash) and adds only the pure-Python packages Lightning
# 2.2.5 needs that Debian 12 lacks, every one pinned and installed with --no-deps so that pip
# never pulls a new torch. (fsspec's [http] extra, aiohttp, is left out: only remote paths use
# it.) `pip check` is not meaningful here: Debian's torch calls itself 1.13.0a0, which pip
# ranks below Lightning's torch>=1.13.0.
#
# Needs python3-venv (its ensurepip provides pip and setuptools/pkg_resources, which
# lightning-utilities imports) and network access to PyPI on the first run. Idempotent: an
# existing venv whose `import pytorch_lightning` gives the pinned version is left alone and
# nothing is printed; otherwise one line says what is being done.
set -euo pipefail

dir=${1:-build/lightning-venv}
pins=(
  pytorch-lightning==2.2.5
  lightning-utilities==0.11.2
  torchmetrics==1.3.2
  fsspec==2024.3.1
  tqdm==4.66.4
)
want=2.2.5
python=$dir/bin/python

check() {
  [[ -x $python ]] && "$python" - "$want" >/dev/null 2>&1 <<'EOF'
import sys
import pytorch_lightning, torch, lightning_utilities, torchmetrics, fsspec, tqdm, pkg_resources
sys.exit(0 if pytorch_lightning.__version__ == sys.argv[1] else 1)
EOF
}

if check; then
  exit 0
fi

echo "lightning_venv: installing ${pins[*]} (--no-deps, over Debian's torch) into $dir"
if [[ ! -x $python ]]; then
  if ! /usr/bin/python3 -m venv --system-site-packages "$dir" >/dev/null; then
    echo "lightning_venv: error: '/usr/bin/python3 -m venv' failed (apt-get install python3-venv)" >&2
    exit 1
  fi
fi
"$python" -m pip install --quiet --disable-pip-version-check --no-input --no-deps "${pins[@]}"
if ! "$python" -c 'import pkg_resources' >/dev/null 2>&1; then
  # lightning-utilities imports pkg_resources; ensurepip normally installs setuptools.
  "$python" -m pip install --quiet --disable-pip-version-check --no-input --no-deps \
    setuptools==66.1.1
fi
if ! check; then
  echo "lightning_venv: error: 'import pytorch_lightning' ($want) fails in $dir:" >&2
  "$python" -c 'import pytorch_lightning' >&2 || true
  exit 1
fi
