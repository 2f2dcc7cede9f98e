#!/usr/bin/env bash
# Render `dvc plots show` (or `dvc plots diff <revs...>`) to HTML and screenshot it in headless
# Chromium (Debian package `chromium`), to check what a user sees as an image:
#   scripts/screenshot_plots.sh docs/plots.png                  # the workspace
#   scripts/screenshot_plots.sh docs/diff.png main exp-name    # plots diff between revisions
# DVC's page loads Vega from a CDN; this machine has no internet, so the same Vega versions are
# fetched once from the npm registry (`npm pack`) and the page is pointed at the local copies.
set -euo pipefail
out=${1:?usage: $0 OUTPUT.png [REV ...]}
shift
html_dir=$(mktemp -d)
if [ $# -gt 0 ]; then
  dvc plots diff "$@" -o "$html_dir" >/dev/null
else
  dvc plots show -o "$html_dir" >/dev/null
fi

vendor=${XDG_CACHE_HOME:-$HOME/.cache}/dbdpo-vega
for url in $(grep -o 'https://cdn.jsdelivr.net/npm/[a-z-]*@[0-9.]*' "$html_dir/index.html" | sort -u); do
  spec=${url#https://cdn.jsdelivr.net/npm/}          # e.g. vega-lite@5.2.0
  name=${spec%@*}
  if [ ! -f "$vendor/$spec/build/$name.min.js" ]; then
    mkdir -p "$vendor/$spec"
    tarball=$(cd "$vendor" && npm pack --silent "$spec" 2>/dev/null | tail -n 1)
    tar xzf "$vendor/$tarball" -C "$vendor/$spec" --strip-components=1
    rm "$vendor/$tarball"
  fi
  sed -i "s#$url\"#file://$vendor/$spec/build/$name.min.js\"#" "$html_dir/index.html"
done

sed -i 's#<head>#<head><meta charset="utf-8">#' "$html_dir/index.html"  # DVC's page omits it

# No network, no sandbox for root; the virtual time budget lets Vega draw before the shot.
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --allow-file-access-from-files --user-data-dir="$(mktemp -d)" --hide-scrollbars \
  --window-size=1400,2200 --virtual-time-budget=10000 \
  --screenshot="$(realpath -m "$out")" "file://$html_dir/index.html" 2>/dev/null
echo "wrote $out from $html_dir/index.html"
