#!/usr/bin/env bash
# The rows of benchmarks/results/recipes/ for one trained model, in one process (one CPU thread): run one model per core.
# Usage: bash benchmarks/recipes_vs_nfe.sh MODEL NUM_SAMPLES OUT_DIR     (MODEL: demo, demo_edm, patches, patches_edm)
#        FEW_STEPS_ONLY=1 bash benchmarks/recipes_vs_nfe.sh ...           (the 10-80 NFE rows only)
# Needs runs/MODEL/checkpoints/last.ckpt (pds-lightning fit --config configs/MODEL.yaml). Rows accumulate in
# OUT_DIR/samplers_vs_nfe.json; a rerun skips the rows already there. Join and report: see benchmarks/recipes_vs_nfe.py.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=$1; N=$2; OUT=$3
PY=${PY:-.venv/bin/python}
PC="vanilla pds_a5 pds_auto pds_pilot pds_consistent"
# Issue 33's goal compares these first: every unpreconditioned sigma-space sampler and the 2M SDE's PDS variants.
FIRST="dpmpp_2m_sde dpmpp_2m_sde_bands edm_stochastic restart dpmpp_2m heun_sde_grid edm_heun euler dpmpp_2m_sde_pds
       dpmpp_2m_sde_pds_auto"
run() { OMP_NUM_THREADS=1 "$PY" -m benchmarks.samplers_vs_nfe --models "$MODEL" --num-samples "$N" --batch-size "$N" \
          --output-dir "$OUT" "$@"; }
run --nfe 10 20 40 80 --samplers $FIRST
# Every other sampler at the few-step budgets.
run --nfe 10 20 40 80
[ "${FEW_STEPS_ONLY:-0}" = 1 ] && exit 0
# The stochastic samplers at 200 NFE: issue 25's goal compares against the best sampler at 200.
run --nfe 200 --samplers edm_stochastic dpmpp_2m_sde
# The PC rows (vanilla, PDS) also at 132 and 200 NFE, where PC samplers converge.
run --nfe 132 200 --samplers $PC
