#!/usr/bin/env bash
# The full fault suite (fault-suite/): every scenario at 2,500 requests (about 5,000 emails),
# real operator and dispatcher processes, a private RabbitMQ node and PostgreSQL cluster for the
# broker restart/kill and database stop scenarios. Prints the table and writes it into
# docs/reliability.md; then runs the bounded fuzzing (scripts/fuzz.sh) if it exists.
# Extra arguments go to the fault-suite binary, e.g.
#   scripts/fault-suite.sh --requests 500 --only broker
# Needs root (the private servers run as the rabbitmq and postgres users, through runuser).
set -euo pipefail

cd "$(dirname "$0")/.."
started=$SECONDS
bash scripts/ensure-services.sh

# As in scripts/test.sh: a fresh Debian cluster needs a password over TCP.
if [[ -z ${MAILTRAIL_TEST_DATABASE_URL:-} ]] &&
    ! PGCONNECT_TIMEOUT=5 psql -w -X -d postgres://postgres@127.0.0.1:5432/postgres -Atqc 'select 1' \
        >/dev/null 2>&1; then
    export MAILTRAIL_TEST_DATABASE_URL=postgres://postgres:postgres@127.0.0.1:5432
fi

cargo build -p mailtrail-operator -p mailtrail-dispatcher -p mailtrail-fault-suite --bins
target_dir=${CARGO_TARGET_DIR:-target}
rc=0
"$target_dir/debug/fault-suite" --write docs/reliability.md "$@" || rc=$?

if [[ -f scripts/fuzz.sh ]]; then
    bash scripts/fuzz.sh || rc=$?
fi
elapsed=$((SECONDS - started))
printf '\n=== fault-suite.sh: %s after %dm%02ds\n' "$([[ $rc -eq 0 ]] && echo passed || echo "FAILED (exit $rc)")" \
    $((elapsed / 60)) $((elapsed % 60)) >&2
exit "$rc"
