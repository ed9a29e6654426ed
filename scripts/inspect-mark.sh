#!/usr/bin/env bash
# Makes the mark something to look at, not only a number: for a clip, writes
#   crop-N.png  side by side at 1:1: source | marked | 8x amplified difference (grey = 0),
#               for N crops (smooth, dark and textured areas are where a mark shows first);
#   diff.mp4    a few seconds of the 8x amplified difference (a mark fixed on the screen
#               while the picture pans reads as a "dirty window" here).
# The marked copy is made with `embed --crf 0` so only the mark is seen, not the encoder.
#
#   scripts/inspect-mark.sh CLIP [OUT_DIR] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
clip="${1:?usage: scripts/inspect-mark.sh CLIP [OUT_DIR] [SECONDS]}"
out="${2:-inspect-$(basename "${clip%.*}")}"
secs="${3:-4}"
mkdir -p "$out"
cargo build --release --quiet -p tracemark-cli
tm="$PWD/target/release/tracemark"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
even='crop=trunc(iw/2)*2:trunc(ih/2)*2'
ffmpeg -nostdin -y -v error -t "$secs" -i "$clip" -map 0:v:0 -vf "$even" -c:v ffv1 -pix_fmt yuv420p "$work/src.mkv"
"$tm" keygen --out "$work/key" >/dev/null
"$tm" embed --quiet --key "$work/key" --registry "$work/reg.db" --recipient inspect --officer a --approved-by b \
  --crf 0 --preset ultrafast "$work/src.mkv" "$work/marked.mp4" >/dev/null
IFS=x read -r w h < <(ffprobe -v error -select_streams v:0 -show_entries stream=width,height -of csv=s=x:p=0 "$work/src.mkv")
cw=$(( w < 480 ? w : 480 )); ch=$(( h < 270 ? h : 270 ))
diff8='[0:v][1:v]blend=all_expr=128+8*(B-A),format=gray'
# Three crops: top-left, centre, bottom-right (sky, subject, ground on most footage).
mid=$(awk -v s="$secs" 'BEGIN {print s / 2}')
n=0
for pos in "0:0" "$(( (w - cw) / 2 )):$(( (h - ch) / 2 ))" "$(( w - cw )):$(( h - ch ))"; do
  n=$((n + 1))
  x=${pos%%:*}; y=${pos##*:}
  ffmpeg -nostdin -y -v error -ss "$mid" -i "$work/src.mkv" -ss "$mid" -i "$work/marked.mp4" -frames:v 1 -filter_complex \
    "[0:v]crop=$cw:$ch:$x:$y,format=yuv420p,split[s1][s2];[1:v]crop=$cw:$ch:$x:$y,format=yuv420p,split[m1][m2];\
[s2][m2]blend=all_expr=128+8*(B-A),format=gray,format=yuv420p[d];[s1][m1][d]hstack=inputs=3" "$out/crop-$n.png"
done
ffmpeg -nostdin -y -v error -i "$work/src.mkv" -i "$work/marked.mp4" -filter_complex "$diff8" \
  -c:v libx264 -crf 12 -preset veryfast -pix_fmt yuv420p "$out/diff.mp4"
echo "wrote $out/crop-1.png .. crop-$n.png (source | marked | 8x difference) and $out/diff.mp4"
