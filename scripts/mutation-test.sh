#!/usr/bin/env bash
# Mutation test: feeds deterministically corrupted variants of the testdata clips
# (truncations, bit flips, header edits, cut and repeated runs) to `tracemark embed` and
# `tracemark trace`, each with a time limit, and fails on any panic, hang, signal death or
# leftover file. Usage: scripts/mutation-test.sh [VARIANTS]   (default 1000)
set -euo pipefail
cd "$(dirname "$0")/.."
export TRACEMARK_MUTATIONS="${1:-1000}"
exec nice -n 10 cargo test -p tracemark-cli --test mutation -- --ignored --nocapture many_corrupted_inputs_are_handled
