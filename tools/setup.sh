#!/usr/bin/env bash
# Sets up the development environment on a CPU machine: a virtual environment in .venv with torch 2.13.0
# (pinned through tools/constraints.txt), the test tools, and rankseg_fast built in place (editable).
# Idempotent: re-running rebuilds the extension. On a GPU machine with its own torch, install with
#   pip install --no-build-isolation --no-deps -e .
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
pip="python -m pip install -q --disable-pip-version-check -c tools/constraints.txt"
$pip torch==2.13.0
$pip numpy scipy pyyaml pillow tqdm matplotlib pycocotools pytest pytest-benchmark ninja
$pip --no-build-isolation --no-deps -e .
python -c "import rankseg_fast as r; assert r.HAS_OPS, r.extension.LOAD_ERROR; print('rankseg_fast', r.__version__, r.BUILD_INFO)"
