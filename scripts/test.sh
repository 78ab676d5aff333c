#!/usr/bin/env bash
# Install (idempotent), start a throwaway PostgreSQL on 127.0.0.1 for the storage tests, then run the
# whole test suite. Extra arguments go to pytest. The server is stopped (and its folder removed) on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
if [ -z "${AUTOPRUNE_TEST_PG_URL:-}" ]; then
  PGDIR=$(mktemp -d /tmp/autoprune_pg.XXXXXX)
  trap 'bash scripts/start_postgres.sh stop "$PGDIR" || true; rm -rf "$PGDIR"' EXIT
  if bash scripts/start_postgres.sh start "$PGDIR" >/dev/null; then
    export AUTOPRUNE_TEST_PG_URL
    AUTOPRUNE_TEST_PG_URL=$(cat "$PGDIR/url")
  else
    echo "[test] PostgreSQL could not be started: tests/test_postgres.py will skip (or fail when CI=true)" >&2
  fi
fi
.venv/bin/python -m pytest "$@"
