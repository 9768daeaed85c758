#!/usr/bin/env bash
# Samples/s of `pds-lightning predict` with a trained model on CPU, 1 process vs 2 DDP (gloo) processes.
# Usage: bash benchmarks/predict_throughput.sh [CONFIG] [CKPT] [SEEDS] [N_STEPS]
# Writes benchmarks/results/predict_throughput.md; each run's manifest.json holds NFE, wall time, samples/s.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:-configs/demo.yaml}
CKPT=${2:-runs/demo/checkpoints/last.ckpt}
SEEDS=${3:-0-63}
STEPS=${4:-100}
OUT=$(mktemp -d)
PY=${PY:-.venv/bin/python}
row() { "$PY" - "$1" "$2" <<'PYEOF'
import json, sys
m = json.load(open(sys.argv[1] + "/manifest.json"))
print(f"| {sys.argv[2]} | {m['num_written']} | {m['nfe_per_sample']} | {m['wall_time_s']:.1f} | {m['samples_per_s']:.2f} |")
PYEOF
}
{
  echo "# predict throughput ($CONFIG, $STEPS steps, PDS as configured, seeds $SEEDS, CPU, 1 thread per process)"
  echo
  echo "| processes | samples | NFE | wall time (s) | samples/s |"
  echo "|---|---|---|---|---|"
  for n in 1 2; do
    strategy=auto; [ "$n" -gt 1 ] && strategy=ddp
    OMP_NUM_THREADS=1 PYTHONWARNINGS=ignore "$PY" -m pds_lightning.cli predict --config "$CONFIG" --ckpt_path "$CKPT" \
      --trainer.logger false --trainer.enable_progress_bar false --trainer.accelerator cpu --trainer.devices "$n" \
      --trainer.strategy "$strategy" --data.predict.seeds "$SEEDS" --model.sampler.steps "$STEPS" \
      --trainer.callbacks+=pds_lightning.callbacks.SampleWriter --trainer.callbacks.output_dir "$OUT/p$n" >/dev/null 2>&1
    row "$OUT/p$n" "$n"
  done
  if cmp -s <(cd "$OUT/p1" && find . -name '*.png' | sort | xargs cat) <(cd "$OUT/p2" && find . -name '*.png' | sort | xargs cat); then
    echo; echo "PNGs of the 1- and 2-process runs are byte-identical."
  else
    echo; echo "PNGs of the 1- and 2-process runs DIFFER."
  fi
} | tee benchmarks/results/predict_throughput.md
rm -rf "$OUT"
