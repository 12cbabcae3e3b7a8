#!/usr/bin/env bash
# The full-protocol runs behind the README's results, in the order later questions need them
# (Part 3 attacks the Part 1 Q4 model and transfers to the Part 2 Q1 model).
# Usage: bash bench/full_protocol.sh [--data PATH]   (extra arguments go to every runner call)
set -u
cd "$(dirname "$0")/.."
r() { runner "$@" "${EXTRA[@]}" || echo "FAILED: runner $*" >&2; }
EXTRA=("$@")
r specs/p1_q4_crop.toml --seed 0
r specs/p2_q1_allconv.toml --seed 0
r specs/p2_q3_deep_plain.toml --seed 0
r specs/p2_q4_skip.toml --seed 0
r specs/p1_q1_raw.toml specs/p1_q2_normalize.toml specs/p1_q3_flip.toml --seed 0
r specs/p1_q1_raw.toml specs/p1_q2_normalize.toml specs/p1_q3_flip.toml specs/p1_q4_crop.toml --seeds 1,2
r specs/p2_q2_gradients.toml --seed 0
r specs/p2_q1_allconv.toml specs/p2_q4_skip.toml --seeds 1,2
r specs/p2_fix_kaiming.toml specs/p2_fix_residual.toml specs/p2_fix_fixup.toml specs/p2_ref_nobn.toml --seed 0
r specs/p3_q1_fgsm.toml specs/p3_attack_raw.toml specs/p3_attack_allconv.toml specs/p3_q2_transfer.toml specs/p3_universal.toml
