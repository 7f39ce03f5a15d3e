#!/usr/bin/env bash
# medood quickstart: create .venv, install medood, build the embedded demo data (no download), run the flagship
# MIM-OOD brain-MRI bundle on the demo test volumes with the shipped weights, and print where the outputs are.
#
#   ./scripts/quickstart.sh            # inference with the shipped weights (about a minute after installing)
#   ./scripts/quickstart.sh --train    # retrain every stage from scratch on the demo training set first (hours on CPU)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
TRAIN=0
for arg in "$@"; do
  case "$arg" in
    --train) TRAIN=1 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg (use --train or --help)" >&2; exit 2 ;;
  esac
done

ensure_venv ""
BUNDLE="$ROOT/bundles/mim_brain_mri_anomaly_segmentation"
DATA="$ROOT/demo_data"
OUT="$ROOT/outputs/mim_brain_mri"
mkdir -p "$ROOT/outputs"

if [ ! -f "$DATA/brain_mri/dataset.json" ]; then
  log "building the demo data in $DATA (real MNI152 anatomy from the nilearn wheel + synthetic lesions)"
  "$VENV/bin/medood" data demo --out "$DATA" --size small --seed 0
fi

if [ "$TRAIN" = 1 ]; then
  log "retraining every stage of the MIM-OOD bundle (vqvae, token detector, in-painter, AR baseline): see $BUNDLE/logs/"
  DATA="$DATA/brain_mri" PYTHON="$VENV/bin/python" "$ROOT/scripts/train_demo_weights.sh"
fi
if [ ! -f "$BUNDLE/models/model.pt" ]; then
  echo "no trained weights in $BUNDLE/models/model.pt: run ./scripts/quickstart.sh --train" >&2
  exit 1
fi

log "running the MIM-OOD bundle on the demo brain-MRI test set"
export MEDOOD_RUN_MODE=overwrite   # the quickstart owns its output folder: a rerun replaces the previous run
cd "$ROOT"
"$VENV/bin/python" -m monai.bundle run \
  --config_file "['$BUNDLE/configs/inference.yaml','$BUNDLE/configs/evaluate.yaml']" \
  --bundle_root "$BUNDLE" --dataset_dir "$DATA/brain_mri" --output_dir "$OUT" \
  --meta_file "$BUNDLE/configs/metadata.json" --logging_file "$BUNDLE/configs/logging.conf" > "$OUT.log" 2>&1 \
  || { tail -30 "$OUT.log" >&2; echo "the bundle run failed; full log: $OUT.log" >&2; exit 1; }

"$VENV/bin/python" - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
m = json.loads((out / "metrics.json").read_text())
maps = sorted(out.glob("*_anomaly_map.nii.gz"))
failed = max(0, len((out / "errors.csv").read_text().splitlines()) - 1) if (out / "errors.csv").is_file() else 0
print(f"\nmedood quickstart: {len(maps)} volumes scored. Outputs in {out}/")
outputs = [  # (file or pattern written by inference.yaml + evaluate.yaml, what it is); only those present are named
    ("*_anomaly_map.nii.gz", "<case>_anomaly_map.nii.gz  voxel anomaly maps (float32, same grid and affine as each input)"),
    ("*_anomaly_seg.nii.gz", "<case>_anomaly_seg.nii.gz  masks at the threshold fixed on healthy validation volumes"),
    ("scores.csv", "scores.csv                 volume scores (higher = more anomalous), ground truth and 'flagged'"),
    ("slice_scores.csv", "slice_scores.csv           one score per axial slice of every input"),
    ("metrics.json", "metrics.json               metrics against the demo lesion masks"),
    ("thresholds.json", "thresholds.json            the healthy-validation thresholds (mask, flag) and the map colour window"),
    ("report.html", "report.html                the run report: worst slices, slice-score curves, scores vs healthy (open in a browser)"),
    ("worst_slices.png", "worst_slices.png           the most anomalous slices (map over the input, lesion outline in green)"),
    ("errors.csv", f"errors.csv                 cases that could not be read (case,file,error): {failed} here"),
]
for pattern, line in outputs:
    if any(out.glob(pattern)):
        print("  " + line)
v = m.get("volume", {}); x = m.get("voxel", {}).get("metrics", {})
if v:
    print(f"\nvolume AUROC {v['auroc']:.3f}   pixel AP {x.get('pixel_ap', float('nan')):.3f}   "
          f"best Dice {x.get('best_dice', float('nan')):.3f} (oracle)   Dice at healthy threshold {x.get('dice', float('nan')):.3f}")
print(f"\n3D Slicer: open Slicer, then in its Python console run\n  exec(open(r'{out / 'open_in_slicer.py'}').read())\n"
      "or File > Add Data: add an input T1w and its <case>_anomaly_map.nii.gz, show the map as foreground "
      "with the 'Inferno' colour table.")
PY
