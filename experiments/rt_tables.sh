#!/usr/bin/env bash
# Reproduction grid for RNN-Guard Tables I-V at this project's scale (docs/results.md).
#
#   Tables II-IV: six training methods x {RNN-32, LSTM-32, GRU-32} on RT (eps_t = eps_e = 0.03)
#                 and RNN-32 on toxic (eps 0.05); clean, certified (Box, Zonotope, InterZono),
#                 PGD and ensemble accuracy on the first $LIMIT test texts.
#   Table V:      seconds per training epoch, from each run's metrics.jsonl.
#   Table I:      Zonotope vs InterZono over an eps sweep for the RNN-Guard-trained LSTM/GRU.
#
# One run at a time, cheap first (regular/fgsm/pgd/ibp everywhere, then certrnn/rnnguard on
# RNN-32, then GRU-32, then LSTM-32), so that partial results are already useful.  Rerunning
# the script skips finished steps (training resumes from its last checkpoint; an evaluation
# with an evaluation.json is kept).  Outputs: $OUT/<dataset>-<model>32-<method>/ (model.pt,
# metrics.jsonl, train.json, eval/evaluation.json) and $OUT/*.log.
#
#   OMP_NUM_THREADS=1 nohup experiments/rt_tables.sh > runs/tables/grid.log 2>&1 &
#
# Settings (environment variables): OUT (runs/tables), EPOCHS (6), WARMUP (1), RAMP (3),
# LR (2e-3), LIMIT (200 test texts), PY (python), HIDDEN (32), TRAIN_ARGS (extra rnnguard train options), STAGES ("cheap rnn gru lstm table1").
# Extra stages: rnnguard-MODEL trains and evaluates only the RNN-Guard model, sweep-MODEL runs
# only that model's Table I sweep.  The hidden-64 rows of Table I (two processes, one per core):
#
#   HIDDEN=64 STAGES="rnnguard-lstm sweep-lstm" OMP_NUM_THREADS=1 nohup experiments/rt_tables.sh > runs/tables/lstm64.log 2>&1 &
#   HIDDEN=64 STAGES="rnnguard-gru sweep-gru" TRAIN_ARGS=--return-freed-memory OMP_NUM_THREADS=1 nohup experiments/rt_tables.sh > runs/tables/gru64.log 2>&1 &
#
# A hidden-64 RNN-Guard run keeps ~11-12 GB resident with the default --keep-freed-memory; on a 24 GB
# machine give one of the two TRAIN_ARGS=--return-freed-memory (slower, holds only live tensors).
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-runs/tables}
EPOCHS=${EPOCHS:-6}
WARMUP=${WARMUP:-1}
RAMP=${RAMP:-3}
LR=${LR:-2e-3}
LIMIT=${LIMIT:-200}
PY=${PY:-python}
HIDDEN=${HIDDEN:-32}
TRAIN_ARGS=${TRAIN_ARGS:-}
STAGES=${STAGES:-"cheap rnn gru lstm table1"}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
CLI=("$PY" -m rnnguard.cli --threads 1)
mkdir -p "$OUT"

stamp() { date '+%Y-%m-%d %H:%M:%S'; }

# train DATASET MODEL METHOD EPS
train() {
  local data=$1 model=$2 method=$3 eps=$4 dir="$OUT/$1-$2-$HIDDEN-$3"
  echo "[$(stamp)] train $data $model-$HIDDEN $method eps $eps ($EPOCHS epochs)"
  "${CLI[@]}" train --out "$dir" --dataset "$data" --model "$model" --hidden "$HIDDEN" --method "$method" \
      --eps "$eps" --epochs "$EPOCHS" --warmup "$WARMUP" --ramp "$RAMP" --lr "$LR" --no-progress $TRAIN_ARGS \
      > "$dir.train.log" 2>&1 || echo "[$(stamp)] FAILED: train $dir (see $dir.train.log)"
}

# evaluate DATASET MODEL METHOD EPS
evaluate() {
  local data=$1 model=$2 method=$3 eps=$4 dir="$OUT/$1-$2-$HIDDEN-$3"
  if [[ -f "$dir/eval/evaluation.json" ]]; then return; fi
  if [[ ! -f "$dir/model.pt" ]]; then echo "[$(stamp)] skip evaluate $dir: no model"; return; fi
  echo "[$(stamp)] evaluate $dir at eps $eps"
  "${CLI[@]}" evaluate --checkpoint "$dir/model.pt" --dataset "$data" --limit "$LIMIT" --eps "$eps" \
      --domain box,zonotope,interzono --attacks pgd,ensemble --out "$dir/eval" \
      > "$dir.eval.log" 2>&1 || echo "[$(stamp)] FAILED: evaluate $dir (see $dir.eval.log)"
}

# sweep MODEL: Table I, Zonotope vs InterZono over eps on the RNN-Guard-trained RT model
sweep() {
  local dir="$OUT/rt-$1-$HIDDEN-rnnguard"
  if [[ -f "$dir/model.pt" && ! -f "$dir/sweep/evaluation.json" ]]; then
    echo "[$(stamp)] eps sweep $dir"
    "${CLI[@]}" evaluate --checkpoint "$dir/model.pt" --dataset rt --limit "$LIMIT" \
        --eps 0.01,0.02,0.03,0.05,0.08 --domain zonotope,interzono --attacks pgd --out "$dir/sweep" \
        > "$dir.sweep.log" 2>&1 || echo "[$(stamp)] FAILED: sweep $dir"
  fi
}

run() { train "$@"; evaluate "$@"; }

for stage in $STAGES; do
  case $stage in
    cheap)
      for model in rnn gru lstm; do
        for method in regular fgsm pgd ibp; do run rt "$model" "$method" 0.03; done
      done
      for method in regular fgsm pgd ibp; do run toxic rnn "$method" 0.05; done ;;
    rnn)
      for method in rnnguard certrnn; do run rt rnn "$method" 0.03; done
      for method in rnnguard certrnn; do run toxic rnn "$method" 0.05; done ;;
    gru | lstm)
      for method in rnnguard certrnn; do run rt "$stage" "$method" 0.03; done ;;
    rnnguard-rnn | rnnguard-gru | rnnguard-lstm)
      run rt "${stage#rnnguard-}" rnnguard 0.03 ;;
    table1) sweep lstm; sweep gru ;;
    sweep-lstm | sweep-gru) sweep "${stage#sweep-}" ;;
    *) echo "unknown stage $stage" ;;
  esac
done
echo "[$(stamp)] grid done"
touch "$OUT/DONE"
