#!/usr/bin/env bash
# Render `dvc plots show` (or `dvc plots diff <revs...>`) to HTML and screenshot it in headless
# Chromium (Debian package `chromium`), to check what a user sees as an image:
#   scripts/screenshot_plots.sh docs/plots.png                  # the workspace
#   scripts/screenshot_plots.sh docs/diff.png main exp-name    # plots diff between revisions
# The page has Vega inlined (.dvc/plots/offline.html, set in .dvc/config), so it renders with
# no network.
set -euo pipefail
out=${1:?usage: $0 OUTPUT.png [REV ...]}
shift
html_dir=$(mktemp -d)
if [ $# -gt 0 ]; then
  dvc plots diff "$@" -o "$html_dir" >/dev/null
else
  dvc plots show -o "$html_dir" >/dev/null
fi

# No network, no sandbox for root; the virtual time budget lets Vega draw before the shot.
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --allow-file-access-from-files --user-data-dir="$(mktemp -d)" --hide-scrollbars \
  --window-size=1400,2200 --virtual-time-budget=10000 \
  --screenshot="$(realpath -m "$out")" "file://$html_dir/index.html" 2>/dev/null
echo "wrote $out from $html_dir/index.html"
