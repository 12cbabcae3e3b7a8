#!/usr/bin/env bash
# The full-protocol runs behind the example report (specs/figures/report.pdf): every homework
# question's spec with seeds 0, 1 and 2, then the studies beyond it with seed 0, one run at a
# time. Specs come before the ones that read their models (Part 3 attacks each seed's Part 1 Q4
# model and transfers to its Part 2 Q1 model); a later call skips what is already up to date.
# Usage: bash bench/full_protocol.sh [--data PATH] [--out DIR]   (arguments go to every runner call)
# The example's runs live in artifacts/example (their light files are in the repository):
#   bash bench/full_protocol.sh --out artifacts/example && runner report artifacts/example \
#     -o specs/figures/report.pdf -o specs/figures/report.html -o specs/figures/report.md
set -u
cd "$(dirname "$0")/.."
r() { runner "$@" "${EXTRA[@]}" || echo "FAILED: runner $*" >&2; }
EXTRA=("$@")
HOMEWORK=(p2_q1_allconv p1_q4_crop p3_q1_fgsm p1_q1_raw p1_q2_normalize p1_q3_flip p2_q2_gradients
          p2_q3_deep_plain p2_q4_skip p3_attack_raw p3_attack_allconv p3_q2_transfer)
STUDIES=(p2_q1_allconv_bn p2_ref_nobn p2_q3_default_init p2_ablate_nobn_kaiming p2_ablate_skip_default_init
         p2_fix_residual p2_fix_fixup p3_universal
         study_layer_stats_plain study_layer_stats_skip study_gradient_flow study_lr_finder study_sharpness
         study_saliency)
for spec in "${HOMEWORK[@]}"; do r "specs/$spec.toml" --seeds 0,1,2; done
for spec in "${STUDIES[@]}"; do r "specs/$spec.toml" --seed 0; done
