#!/usr/bin/env bash
# The long false-accusation checks: the decision-level calibration (10,500 trials, also in
# the test suite) and the whole blind search against unmarked, mirrored, rotated and
# wrong-key video with KEYS trial keys per source (default 1,250: 10,000 trials; the test
# suite runs 6 per source). Usage: scripts/null-calibration.sh [KEYS]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
TRACEMARK_BLIND_NULL_KEYS="${1:-1250}" cargo test --release -p tracemark-extract \
    --test blind_null --test calibration -- --nocapture
