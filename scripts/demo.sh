#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and tells the whole story on the CCTV clip in testdata/:
# a key, two approved exports to two TV channels, one of them "airs" the clip after a
# broadcast-style re-encode with a crop and a logo, and `tracemark trace` names the source.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
tm="$PWD/target/release/tracemark"
clip="$PWD/testdata/vtest-4s.avi"
work=$(mktemp -d "${TMPDIR:-/tmp}/tracemark-demo.XXXXXX")
cd "$work"
say() { printf '\n== %s\n' "$*"; }

say "1. The unit creates its secret key (once)"
"$tm" keygen --out unit.key

say "2. Two approved exports of the same CCTV clip, one per TV channel"
"$tm" embed --quiet --key unit.key --registry exports.db --recipient "Channel Alpha News" \
  --officer "PC A. Smith" --approved-by "Insp. B. Jones" --case CR-2026-0412 \
  --reason "press release, approved" "$clip" copy-alpha.mp4
"$tm" embed --quiet --key unit.key --registry exports.db --recipient "Channel Beta TV" \
  --officer "PC A. Smith" --approved-by "Insp. B. Jones" --case CR-2026-0412 \
  --reason "documentary request" "$clip" copy-beta.mp4
"$tm" registry list --registry exports.db

say "3. Channel Beta airs it: cropped, pillarboxed into 720p, logo and ticker, re-encoded twice"
ffmpeg -nostdin -loglevel error -y -i copy-beta.mp4 \
  -vf "crop=trunc(iw*0.9/2)*2:trunc(ih*0.9/2)*2,scale=-2:720,pad=1280:720:(ow-iw)/2:0:black,drawbox=x=iw*0.78:y=ih*0.05:w=iw*0.18:h=ih*0.14:color=0xC01020@1:t=fill,drawbox=x=0:y=ih*0.86:w=iw:h=ih*0.1:color=0x003080@0.75:t=fill" \
  -c:v libx264 -preset veryfast -crf 26 stage1.mp4
ffmpeg -nostdin -loglevel error -y -i stage1.mp4 -vf scale=854:480,setsar=1 -c:v libx264 -preset veryfast -crf 30 aired.mp4
echo "aired.mp4: $(ffprobe -v error -select_streams v:0 -show_entries stream=width,height -of csv=s=x:p=0 aired.mp4)"

say "4. The investigator traces the aired clip without the source (blind: the hard case; from 4 s after two lossy re-encodes it may honestly find nothing)"
"$tm" trace --quiet --key unit.key --registry exports.db aired.mp4

say "5. ... and with the source clip (informed), writing an evidence report"
"$tm" trace --quiet --key unit.key --registry exports.db --original "$clip" aired.mp4 --report evidence.html

say "6. An unmarked copy of the clip, same treatment: nobody is accused"
ffmpeg -nostdin -loglevel error -y -i "$clip" -vf "crop=trunc(iw*0.9/2)*2:trunc(ih*0.9/2)*2,scale=-2:720" \
  -c:v libx264 -preset veryfast -crf 26 unmarked-aired.mp4
"$tm" trace --quiet --key unit.key --registry exports.db --original "$clip" unmarked-aired.mp4

say "7. The registry's audit chain is intact"
"$tm" registry verify --registry exports.db --key unit.key

say "Done. Everything is in $work (evidence report: $work/evidence.html)"
