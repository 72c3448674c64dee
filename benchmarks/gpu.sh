#!/usr/bin/env bash
# The accelerator check of the learned priors, one script (at most about 8 minutes on one GPU):
#   1. the shipped resolution-free source prior grf-a (SpectralDenoiser, trained at 32 and 64 on a
#      CPU) on the DiffusionPDE-size tasks (128x128, 500 sensors; Poisson and Helmholtz, forward and
#      inverse), each row beside its exact-prior twin and the exact posterior;
#   2. the same network trained on 64x64 and 128x128 GRF fields, reporting its excess denoising loss
#      over the exact denoiser at 32, 64 and 128;
#   3. that trained prior on the DiffusionPDE task (poisson-inverse, 128x128, 500 sensors).
# Each phase runs under a time cap in seconds (INVERT_SECONDS, TRAIN_SECONDS, TRAINED_SECONDS);
# PHASES (default 123) names the phases to run, e.g. PHASES=1 for more draws of phase 1 alone.
# Phase 1 runs DPS at the common 100 steps and at 2100 (dps@2100), the network-VJP budget per
# sample of cached TMPD with a learned prior (16 times x 4 states x 500 sensors / 16 samples + 100).
# The inverse phases write their results after every draw and run draws across the tasks, so a
# capped phase keeps what it finished and covers every task; the results say how many draws.
# Phase 1 resumes from the draws already in $GPU_RESULTS/gpu_128.json (default
# benchmarks/results): commit that file after a run and the next GPU run continues it.
# Results: gpu_128.json there, $GPU_OUT/gpu_128_trained.json (the device is recorded in
# "machine"), the trained prior in $GPU_OUT/grf-a-128 (GPU_OUT defaults to build/gpu).
#
#   bash benchmarks/gpu.sh              # the full check (GPU)
#   bash benchmarks/gpu.sh --cpu-smoke  # the same pipeline, tiny, on the CPU (the tests run this)
#   PHASES=1 INVERT_SECONDS=500 bash benchmarks/gpu.sh   # more draws of phase 1 only
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DIR=${GPU_OUT:-build/gpu}
if [[ "${1:-}" == "--cpu-smoke" ]]; then
  NAME=gpu_smoke
  TRAIN=(--grids 8,16 --eval-grids 32 --steps 4 --n-train 16 --batch-size 4 --depth 1 --width 4 --modes 4)
  INVERT=(--grid 16 --sensors 12 --draws 2 --samples 2 --steps 6 --methods pigdm,dps,dps@8)
  TASKS=poisson-inverse
  CAPS=(900 900 900)
  RESULTS=$DIR
  RESUME=()
else
  NAME=gpu_128
  TRAIN=(--grids 64,128 --eval-grids 32 --steps 3000 --n-train 4000 --batch-size 64 --lr 3e-3
         --p-mean 1.0 --p-std 2.5 --sigma-max 320)
  INVERT=(--grid 128 --sensors 500 --draws 10 --samples 16 --steps 100 --methods tmpd-cached,dps,dps@2100)
  TASKS=poisson-forward,poisson-inverse,helmholtz-forward,helmholtz-inverse
  CAPS=(240 150 90)
  RESULTS=${GPU_RESULTS:-benchmarks/results}
  RESUME=(--resume)
fi
mkdir -p "$DIR"
failed=0

# phase NAME CAP COMMAND...: run under a time cap; a capped phase is reported, not fatal.
phase() {
  local name=$1 cap=$2
  shift 2
  local t0=$SECONDS rc=0
  echo "== $name (cap ${cap} s)"
  timeout --signal=TERM --kill-after=10 "$cap" "$@" || rc=$?
  if [[ $rc == 124 || $rc == 137 ]]; then
    echo "== $name: stopped at its ${cap} s cap after $((SECONDS - t0)) s (kept what it finished)"
  elif [[ $rc != 0 ]]; then
    echo "== $name: failed (exit $rc) after $((SECONDS - t0)) s"
    failed=1
  else
    echo "== $name: done in $((SECONDS - t0)) s"
  fi
  return 0
}

PHASES=${PHASES:-123}
[[ $PHASES == *1* ]] && phase "shipped prior grf-a" "${INVERT_SECONDS:-${CAPS[0]}}" \
  "$PY" benchmarks/inverse_learned.py --prior grf-a --tasks "$TASKS" "${INVERT[@]}" \
  --out-name "$NAME" --results-dir "$RESULTS" "${RESUME[@]}"
[[ $PHASES == *2* ]] && phase "train grf-a-128" "${TRAIN_SECONDS:-${CAPS[1]}}" \
  "$PY" benchmarks/train_prior.py --data a --network spectral --name grf-a-128 --quiet \
  "${TRAIN[@]}" --out "$DIR/grf-a-128"
if [[ $PHASES != *3* ]]; then
  :
elif [[ -f "$DIR/grf-a-128/model/metadata.json" ]]; then
  phase "trained prior grf-a-128" "${TRAINED_SECONDS:-${CAPS[2]}}" \
    "$PY" benchmarks/inverse_learned.py --checkpoint "$DIR/grf-a-128/model" \
    --tasks poisson-inverse "${INVERT[@]}" --out-name "${NAME}_trained" --results-dir "$DIR"
else
  echo "== trained prior: skipped (training did not finish)"
fi
exit $failed
