#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the end-to-end demo on a clip from testdata/.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
out="${TMPDIR:-/tmp}/tracemark-demo"
mkdir -p "$out"
cargo build --release --quiet --example transcode
echo "demo: transcoding testdata/vtest-4s.avi through the frame pipeline (identity transform)"
./target/release/examples/transcode testdata/vtest-4s.avi "$out/vtest-pipeline.mp4" 18 medium
ffprobe -v error -select_streams v:0 -count_frames \
  -show_entries stream=codec_name,width,height,nb_read_frames -of default=nw=1 "$out/vtest-pipeline.mp4"
echo "demo: wrote $out/vtest-pipeline.mp4"
