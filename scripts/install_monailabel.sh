#!/usr/bin/env bash
# Install medood's MONAI Label app (the `monailabel` extra) into a virtual environment, offline-safe:
#   scripts/install_monailabel.sh VENV        (VENV is created when missing)
# `pip install monailabel==0.8.5` as it stands pulls a CUDA torch, downgrades numpy and breaks on pydicom 3.
# So: torch==2.13.0 (CPU) first, medood with the extra's runtime dependencies pinned by
# requirements/monailabel-constraints.txt, then MONAI Label and pydicom-seg WITHOUT their dependencies.
# torchvision is not installed (PyPI's does not import beside torch 2.13.0+cpu): medood.monailabel.compat
# provides the two functions MONAI Label imports from it. Ends with an import check of the app.
set -euo pipefail
VENV="${1:?usage: scripts/install_monailabel.sh VENV}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONSTRAINTS="$ROOT/requirements/monailabel-constraints.txt"
log() { printf '[medood] %s\n' "$*" >&2; }
[ -x "$VENV/bin/python" ] || { log "creating $VENV"; "${PYTHON:-python3}" -m venv "$VENV"; }
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null; then
  log "installing torch==2.13.0 (CPU build) first"
  "${PIP[@]}" install "torch==2.13.0"
fi
log "installing medood[dev,monailabel] (editable) with pinned app dependencies"
"${PIP[@]}" install -c "$CONSTRAINTS" -e "$ROOT[dev,monailabel]"
log "installing monailabel and pydicom-seg without their dependencies"
"${PIP[@]}" install --no-deps -c "$CONSTRAINTS" monailabel pydicom-seg
"$VENV/bin/python" - <<'PY'
from medood.monailabel.compat import install_shims

install_shims()
import monailabel.app  # noqa: F401  (every module the server imports)
from medood.monailabel.app import MedoodLabelApp  # noqa: F401

print("[medood] MONAI Label app imports: ok")
PY
