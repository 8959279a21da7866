#!/usr/bin/env bash
# Longer RNN-Guard schedules for RT LSTM-32 (docs/results.md, "Longer schedules"): 12 epochs,
# 1 clean warm-up epoch, eps (and kappa 1 -> 0.5) ramped over 8 epochs, then 3 at the target;
# evaluated at eps_e = 0.03 on the first 200 test texts after epochs 8, 10 and 12.
#
#   OMP_NUM_THREADS=1 nohup experiments/lstm_long_schedules.sh lstm32-ramp8-eps03 0.03 &
#   OMP_NUM_THREADS=1 nohup experiments/lstm_long_schedules.sh lstm32-ramp8-eps04 0.04 &
#
# Arguments: NAME (run folder under $OUT, default runs/long) and the TRAINING eps.  Resumable:
# rerunning continues from the last checkpoint.  Progress lines go to $OUT/log.
set -uo pipefail
cd "$(dirname "$0")/.."
name=$1; eps_t=$2
OUT=${OUT:-runs/long}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
dir=$OUT/$name
mkdir -p "$OUT"
for e in 8 10 12; do
  echo "[$(date '+%F %T')] $name train to $e" >> "$OUT/log"
  python -m rnnguard.cli --threads 1 train --out "$dir" --dataset rt --model lstm --hidden 32 --method rnnguard \
    --eps "$eps_t" --epochs "$e" --warmup 1 --ramp 8 --lr 2e-3 --no-progress >> "$dir.train.log" 2>&1 \
    || echo "FAILED train $name" >> "$OUT/log"
  cp "$dir/model.pt" "$dir/model-e$e.pt"
  if [[ ! -f "$dir/eval-e$e/evaluation.json" ]]; then
    python -m rnnguard.cli --threads 1 evaluate --checkpoint "$dir/model-e$e.pt" --dataset rt --limit 200 --eps 0.03 \
      --domain box,zonotope,interzono --attacks pgd,ensemble --out "$dir/eval-e$e" >> "$dir.eval.log" 2>&1 \
      || echo "FAILED eval $name" >> "$OUT/log"
  fi
done
echo "[$(date '+%F %T')] $name done" >> "$OUT/log"
