#!/usr/bin/env bash
# Train the shipped demo weights of bundles/mim_brain_mri_anomaly_segmentation, stage by stage (seeded).
#
#   scripts/train_demo_weights.sh                 # all stages: vqvae detector mim ar
#   scripts/train_demo_weights.sh detector mim    # only these stages (each loads the previous stages' weights)
#   EXTRA="--epochs 2" scripts/train_demo_weights.sh vqvae   # extra overrides for every stage
#   AUGMENT="augment_site.yaml" scripts/train_demo_weights.sh ...  # more configs merged after augment.yaml
#
# On a multi-core machine the token stages can run side by side after vqvae (the shipped weights were made so):
#   scripts/train_demo_weights.sh detector &  scripts/train_demo_weights.sh ar &
#   EXTRA="--init_stage vqvae --init_prefixes ['tokenizer.']" scripts/train_demo_weights.sh mim; wait
#   scripts/train_demo_weights.sh assemble       # models/model.pt = tokenizer + detector + in-painter, calibrated
#
# Recalibrate the shipped weights on a larger healthy set (its dataset.json 'validation' list; the split-conformal
# 5 % flag needs >= 19 volumes, the demo's validation split has 8):
#   CAL_DATA=/path/to/healthy scripts/train_demo_weights.sh calibrate calibrate_ar
#
# Each stage writes <bundle>/models/stages/<stage>.pt, a log in <bundle>/logs/<stage>.log and a line with its
# command, seed and wall time in <bundle>/logs/stages.jsonl (copied into configs/metadata.json by
# scripts/record_training.py). The final weights are <bundle>/models/model.pt (MIM-OOD) and model_ar.pt (AR).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
B="$ROOT/bundles/mim_brain_mri_anomaly_segmentation"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
DATA="${DATA:-$ROOT/demo_data/brain_mri}"
SEED="${SEED:-0}"
STAGES=("$@")
[ ${#STAGES[@]} -gt 0 ] || STAGES=(vqvae detector mim ar)

if [ ! -f "$DATA/dataset.json" ]; then
  echo "[train] building the demo data in $(dirname "$DATA")" >&2
  "$ROOT/.venv/bin/medood" data demo --out "$(dirname "$DATA")" --size small --seed "$SEED" --only brain_mri
fi
mkdir -p "$B/logs"
for stage in "${STAGES[@]}"; do
  case "$stage" in
    vqvae) configs="['$B/configs/inference.yaml','$B/configs/train_vqvae.yaml']" ;;
    detector|mim) configs="['$B/configs/inference.yaml','$B/configs/train_tokens.yaml','$B/configs/train_$stage.yaml']" ;;
    assemble) configs="['$B/configs/inference.yaml','$B/configs/train_tokens.yaml','$B/configs/assemble.yaml']" ;;
    ar) configs="['$B/configs/inference.yaml','$B/configs/inference_ar.yaml','$B/configs/train_tokens.yaml','$B/configs/train_ar.yaml']" ;;
    calibrate) configs="['$B/configs/inference.yaml','$B/configs/train_tokens.yaml','$B/configs/calibrate.yaml']" ;;
    calibrate_ar) configs="['$B/configs/inference.yaml','$B/configs/inference_ar.yaml','$B/configs/train_tokens.yaml','$B/configs/calibrate.yaml']" ;;
    *) echo "unknown stage $stage (vqvae detector mim ar assemble calibrate calibrate_ar)" >&2; exit 2 ;;
  esac
  data="$DATA"
  case "$stage" in
    assemble) ;;
    calibrate*) data="${CAL_DATA:-$DATA}" ;;  # its 'validation' list: the healthy volumes of the flag threshold
    *) configs="${configs%]},'$B/configs/augment.yaml'"
       for extra_config in ${AUGMENT:-}; do configs="$configs,'$B/configs/$extra_config'"; done
       configs="$configs]" ;;
  esac
  cmd=("$PY" -m monai.bundle run --config_file "$configs" --bundle_root "$B" --dataset_dir "$data" --seed "$SEED"
       --meta_file "$B/configs/metadata.json" --logging_file "$B/configs/logging.conf")
  # shellcheck disable=SC2206
  [ -z "${EXTRA:-}" ] || cmd+=(${EXTRA})
  echo "[train] stage $stage: ${cmd[*]}" >&2
  start=$(date +%s)
  MEDOOD_PROGRESS=0 "${cmd[@]}" > "$B/logs/$stage.log" 2>&1
  end=$(date +%s)
  printf '{"stage": "%s", "seed": %s, "seconds": %s, "finished": "%s", "command": "%s", "machine": "%s"}\n' \
    "$stage" "$SEED" "$((end - start))" "$(date -u +%FT%TZ)" "${cmd[*]//\"/\\\"}" "$(uname -m), $(nproc) CPU cores" \
    >> "$B/logs/stages.jsonl"
  echo "[train] stage $stage done in $((end - start)) s" >&2
done
