#!/usr/bin/env bash
# Trace speed against real time and against a plain `ffmpeg` decode of the same leak, in
# one session (runs alternate, so machine noise hits all alike). The leak is a marked
# export of CLIP (libx264 crf 18), traced blind and informed (`--original CLIP`).
# Prints a Markdown table of medians; peak RSS when /usr/bin/time is present.
#
#   benches/trace_speed.sh [ROUNDS] [CLIP]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
clip="${2:-../shared/clips/pan1080.mp4}"
cargo build --release --quiet -p tracemark-cli
tm=./target/release/tracemark
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
$tm keygen --out "$work/key" >/dev/null
$tm embed --quiet --key "$work/key" --registry "$work/reg.db" --recipient bench --officer bench-officer \
  --approved-by bench-approver "$clip" "$work/leak.mp4" >/dev/null
secs=$(ffprobe -v error -show_entries format=duration -of csv=p=0 "$work/leak.mp4")
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
# Runs a command, appending "wall_s peak_kb" to file $1.
timed() {
  local out=$1; shift
  if [ -x /usr/bin/time ]; then
    /usr/bin/time -f "%e %M" -o "$work/t" "$@" >/dev/null 2>&1
    cat "$work/t" >>"$out"
  else
    local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null 2>&1; t1=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a, 0}' >>"$out"
  fi
}
: >"$work/ffmpeg"; : >"$work/ffmpeg2"; : >"$work/blind"; : >"$work/informed"
for _ in $(seq "$rounds"); do
  timed "$work/ffmpeg" ffmpeg -nostdin -v error -i "$work/leak.mp4" -f null -
  # Informed mode must decode both files: this is its floor.
  timed "$work/ffmpeg2" ffmpeg -nostdin -v error -i "$work/leak.mp4" -i "$clip" -map 0:v -map 1:v -f null -
  timed "$work/blind" $tm --quiet trace --key "$work/key" --registry "$work/reg.db" --json "$work/leak.mp4"
  timed "$work/informed" $tm --quiet trace --key "$work/key" --registry "$work/reg.db" --json \
    --original "$clip" "$work/leak.mp4"
done
echo "Leak: marked $(basename "$clip"), ${secs} s; median of $rounds runs."
echo
echo "| what | wall s | × real time | peak RSS MB |"
echo "|---|---|---|---|"
for what in ffmpeg ffmpeg2 blind informed; do
  w=$(cut -d' ' -f1 <"$work/$what" | median); m=$(cut -d' ' -f2 <"$work/$what" | median)
  label=$what; [ "$what" = ffmpeg ] && label="ffmpeg decode (reference)"
  [ "$what" = ffmpeg2 ] && label="ffmpeg decode of leak + source at once (informed's floor)"
  [ "$what" = blind ] && label="tracemark trace (blind)"
  [ "$what" = informed ] && label="tracemark trace --original (informed)"
  printf "| %s | %.2f | %.1f | %.0f |\n" "$label" "$w" "$(awk -v s="$secs" -v w="$w" 'BEGIN {print s / w}')" \
    "$(awk -v m="$m" 'BEGIN {print m / 1024}')"
done
