#!/usr/bin/env bash
# Installs what the publish examples in docs/examples need, for the test command:
# a Python virtualenv with pika under target/examples-venv, and amqplib under
# docs/examples/node/node_modules (from package-lock.json). Installs python3-venv, nodejs and npm
# from Debian's packages when missing. Idempotent and quick when everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/apt.sh
source scripts/apt.sh

command -v python3 >/dev/null || apt_install python3
venv=target/examples-venv
if [[ ! -x $venv/bin/python ]]; then
    python3 -m venv "$venv" 2>/dev/null || { apt_install python3-venv && python3 -m venv "$venv"; }
fi
if ! "$venv/bin/python" -c 'import pika' 2>/dev/null; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'pika>=1.3,<2'
fi

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    apt_install nodejs npm
fi
if [[ ! -d docs/examples/node/node_modules/amqplib ]]; then
    (cd docs/examples/node && npm ci --no-audit --no-fund --silent)
fi
echo "ensure-example-deps.sh: examples ready (python: $venv/bin/python, node: $(command -v node))" >&2
