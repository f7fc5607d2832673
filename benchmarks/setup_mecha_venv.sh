#!/usr/bin/env bash
# Create a separate virtual environment with sd-mecha (PyPI) for benchmarks/bench_merge.py.
#
# sd-mecha 1.1.x needs scipy>=1.14 (hence numpy 2), which the project's own environment does not
# have, so it gets its own venv. torch is installed FIRST and pinned to the CPU build so that
# `pip install sd-mecha` finds the requirement already satisfied and never pulls a CUDA wheel.
#
# Usage: bash benchmarks/setup_mecha_venv.sh [VENV_DIR]      (default /tmp/mecha-venv)
# Env:   TORCH_SPEC (default "torch==2.13.0"), MECHA_SPEC (default "sd-mecha")
set -euo pipefail

VENV="${1:-/tmp/mecha-venv}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
MECHA_SPEC="${MECHA_SPEC:-sd-mecha}"
PY="${PYTHON:-python3}"

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import sd_mecha" 2>/dev/null; then
    echo "sd-mecha already installed in $VENV"
    exit 0
fi

"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# CPU wheel: the PyTorch CPU index is not used here; torch==X from PyPI's default index on Linux
# x86_64 would be the CUDA build, so prefer a local "+cpu" wheel when pip can see one (find-links).
"$VENV/bin/python" -m pip install --quiet "$TORCH_SPEC"
"$VENV/bin/python" - <<'PY'
import torch, sys
if torch.version.cuda is not None:
    sys.exit(f"refusing: torch {torch.__version__} is a CUDA build; install a CPU wheel first")
print("torch", torch.__version__, "(CPU)")
PY
"$VENV/bin/python" -m pip install --quiet "$MECHA_SPEC"
"$VENV/bin/python" -c "import sd_mecha, importlib.metadata as m; print('sd-mecha', m.version('sd-mecha'))"
