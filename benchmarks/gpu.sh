#!/usr/bin/env bash
# The accelerator check of the learned priors, one script (about 8 minutes on one GPU):
#   1. fine-tune the resolution-free source prior (SpectralDenoiser) on 64x64 and 128x128 GRF fields,
#      reporting its excess denoising loss over the exact denoiser at 32, 64 and 128;
#   2. run the DiffusionPDE-size tasks (128x128, 500 sensors; Poisson and Helmholtz, forward and
#      inverse) with it and with its exact-prior twin, against the exact posterior.
# Results: benchmarks/results/gpu_128.json (the device is recorded in "machine"), the prior in build/gpu.
#
#   bash benchmarks/gpu.sh              # the full check (GPU)
#   bash benchmarks/gpu.sh --cpu-smoke  # the same pipeline, tiny, on the CPU (the tests run this)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-build/gpu}
if [[ "${1:-}" == "--cpu-smoke" ]]; then
  TRAIN=(--grids 8,16 --eval-grids 32 --steps 4 --n-train 16 --batch-size 4 --depth 1 --width 4 --modes 4)
  INVERT=(--grid 16 --sensors 12 --draws 2 --samples 2 --steps 6 --tasks poisson-inverse
          --methods pigdm,dps --out-name gpu_smoke --results-dir "$OUT")
else
  TRAIN=(--grids 64,128 --eval-grids 32 --steps 3000 --n-train 4000 --batch-size 64 --lr 3e-3
         --p-mean 1.0 --p-std 2.5 --sigma-max 320)
  INVERT=(--grid 128 --sensors 500 --draws 10 --samples 16 --steps 100 --out-name gpu_128)
fi
"$PY" benchmarks/train_prior.py --data a --network spectral --name grf-a-128 --quiet \
  "${TRAIN[@]}" --out "$OUT/grf-a-128"
"$PY" benchmarks/inverse_learned.py --checkpoint "$OUT/grf-a-128/model" "${INVERT[@]}"
