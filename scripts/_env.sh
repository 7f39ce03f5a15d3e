# Shared by quickstart.sh and test.sh: create .venv and install medood into it.
# torch==2.13.0 is installed FIRST: with no torch present, pip would resolve a multi-GB CUDA build.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MEDOOD_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

log() { printf '[medood] %s\n' "$*" >&2; }

ensure_venv() {
  local extras="$1"
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtual environment in $VENV"
    "$PY" -m venv "$VENV"
  fi
  local pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
  if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null; then
    log "installing torch==2.13.0 (CPU build) first"
    "${pip[@]}" install "torch==2.13.0"
  fi
  log "installing medood${extras:+[$extras]} (editable)"
  "${pip[@]}" install -e "$ROOT${extras:+[$extras]}"
}
