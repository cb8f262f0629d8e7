#!/usr/bin/env bash
# Idempotent install: system libraries FFCV builds against, a virtual environment in .venv,
# and fastbt in editable mode with its test extra. Fast (a few seconds) when all is present.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${FASTBT_VENV:-.venv}
PY=${PYTHON:-python3}
TORCH_PINS="torch==2.14.1 torchvision==0.29.1"   # the releases this kind of machine serves from disk
STAMP="$VENV/.fastbt-install-stamp"

# 1. System libraries for ffcv's C extension (libjpeg-turbo, OpenCV core/imgproc via pkg-config).
if ! { command -v pkg-config >/dev/null && command -v g++ >/dev/null \
       && pkg-config --exists libturbojpeg opencv4; }; then
    echo "[setup] installing system libraries for ffcv (apt)"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        pkg-config g++ libturbojpeg0-dev libopencv-dev >/dev/null
fi

# 2. The virtual environment.
[ -x "$VENV/bin/python" ] || { echo "[setup] creating $VENV"; "$PY" -m venv "$VENV"; }

# 3. Python packages, redone only when the install recipe changed (stamp = hash of the recipe).
want=$(cat setup.cfg pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
    echo "[setup] installing Python packages into $VENV (first time: a few minutes)"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # torch first, pinned, so the dependency resolver never reaches for a multi-GB download.
    "$VENV/bin/python" -m pip install -q $TORCH_PINS
    "$VENV/bin/python" -m pip install -q -e ".[test]"
    echo "$want" > "$STAMP"
fi
