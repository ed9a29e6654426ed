#!/usr/bin/env bash
# Pictures to look at before calling the mark invisible. For each clip, the mark alone
# (`embed --crf 0 --preset ultrafast` against a crf-0 plain transcode, as in
# benches/invisibility.sh), written into OUTDIR:
#   - <clip>-t<T>-<region>.png: source | marked | difference x8 (mid grey = unchanged), side
#     by side at 1:1, for three regions of the frame at T s (top left, centre, bottom right);
#   - <clip>-t<T>-centre-2x.png: the same, a smaller centre region at 2x (nearest pixel);
#   - <clip>-difference.mp4: the difference x8 as a clip. A pattern that stays put while the
#     picture pans is the "dirty window"; a mark that moves with the picture moves here too.
# Frames with smooth areas, dark areas and gradients are where to look.
#
#   benches/visibility_crops.sh [SECONDS] [OUTDIR] CLIP...
#   (default: 4 s, target/visibility, every clip in ../shared/clips, else testdata)
# EMBED_ARGS (say `--scheme v1`) is passed to `tracemark embed`.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-4}"; shift || true
out="${1:-target/visibility}"; shift || true
if [ "$#" -eq 0 ]; then
  set -- $(ls ../shared/clips/*.{avi,mp4,mpg,mkv} 2>/dev/null || true)
  [ "$#" -gt 0 ] || set -- testdata/*.{avi,mp4,mpg}
fi
cargo build --release --quiet -p tracemark-cli
tm="$PWD/target/release/tracemark"
mkdir -p "$out"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
"$tm" keygen --out "$work/key" >/dev/null
even='crop=trunc(iw/2)*2:trunc(ih/2)*2'
amplify="lut2=c0='clip(128+8*(x-y),0,255)':c1=128:c2=128"
# panels T CROP PNG [SCALE]: source | marked | amplified difference of one crop at T s.
panels() {
  local t=$1 crop=$2 png=$3 up=${4:-}
  local zoom=""
  [ -n "$up" ] && zoom=",scale=iw*$up:ih*$up:flags=neighbor"
  ffmpeg -nostdin -y -v error -ss "$t" -i "$work/p0.mp4" -ss "$t" -i "$work/m0.mp4" -frames:v 1 -filter_complex \
    "[0:v]format=yuv420p,$crop,split=2[s][s2];[1:v]format=yuv420p,$crop,split=2[m][m2];[m2][s2]$amplify[d];[s][m][d]hstack=3$zoom" \
    -update 1 "$png"
}
for clip in "$@"; do
  name=$(basename "$clip"); name=${name%.*}
  ffmpeg -nostdin -y -v error -t "$secs" -i "$clip" -map 0:v:0 -vf "$even" -c:v ffv1 -pix_fmt yuv420p "$work/src.mkv"
  ffmpeg -nostdin -y -v error -i "$work/src.mkv" -c:v libx264 -crf 0 -preset ultrafast -pix_fmt yuv420p "$work/p0.mp4"
  rm -f "$work/reg.db" "$work/m0.mp4"
  "$tm" embed --quiet --key "$work/key" --registry "$work/reg.db" --recipient look --officer look-officer \
    --approved-by look-approver --crf 0 --preset ultrafast ${EMBED_ARGS:-} "$work/src.mkv" "$work/m0.mp4" >/dev/null
  IFS=x read -r w h < <(ffprobe -v error -select_streams v:0 -show_entries stream=width,height -of csv=p=0:s=x "$work/p0.mp4")
  cw=$(( (w / 2 < 640 ? w / 2 : 640) / 2 * 2 )); ch=$(( (h / 2 < 360 ? h / 2 : 360) / 2 * 2 ))
  t=$(awk -v s="$secs" 'BEGIN {printf "%.2f", s / 2}')
  panels "$t" "crop=$cw:$ch:0:0" "$out/$name-t$t-top-left.png"
  panels "$t" "crop=$cw:$ch:(iw-$cw)/2:(ih-$ch)/2" "$out/$name-t$t-centre.png"
  panels "$t" "crop=$cw:$ch:iw-$cw:ih-$ch" "$out/$name-t$t-bottom-right.png"
  panels "$t" "crop=$((cw / 2 / 2 * 2)):$((ch / 2 / 2 * 2)):(iw-$cw/2)/2:(ih-$ch/2)/2" "$out/$name-t$t-centre-2x.png" 2
  ffmpeg -nostdin -y -v error -i "$work/m0.mp4" -i "$work/p0.mp4" -filter_complex "[0:v][1:v]$amplify,format=yuv420p" \
    -c:v libx264 -crf 18 -preset veryfast "$out/$name-difference.mp4"
  echo "$name: $(ls "$out" | grep -c "^$name-") files in $out"
done
