#!/usr/bin/env bash
# The full-protocol runs behind the example report (specs/figures/report.pdf): every homework
# question's spec with seeds 0, 1 and 2, the studies beyond it with seed 0, one run at a time,
# in the order later specs need them (Part 3 attacks each seed's Part 1 Q4 model and transfers
# to its Part 2 Q1 model). Then: runner report OUT -o report.pdf -o report.html -o report.md
# Usage: bash bench/full_protocol.sh [--data PATH] [--out DIR]   (arguments go to every runner call)
set -u
cd "$(dirname "$0")/.."
r() { runner "$@" "${EXTRA[@]}" || echo "FAILED: runner $*" >&2; }
EXTRA=("$@")
HOMEWORK=(p1_q1_raw p1_q2_normalize p1_q3_flip p1_q4_crop p2_q1_allconv p2_q2_gradients p2_q3_deep_plain
          p2_q4_skip p3_q1_fgsm p3_attack_raw p3_attack_allconv p3_q2_transfer)
STUDIES=(p2_fix_residual p2_fix_fixup p2_fix_kaiming p2_ref_nobn p2_ablate_nobn_kaiming
         p2_ablate_skip_default_init p3_universal)
for spec in "${HOMEWORK[@]}"; do r "specs/$spec.toml" --seeds 0,1,2; done
for spec in "${STUDIES[@]}"; do r "specs/$spec.toml" --seed 0; done
