#!/usr/bin/env bash
# The CPU test suite against the GPU machine's torch (2.11.0 + torchvision 0.26), in a second venv.
#
#   scripts/test_torch211.sh [VENV] [pytest args...]     # VENV default: /work/venvs/t211
#
# Creates VENV once (torch from the registry: a CUDA build, several GB; it runs on the CPU), with
# no ffcv and no DALI, as on the GPU machine: the tests that need them skip. fastbt is not
# installed there: the checkout goes on PYTHONPATH. Not run by CI; nothing of .venv is touched.
set -euo pipefail

cd "$(dirname "$0")/.."
venv="${1:-/work/venvs/t211}"
shift $(( $# > 0 ? 1 : 0 ))

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.11.0')" 2>/dev/null; then
    python3 -m venv "$venv"
    # the machine's pip constraints cap torch at the release on its disk: not for this venv
    PIP_CONFIG_FILE=/dev/null "$venv/bin/pip" install torch==2.11.0 torchvision==0.26.0 numpy pyyaml \
        numba pillow matplotlib tqdm pytest pytest-timeout wheel setuptools
fi

"$venv/bin/python" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec "$venv/bin/python" -m pytest -p no:cacheprovider -q "$@"
