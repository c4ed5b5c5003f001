#!/usr/bin/env bash
# Installs what the history page's browser test needs, for the test command: Debian's Chromium
# (the test drives the system browser; no browser is downloaded) and playwright-core under
# operator/tests/browser/node_modules (from package-lock.json, from the npm registry). Installs
# chromium, nodejs and npm from Debian's packages when missing. Idempotent and quick when
# everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/apt.sh
source scripts/apt.sh

chromium=${MAILTRAIL_CHROMIUM:-/usr/bin/chromium}
[[ -x $chromium ]] || apt_install chromium
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    apt_install nodejs npm
fi
dir=operator/tests/browser
if [[ ! -f $dir/node_modules/playwright-core/package.json ]] ||
    ! grep -q "\"version\": \"$(node -p "require('./$dir/package.json').dependencies['playwright-core']")\"" \
        "$dir/node_modules/playwright-core/package.json"; then
    (cd "$dir" && npm ci --no-audit --no-fund --silent)
fi
echo "ensure-browser-deps.sh: browser test ready (chromium: $chromium, node: $(command -v node))" >&2
