#!/usr/bin/env bash
# Run the MIM bundle inference exactly as scripts/quickstart.sh does, into $1 (no venv set-up, no data build).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
OUT="$1"; DATA="${DATA:-$ROOT/demo_data}"
BUNDLE="$ROOT/bundles/mim_brain_mri_anomaly_segmentation"
"$PY" -m monai.bundle run \
  --config_file "['$BUNDLE/configs/inference.yaml','$BUNDLE/configs/evaluate.yaml']" \
  --bundle_root "$BUNDLE" --dataset_dir "$DATA/brain_mri" --output_dir "$OUT" \
  --meta_file "$BUNDLE/configs/metadata.json" --logging_file "$BUNDLE/configs/logging.conf"
