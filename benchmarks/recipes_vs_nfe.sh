#!/usr/bin/env bash
# Issue 25's rows for one trained model, in one process (one CPU thread): run one model per core.
# Usage: bash benchmarks/recipes_vs_nfe.sh MODEL NUM_SAMPLES OUT_DIR     (MODEL: demo, demo_edm, patches, patches_edm)
# Needs runs/MODEL/checkpoints/last.ckpt (pds-lightning fit --config configs/MODEL.yaml). Rows accumulate in
# OUT_DIR/samplers_vs_nfe.json; a rerun skips the rows already there. Join and report: see benchmarks/recipes_vs_nfe.py.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=$1; N=$2; OUT=$3
PY=${PY:-.venv/bin/python}
PC="vanilla pds_a5 pds_auto pds_pilot pds_consistent"
run() { OMP_NUM_THREADS=1 "$PY" -m benchmarks.samplers_vs_nfe --models "$MODEL" --num-samples "$N" --batch-size "$N" \
          --output-dir "$OUT" "$@"; }
# Every sampler at the few-step budgets.
run --nfe 10 20 40 80
# The stochastic samplers at 200 NFE: issue 25's goal compares against the best sampler at 200.
run --nfe 200 --samplers edm_stochastic dpmpp_2m_sde
# The PC rows (vanilla, PDS) also at 132 and 200 NFE, where PC samplers converge.
run --nfe 132 200 --samplers $PC
