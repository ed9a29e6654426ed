#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and tells the whole story on the CCTV clip in testdata/:
# a key, three officers, two signed four-eyes exports to two TV channels (and a refused
# self-approval), one of them "airs" the clip after a
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

say "2. Three officers make their own keys (passphrase-protected; here from files, normally typed)"
for who in smith jones brown; do printf '%s demo passphrase\n' "$who" > "$who.pass"; done
"$tm" officer keygen --name "PC A. Smith" --out smith --passphrase-file smith.pass
"$tm" officer keygen --name "Insp. B. Jones" --out jones --passphrase-file jones.pass
"$tm" officer keygen --name "Sgt. C. Brown" --out brown --passphrase-file brown.pass

say "3. The unit puts them on the registry's roster (the unit key authorises each change)"
"$tm" officer add --registry exports.db --key unit.key --role exporter smith.pub
"$tm" officer add --registry exports.db --key unit.key --role approver jones.pub
"$tm" officer add --registry exports.db --key unit.key --role approver brown.pub
"$tm" officer list --registry exports.db

say "4. PC Smith requests two exports; Insp. Jones and Sgt. Brown approve them on their own machines"
"$tm" request --registry exports.db --officer-key smith --passphrase-file smith.pass \
  --recipient "Channel Alpha News" --case CR-2026-0412 --reason "press release" "$clip" --out req-alpha.json
"$tm" request --registry exports.db --officer-key smith --passphrase-file smith.pass \
  --recipient "Channel Beta TV" --case CR-2026-0412 --reason "documentary request" "$clip" --out req-beta.json
"$tm" approve --officer-key jones --passphrase-file jones.pass req-alpha.json --out ok-alpha.json
"$tm" approve --officer-key brown --passphrase-file brown.pass req-beta.json --out ok-beta.json

say "5. Insp. Jones tries to approve a request of his own: refused"
"$tm" request --registry exports.db --officer-key jones --passphrase-file jones.pass \
  --recipient "Channel Gamma" --case CR-2026-0412 "$clip" --out req-own.json
if "$tm" approve --officer-key jones --passphrase-file jones.pass req-own.json --out ok-own.json; then
  echo "demo: a self-approval was accepted" >&2; exit 1
fi

say "6. The two approved exports (signatures, roles, expiry and the source hash checked first)"
"$tm" embed --quiet --key unit.key --registry exports.db --approval ok-alpha.json "$clip" copy-alpha.mp4
"$tm" embed --quiet --key unit.key --registry exports.db --approval ok-beta.json "$clip" copy-beta.mp4
"$tm" registry list --registry exports.db
"$tm" registry checkpoint --registry exports.db --key unit.key --out checkpoint.json

say "7. Channel Beta airs it: cropped, pillarboxed into 720p, logo and ticker, re-encoded twice"
ffmpeg -nostdin -loglevel error -y -i copy-beta.mp4 \
  -vf "crop=trunc(iw*0.9/2)*2:trunc(ih*0.9/2)*2,scale=-2:720,pad=1280:720:(ow-iw)/2:0:black,drawbox=x=iw*0.78:y=ih*0.05:w=iw*0.18:h=ih*0.14:color=0xC01020@1:t=fill,drawbox=x=0:y=ih*0.86:w=iw:h=ih*0.1:color=0x003080@0.75:t=fill" \
  -c:v libx264 -preset veryfast -crf 26 stage1.mp4
ffmpeg -nostdin -loglevel error -y -i stage1.mp4 -vf scale=854:480,setsar=1 -c:v libx264 -preset veryfast -crf 30 aired.mp4
echo "aired.mp4: $(ffprobe -v error -select_streams v:0 -show_entries stream=width,height -of csv=s=x:p=0 aired.mp4)"

say "8. The investigator traces the aired clip without the source (blind: the hard case; from 4 s after two lossy re-encodes it may honestly find nothing)"
"$tm" trace --quiet --key unit.key --registry exports.db aired.mp4

say "9. ... and with the source clip (informed), writing an evidence report"
"$tm" trace --quiet --key unit.key --registry exports.db --original "$clip" aired.mp4 --report evidence.html

say "10. An unmarked copy of the clip, same treatment: nobody is accused"
ffmpeg -nostdin -loglevel error -y -i "$clip" -vf "crop=trunc(iw*0.9/2)*2:trunc(ih*0.9/2)*2,scale=-2:720" \
  -c:v libx264 -preset veryfast -crf 26 unmarked-aired.mp4
"$tm" trace --quiet --key unit.key --registry exports.db --original "$clip" unmarked-aired.mp4

say "11. Anyone can verify the registry with public keys only (chain, signatures, roster, checkpoint)"
"$tm" registry verify --registry exports.db --checkpoint checkpoint.json

say "Done. Everything is in $work (evidence report: $work/evidence.html)"
