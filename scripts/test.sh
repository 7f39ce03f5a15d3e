#!/usr/bin/env bash
# Install the dev extras into .venv and run the test suite.
#   ./scripts/test.sh                 # whole suite
#   ./scripts/test.sh -m "not slow"   # extra arguments go to pytest
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
ensure_venv dev
cd "$ROOT"
export PYTHONHASHSEED=0 OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
# the layer contract of pyproject.toml ([tool.importlinter]): a lower layer never imports a higher one
log "checking the import layers (lint-imports)"
"$VENV/bin/lint-imports" --no-cache >/dev/null || { "$VENV/bin/lint-imports" --no-cache; log "import layers broken"; exit 1; }
set +e
"$VENV/bin/python" -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  # pytest's "no tests collected" is a failure here: a suite that silently finds nothing must not pass.
  log "pytest collected no tests (exit 5): treating as failure"
  exit 1
fi
exit "$rc"
