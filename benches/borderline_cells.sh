#!/usr/bin/env bash
# Detection on one attack, N exports: how often a cell near the threshold is named, and
# the true recipient's mean score. One gauntlet run draws one export per cell; a change to
# the mark's strength or to a reader is judged on many.
#
# The source is the clip's first 5 s stream-copied (as the gauntlet's --max-seconds 5
# cuts it); each export is marked at STRENGTH (--target-psnr, dB) and libx264 crf 18,
# then attacked as the public gauntlet's `x264-crf38` or `broadcast-chain`, then traced
# blind or informed. Prints one line per export and the mean.
#
#   benches/borderline_cells.sh CLIP crf38|broadcast-chain blind|informed STRENGTH [N] [TOOL]
#   e.g. benches/borderline_cells.sh ../shared/clips/cityCC0.mpg crf38 informed 48.3 8
set -euo pipefail
cd "$(dirname "$0")/.."
clip=$1 attack=$2 mode=$3 strength=$4 n=${5:-8} tm=${6:-}
if [ -z "$tm" ]; then
  cargo build --release --quiet -p tracemark-cli
  tm=./target/release/tracemark
fi
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
ext="${clip##*.}"
ffmpeg -nostdin -v error -i "$clip" -t 5 -map 0:v:0 -c copy "$work/source.$ext"
src="$work/source.$ext"
"$tm" keygen --out "$work/key" >/dev/null
for i in $(seq "$n"); do
  "$tm" embed --quiet --key "$work/key" --registry "$work/reg.db" --recipient "r$i" --officer o \
    --approved-by a --crf 18 --preset medium --target-psnr "$strength" "$src" "$work/m$i.mp4" >/dev/null
  case $attack in
    crf38)
      ffmpeg -nostdin -v error -i "$work/m$i.mp4" -c:v libx264 -preset veryfast -crf 38 -pix_fmt yuv420p \
        "$work/l$i.mp4" ;;
    broadcast-chain)
      ffmpeg -nostdin -v error -i "$work/m$i.mp4" -vf "crop=trunc(iw*0.9/2)*2:trunc(ih*0.9/2)*2,scale=1280:720:force_original_aspect_ratio=decrease:force_divisible_by=2,pad=1280:720:(ow-iw)/2:(oh-ih)/2:black,setsar=1,drawbox=x=iw*0.80:y=ih*0.05:w=iw*0.15:h=ih*0.15:color=0xC01020@1:t=fill,drawbox=x=0:y=ih*0.86:w=iw:h=ih*0.10:color=0x003080@0.75:t=fill" \
        -c:v libx264 -preset veryfast -crf 26 -pix_fmt yuv420p "$work/b$i.mp4"
      ffmpeg -nostdin -v error -i "$work/b$i.mp4" -vf scale=854:480,setsar=1 -c:v libx264 -preset veryfast \
        -crf 30 -pix_fmt yuv420p "$work/l$i.mp4" ;;
    *) echo "unknown attack $attack (crf38 or broadcast-chain)" >&2; exit 2 ;;
  esac
done
for i in $(seq "$n"); do
  extra=()
  [ "$mode" = informed ] && extra=(--original "$src")
  "$tm" --quiet trace --key "$work/key" --registry "$work/reg.db" "${extra[@]}" --json "$work/l$i.mp4" \
    >"$work/t$i.json" || true
  python3 - "$work/t$i.json" "r$i" <<'EOF'
import json, sys
p = json.load(open(sys.argv[1]))
c = {x["recipient"]: x for x in p["candidates"]}[sys.argv[2]]
print(sys.argv[2], p["verdict"], "%.2f" % c["score"], "p %.1e" % c["false_positive_probability"],
      "pilot z %.2f" % p["pilot"]["z"])
EOF
done | awk '{print; s += $3; if ($2 == "identified") k++} END {printf "mean score %.2f, named %d/%d\n", s/NR, k, NR}'
