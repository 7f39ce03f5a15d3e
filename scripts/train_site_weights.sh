#!/usr/bin/env bash
# Fine-tune the shipped MIM-OOD and AR weights for scans from other sites (issue 24): every stage sees Nyul-
# standardised slices (inference.yaml histogram_landmarks) and the site augmentations of augment_site.yaml.
# Starts from the shipped models (a short fine-tune instead of a full retraining, sized for 2 CPU cores):
#   1. tokenizer (vqvae): EPOCHS_VQVAE epochs from the shipped tokenizer;
#   2. token detector, in-painter and AR prior side by side, EPOCHS_TOKENS epochs each, from the shipped stages
#      on the fine-tuned tokenizer;
#   3. assemble (models/model.pt), then both calibrated on CAL_DATA (>= 19 healthy volumes for the 5 % flag).
#   CAL_DATA=/path/to/healthy scripts/train_site_weights.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
B="$ROOT/bundles/mim_brain_mri_anomaly_segmentation"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
S="$B/models/stages"
EPOCHS_VQVAE="${EPOCHS_VQVAE:-12}"
EPOCHS_TOKENS="${EPOCHS_TOKENS:-1}"
export AUGMENT="augment_site.yaml"
mkdir -p "$S"
cp "$B/models/model.pt" "$S/shipped.pt"
cp "$B/models/model_ar.pt" "$S/shipped_ar.pt"
OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" EXTRA="--epochs $EPOCHS_VQVAE --learning_rate 0.0002 --init_ckpt $S/shipped.pt --init_prefixes ['tokenizer.']" \
  "$ROOT/scripts/train_demo_weights.sh" vqvae
# the shipped stages with the fine-tuned tokenizer: the token stages' starting points
"$PY" - "$S" <<'PYEOF'
import sys
import torch
from medood.utils.checkpoints import save_checkpoint
stages = sys.argv[1]
tok = {k: v for k, v in torch.load(f"{stages}/vqvae.pt", weights_only=True)["model"].items() if k.startswith("tokenizer.")}
for src, dst in (("shipped", "ft"), ("shipped_ar", "ft_ar")):
    state = torch.load(f"{stages}/{src}.pt", weights_only=True)["model"]
    state.update(tok)
    save_checkpoint({"model": state}, f"{stages}/{dst}.pt")
PYEOF
T="--epochs $EPOCHS_TOKENS --learning_rate 0.00025"
OMP_NUM_THREADS=1 EXTRA="$T --init_stage ft --init_prefixes ['tokenizer.','token_detector.']" "$ROOT/scripts/train_demo_weights.sh" detector &
OMP_NUM_THREADS=1 EXTRA="$T --init_stage ft --init_prefixes ['tokenizer.','inpainter.']" "$ROOT/scripts/train_demo_weights.sh" mim &
OMP_NUM_THREADS=1 EXTRA="$T --init_stage ft_ar --init_prefixes ['tokenizer.','prior.']" "$ROOT/scripts/train_demo_weights.sh" ar &
wait
"$ROOT/scripts/train_demo_weights.sh" assemble
[ -z "${CAL_DATA:-}" ] || "$ROOT/scripts/train_demo_weights.sh" calibrate calibrate_ar
