#!/usr/bin/env bash
# RNN-Guard LSTM-32 with step learning-rate decay, per-epoch validation certified accuracy and every
# epoch's model kept (docs/results.md, "Learning-rate decay and checkpoint selection"):
#
#   OMP_NUM_THREADS=1 nohup experiments/lstm_decay_runs.sh r6d 10 6 7,9 &
#   OMP_NUM_THREADS=1 nohup experiments/lstm_decay_runs.sh r8d 12 8 9,11 &
#
# Arguments: NAME EPOCHS RAMP DECAY_AFTER.  Resumable (rerun the same line).  Output: $OUT/NAME
# (default runs/decay); evaluate the epoch with the best val_certified with rnnguard evaluate.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/decay}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
name=$1; epochs=$2; ramp=$3; decay=$4
mkdir -p "$OUT"
python -m rnnguard.cli --threads 1 train --out "$OUT/$name" --dataset rt --model lstm --hidden 32 --method rnnguard \
  --eps 0.04 --epochs "$epochs" --warmup 1 --ramp "$ramp" --lr 2e-3 --lr-decay-after "$decay" --lr-gamma 0.2 \
  --val-certify 0.03 --val-certify-limit 500 --keep-epochs --no-progress > "$OUT/$name.train.log" 2>&1
echo "[$(date '+%F %T')] $name trained" >> "$OUT/log"
