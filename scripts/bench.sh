#!/usr/bin/env bash
# THE benchmark command (docs/benchmarks.md, "End-to-end benchmark"); not part of the tests.
#   scripts/bench.sh            # the full run: 50,000 emails per closed loop, ~10 minutes
#   scripts/bench.sh --quick    # a smoke run with small numbers, ~2 minutes after the build
#   scripts/bench.sh --emails 20000 --phases ceiling,closed   # any mailtrail-bench flag
# Makes sure PostgreSQL and RabbitMQ run, builds the release binaries, runs mailtrail-bench
# (results in target/bench/: results.json, results.md, the services' logs), then plots
# target/bench/bench.png with matplotlib from a virtualenv in target/bench-venv.
# Run it on a quiet machine: other work on the cores distorts every figure.
set -euo pipefail
cd "$(dirname "$0")/.."

args=()
for arg in "$@"; do
    if [[ $arg == --quick ]]; then
        args+=(--emails 3000 --open-seconds 5 --webhook-events 2000 --peer-emails 500)
    else
        args+=("$arg")
    fi
done

bash scripts/ensure-services.sh
# A fresh Debian cluster needs a password over TCP (ensure-services.sh sets it to `postgres`).
if [[ -z ${MAILTRAIL_BENCH_DATABASE_URL:-} ]] &&
    ! PGCONNECT_TIMEOUT=5 psql -w -X -d postgres://postgres@127.0.0.1:5432/postgres -Atqc 'select 1' \
        >/dev/null 2>&1; then
    export MAILTRAIL_BENCH_DATABASE_URL=postgres://postgres:postgres@127.0.0.1:5432
fi

cargo build --release --bin operator --bin dispatcher --bin webhook-sink --bin smtp-capture \
    --bin mailtrail-bench
target_dir=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
out=target/bench
mkdir -p "$out"
echo "bench.sh: load average $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores" >&2
"$target_dir/release/mailtrail-bench" --out-dir "$out" "${args[@]}" | tee "$out/output.txt"

# The plot: matplotlib in a virtualenv of its own (Python 3 with venv, from PyPI).
venv=target/bench-venv
if [[ ! -x $venv/bin/python ]]; then
    python3 -m venv "$venv" 2>/dev/null || {
        rm -rf "$venv"
        # shellcheck source=scripts/apt.sh
        source scripts/apt.sh
        apt_install python3-venv && python3 -m venv "$venv"
    }
fi
"$venv/bin/python" -c 'import matplotlib' 2>/dev/null ||
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'matplotlib>=3.7,<4'
"$venv/bin/python" bench/plot.py "$out/results.json" "$out/bench.png"
echo "bench.sh: plot in $out/bench.png" >&2
