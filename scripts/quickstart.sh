#!/usr/bin/env bash
# Quick start: install, then run the small search on the embedded MiniLM-L6 and local SST-2,
# then write its dashboard. Re-running resumes the same study (nothing is recomputed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/autoprune search -c search_spaces/quickstart.yaml "$@"
.venv/bin/autoprune status -c search_spaces/quickstart.yaml
.venv/bin/autoprune dashboard -c search_spaces/quickstart.yaml
