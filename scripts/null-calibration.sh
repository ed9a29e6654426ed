#!/usr/bin/env bash
# The long false-accusation checks: the whole blind search against unmarked, mirrored,
# rotated, picture-in-picture and wrong-key video, with KEYS trial keys for each of its 11
# sources (default 910: 10,010 trials; the test suite runs 6 per source), and, with the
# first slice, the decision-level calibration (10,500 trials, also in the test suite).
# FIRST (default 0) picks which keys: every trial draws its key from a stream of its own,
# so a long run can be made in slices (keys 0-299, then 300-599, ...) whose "null-slice:"
# lines add up to the same run.
# TRACEMARK_BLIND_NULL_SOURCES=2,9 (indices) limits a slice to some sources, to finish one cut short.
# Usage: scripts/null-calibration.sh [KEYS] [FIRST]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
first="${2:-0}"
tests=(--test blind_null)
[ "$first" = 0 ] && tests+=(--test calibration)
TRACEMARK_BLIND_NULL_KEYS="${1:-910}" TRACEMARK_BLIND_NULL_FIRST="$first" \
    cargo test --release -p tracemark-extract "${tests[@]}" -- --nocapture
