#!/usr/bin/env bash
# Render a comparison's report.html in headless Chromium (Debian's `chromium` package) to a PNG.
#   scripts/screenshot-report.sh runs/demo [out.png]
set -euo pipefail
report="$(realpath "$1")/report.html"
out="${2:-$(dirname "$report")/report-screenshot.png}"
[ -f "$report" ] || { echo "no report at $report (run retain compare or retain report first)" >&2; exit 2; }
command -v chromium >/dev/null || { echo "chromium is not installed: apt-get install chromium" >&2; exit 2; }
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$profile" --hide-scrollbars \
  --window-size=1200,"${HEIGHT:-2600}" --screenshot="$out" "file://$report" 2>/dev/null
echo "$out"
