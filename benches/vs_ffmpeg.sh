#!/usr/bin/env bash
# Side-by-side wall time: the `ffmpeg` CLI vs tracemark on the same transcode (same libx264,
# crf, preset and thread defaults), alternating runs in one session so machine noise hits
# both alike. Prints a Markdown table of medians and ratios.
#
#   benches/vs_ffmpeg.sh MODE [ROUNDS] CLIP...
#   MODE: identity (pipeline with the identity transform) or embed (tracemark embed)
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:?mode: identity or embed}"; shift
rounds="${1:-3}"; shift
[ "$#" -gt 0 ] || set -- ../shared/clips/pan1080.mp4 ../shared/clips/vtest.avi
crf=18; preset=medium
cargo build --release --quiet --example transcode && cargo build --release --quiet -p tracemark-cli
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
if [ "$mode" = embed ]; then
  ./target/release/tracemark keygen --out "$work/key" >/dev/null
fi
now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
echo "| clip | frames | ffmpeg CLI s (median of $rounds) | tracemark $mode s | ratio |"
echo "|---|---|---|---|---|"
for clip in "$@"; do
  : >"$work/ff"; : >"$work/tm"
  for r in $(seq "$rounds"); do
    t0=$(now)
    # An odd size loses its last row or column, as tracemark's H.264 output does.
    ffmpeg -nostdin -y -v error -i "$clip" -map 0:v:0 -map '0:a?' -vf 'crop=trunc(iw/2)*2:trunc(ih/2)*2' \
      -c:v libx264 -crf $crf -preset $preset -pix_fmt yuv420p -c:a copy "$work/ff.mp4"
    t1=$(now)
    rm -f "$work/tm.mp4" "$work/reg.db"
    if [ "$mode" = embed ]; then
      ./target/release/tracemark embed --quiet --key "$work/key" --registry "$work/reg.db" --recipient bench \
        --officer bench-officer --approved-by bench-approver --crf $crf --preset $preset "$clip" "$work/tm.mp4" >/dev/null
    else
      ./target/release/examples/transcode "$clip" "$work/tm.mp4" $crf $preset >/dev/null
    fi
    t2=$(now)
    awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}' >>"$work/ff"
    awk -v a="$t1" -v b="$t2" 'BEGIN {print b - a}' >>"$work/tm"
  done
  frames=$(ffprobe -v error -select_streams v:0 -count_packets -show_entries stream=nb_read_packets -of csv=p=0 "$clip" | tr -dc 0-9)
  f=$(median <"$work/ff"); t=$(median <"$work/tm")
  printf "| %s | %s | %.2f | %.2f | %.3f |\n" "$(basename "$clip")" "$frames" "$f" "$t" "$(awk -v a="$t" -v b="$f" 'BEGIN {print a / b}')"
done
