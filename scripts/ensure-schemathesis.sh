#!/usr/bin/env bash
# Installs schemathesis (the OpenAPI fuzzer the operator's API is checked with) into a Python
# virtualenv under target/schemathesis-venv, for the test command and
# scripts/schemathesis-long.sh. Installs python3 and python3-venv from Debian's packages when
# missing. Idempotent, and quick when the pinned version is already there. Prints nothing on
# stdout; the command is target/schemathesis-venv/bin/schemathesis.
set -euo pipefail
cd "$(dirname "$0")/.."

# The version the tests are written against (the CLI changed between 3.x and 4.x).
version=4.32.5

# shellcheck source=scripts/apt.sh
source scripts/apt.sh

command -v python3 >/dev/null || apt_install python3
venv=target/schemathesis-venv
if [[ ! -x $venv/bin/python ]]; then
    python3 -m venv "$venv" 2>/dev/null || { rm -rf "$venv"; apt_install python3-venv && python3 -m venv "$venv"; }
fi
installed=$("$venv/bin/python" -c \
    'import importlib.metadata as m; print(m.version("schemathesis"))' 2>/dev/null || true)
if [[ $installed != "$version" ]]; then
    echo "ensure-schemathesis.sh: installing schemathesis $version into $venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
fi
echo "ensure-schemathesis.sh: schemathesis $version ready ($venv/bin/schemathesis)" >&2
