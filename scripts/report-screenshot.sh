#!/usr/bin/env bash
# Renders an evidence report with headless Chromium to a PNG, to check it displays.
#   scripts/report-screenshot.sh REPORT.html OUT.png
# Installs Debian's chromium when it is missing (root or sudo needed then).
set -euo pipefail
report="$(realpath "${1:?report.html}")"; out="${2:?out.png}"
if ! command -v chromium >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
profile=$(mktemp -d); trap 'rm -rf "$profile"' EXIT
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$profile" --window-size=1000,2600 \
  --screenshot="$(realpath -m "$out")" "file://$report" 2>/dev/null
echo "wrote $out"
