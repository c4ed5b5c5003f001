#!/usr/bin/env bash
# THE test command: makes sure PostgreSQL and RabbitMQ run, then format check, clippy, and every
# test of the workspace. Extra arguments go to `cargo test`, e.g.
#   scripts/test.sh -p mailtrail-operator -- --nocapture
# Set TEST_LOG=debug to see the tests' own tracing output.
set -euo pipefail

cd "$(dirname "$0")/.."
started=$SECONDS
report_time() {
    local rc=$? elapsed=$((SECONDS - started))
    local outcome="passed"
    [[ $rc -eq 0 ]] || outcome="FAILED (exit $rc)"
    printf '\n=== %s after %dm%02ds\n' "$outcome" $((elapsed / 60)) $((elapsed % 60)) >&2
}
trap report_time EXIT
step() { printf '\n=== %s\n' "$*" >&2; }
warn() { printf 'test.sh: warning: %s\n' "$*" >&2; }

step "services"
bash scripts/ensure-services.sh

# A fresh Debian cluster needs a password over TCP (ensure-services.sh sets it to `postgres`).
if [[ -z ${MAILTRAIL_TEST_DATABASE_URL:-} ]] &&
    ! PGCONNECT_TIMEOUT=5 psql -w -X -d postgres://postgres@127.0.0.1:5432/postgres -Atqc 'select 1' \
        >/dev/null 2>&1; then
    export MAILTRAIL_TEST_DATABASE_URL=postgres://postgres:postgres@127.0.0.1:5432
    echo "test.sh: using MAILTRAIL_TEST_DATABASE_URL=postgres://postgres:***@127.0.0.1:5432" >&2
fi
DB_URL=${MAILTRAIL_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432}

# Queues a crashed test left behind (they all start with `mttest-`) expire after 15 unused
# minutes. Needs rabbitmqctl on this machine (and root, or sudo, for the Erlang cookie).
rabbitmqctl_() {
    if [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null 2>&1; then
        sudo -n rabbitmqctl "$@"
    else
        rabbitmqctl "$@"
    fi
}
if ! rabbitmqctl_ set_policy --apply-to queues mttest-expiry '^mttest-' '{"expires":900000}' \
    >/dev/null 2>&1; then
    warn "could not set the mttest-expiry policy (rabbitmqctl); queues of crashed tests will stay"
fi

# Test databases are dropped by the harness; a killed test run leaves its own behind. Drop the
# `mt_test_*` databases created more than an hour ago (creation time: the mtime of the database's
# PG_VERSION file, written by CREATE DATABASE) that nobody is connected to — so a test run going
# on at the same time is never disturbed. Needs superuser (pg_stat_file); skipped otherwise.
stale=$(PGCONNECT_TIMEOUT=5 psql -w -X -d "$DB_URL" -Atq -c "
    SELECT d.datname FROM pg_database d
    WHERE d.datname LIKE 'mt\_test\_%'
      AND (pg_stat_file('base/' || d.oid || '/PG_VERSION', true)).modification
          < now() - interval '1 hour'
      AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datid = d.oid)" 2>/dev/null) ||
    { warn "could not look for stale test databases"; stale=""; }
for db in $stale; do
    echo "test.sh: dropping stale test database $db" >&2
    PGCONNECT_TIMEOUT=5 psql -w -X -d "$DB_URL" -q -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" ||
        warn "could not drop $db"
done

step "publish examples' dependencies"
bash scripts/ensure-example-deps.sh
export MAILTRAIL_EXAMPLES_PYTHON="$PWD/target/examples-venv/bin/python"

step "browser test's dependencies (Chromium, playwright-core)"
bash scripts/ensure-browser-deps.sh

# The short schemathesis run (operator/tests/it/schemathesis.rs) uses this; the long one is
# scripts/schemathesis-long.sh.
step "schemathesis"
bash scripts/ensure-schemathesis.sh
export MAILTRAIL_SCHEMATHESIS="$PWD/target/schemathesis-venv/bin/schemathesis"

# A clean build needs a few GiB of disk; say so plainly instead of failing deep in rustc.
free_kib=$(df -Pk . | awk 'NR == 2 { print $4 }')
if [[ -n $free_kib && $free_kib -lt 4194304 ]]; then
    warn "only $((free_kib / 1024)) MiB free on $(df -P . | awk 'NR == 2 { print $6 }'); a clean build needs about 4 GiB — free some disk (e.g. \`cargo clean\` in other checkouts) if the build fails"
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test"
cargo test --workspace "$@"
