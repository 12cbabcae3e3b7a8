#!/usr/bin/env bash
# The measurement behind docs/search.md (issue #28): a 24-trial Optuna study of Part 1 Q4's net
# (learning rate log [1e-3, 0.1], weight decay [0, 5e-4], label smoothing [0, 0.2]; batch size 100
# and 2,000 iterations as the homework fixes them), --jobs 2, with the median pruner and without it
# (side by side: same sampler seed, so the same first trials), each study's best trial then trained
# on the whole batch and tested over seeds 0-2; then the smaller study of Part 2 Q4's skip net.
#
#   bash bench/search_study.sh            # DATA, OUT, JOBS override the defaults below
#
# Hours on a 2-core CPU (48 + 12 trials of up to ~100 s each, less what pruning saves); minutes on
# a GPU. Rerunning continues each study where it stopped (the journals in OUT/*/<spec>/_search).
# Each `runner search show` prints the trial count, the wall time the trials took, the best
# validation accuracy, the best trial's test accuracy over seeds 0-2 and the importances.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/cifar10/cifar-10-python.tar.xz}
OUT=${OUT:-artifacts-search}
JOBS=${JOBS:-2}
mkdir -p "$OUT"

study() {  # study SPEC OUT_FOLDER [runner options...]
    local spec=$1 out=$2
    shift 2
    runner "specs/$spec.toml" --search --jobs "$JOBS" --seeds 0,1,2 --data "$DATA" --out "$out" --no-progress "$@"
    runner search show "$out/$spec" | tee "$out/$spec.search.txt"
}

# Side by side, so that both studies share the machine alike (the times are compared).
study search_p1_q4_crop "$OUT/pruned" > "$OUT/pruned.log" 2>&1 &
study search_p1_q4_crop "$OUT/unpruned" --set 'search.pruner="none"' > "$OUT/unpruned.log" 2>&1 &
wait
study search_p2_q4_skip "$OUT/pruned"

echo
echo "p1_q4_crop, 24 trials, --jobs $JOBS: with pruning | without (wall time of the trials, best validation, its test accuracy over seeds 0-2; today's spec: 73.6% ± 0.3)"
for mode in pruned unpruned; do
    echo "== $mode"
    grep -E "^study|^best|test accuracy over" "$OUT/$mode/search_p1_q4_crop.search.txt"
done
echo "== p2_q4_skip, 12 trials, pruned (today's spec: 73.2% ± 0.4)"
grep -E "^study|^best|test accuracy over" "$OUT/pruned/search_p2_q4_skip.search.txt"
