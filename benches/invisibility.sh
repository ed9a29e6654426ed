#!/usr/bin/env bash
# How visible and how costly the mark is, per clip, against a plain transcode with the same
# libx264 settings (the `ffmpeg` CLI), in one session so machine noise hits both alike:
#   - the mark alone: `embed --crf 0 --preset ultrafast` vs a crf-0 plain transcode (PSNR-Y, SSIM-Y);
#   - at crf 18 (preset medium): file size marked / plain, wall time embed / plain, and
#     PSNR-Y of each against the source.
# Prints a Markdown table.
#
#   benches/invisibility.sh [SECONDS] CLIP...      (default: 6 s of every clip in ../shared/clips)
# EMBED_ARGS (say `--scheme v1`) is passed to every `tracemark embed`.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-6}"; shift || true
if [ "$#" -eq 0 ]; then
  set -- $(ls ../shared/clips/*.{avi,mp4,mpg,mkv} 2>/dev/null || true)
  [ "$#" -gt 0 ] || set -- testdata/*.{avi,mp4,mpg}
fi
cargo build --release --quiet -p tracemark-cli
tm="$PWD/target/release/tracemark"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
"$tm" keygen --out "$work/key" >/dev/null
now() { date +%s.%N; }
even='crop=trunc(iw/2)*2:trunc(ih/2)*2'
# psnr_y A B: luma PSNR of A against B (same size).
psnr_y() { ffmpeg -nostdin -v info -i "$1" -i "$2" -lavfi "[0:v][1:v]psnr" -f null - 2>&1 | sed -n 's/.*PSNR y:\([0-9.inf]*\).*/\1/p' | tail -1; }
ssim_y() { ffmpeg -nostdin -v info -i "$1" -i "$2" -lavfi "[0:v][1:v]ssim" -f null - 2>&1 | sed -n 's/.*SSIM Y:\([0-9.]*\).*/\1/p' | tail -1; }
embed() { # embed IN OUT CRF PRESET
  rm -f "$work/reg.db"
  "$tm" embed --quiet --key "$work/key" --registry "$work/reg.db" --recipient bench --officer bench-officer \
    --approved-by bench-approver --crf "$3" --preset "$4" ${EMBED_ARGS:-} "$1" "$2" >/dev/null
}
plain() { # plain IN OUT CRF PRESET
  ffmpeg -nostdin -y -v error -i "$1" -map 0:v:0 -vf "$even" -c:v libx264 -crf "$3" -preset "$4" -pix_fmt yuv420p "$2"
}
echo "| clip | mark alone: PSNR-Y / SSIM-Y | size marked / plain at crf 18 | embed / plain wall time | after crf 18: marked vs source / plain vs source |"
echo "|---|---|---|---|---|"
for clip in "$@"; do
  name=$(basename "$clip")
  rm -f "$work"/{p0,m0,p18,m18}.mp4
  # A lossless, even-sized cut is the source everything is compared with.
  ffmpeg -nostdin -y -v error -t "$secs" -i "$clip" -map 0:v:0 -vf "$even" -c:v ffv1 -pix_fmt yuv420p "$work/src.mkv"
  plain "$work/src.mkv" "$work/p0.mp4" 0 ultrafast
  embed "$work/src.mkv" "$work/m0.mp4" 0 ultrafast
  alone_p=$(psnr_y "$work/m0.mp4" "$work/p0.mp4"); alone_s=$(ssim_y "$work/m0.mp4" "$work/p0.mp4")
  t0=$(now); plain "$work/src.mkv" "$work/p18.mp4" 18 medium; t1=$(now)
  embed "$work/src.mkv" "$work/m18.mp4" 18 medium; t2=$(now)
  sp=$(stat -c %s "$work/p18.mp4"); sm=$(stat -c %s "$work/m18.mp4")
  mp=$(psnr_y "$work/m18.mp4" "$work/src.mkv"); pp=$(psnr_y "$work/p18.mp4" "$work/src.mkv")
  printf "| %s (%s s) | %.1f dB / %.4f | %.2f× | %.2f× | %.1f / %.1f dB |\n" "$name" "$secs" "$alone_p" "$alone_s" \
    "$(awk -v a="$sm" -v b="$sp" 'BEGIN {print a / b}')" \
    "$(awk -v a="$t0" -v b="$t1" -v c="$t2" 'BEGIN {print (c - b) / (b - a)}')" "$mp" "$pp"
done
