#!/usr/bin/env bash
# Quick start: one command from a clean clone to a running mailtrail with sample histories.
#   - installs (Debian) and starts RabbitMQ and PostgreSQL when needed,
#   - creates the `mailtrail` database and a first admin API key (saved in target/run/api-key),
#   - builds and starts the operator in the background (log: target/run/operator.log),
#   - publishes sample requests with the Python example and prints their histories.
# Stop it with: kill "$(cat target/run/operator.pid)"
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\n=== %s\n' "$*" >&2; }

say "services"
bash scripts/ensure-services.sh
bash scripts/ensure-example-deps.sh
python=target/examples-venv/bin/python

db_server=${MAILTRAIL_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432}
if ! psql -w -X -d "$db_server/postgres" -Atqc 'select 1' >/dev/null 2>&1; then
    db_server=postgres://postgres:postgres@127.0.0.1:5432
fi
export MAILTRAIL_DATABASE_URL=${MAILTRAIL_DATABASE_URL:-$db_server/mailtrail}
export MAILTRAIL_HTTP_ADDR=${MAILTRAIL_HTTP_ADDR:-127.0.0.1:8080}
if ! psql -w -X -d "$db_server/postgres" -Atqc "select 1 from pg_database where datname = 'mailtrail'" | grep -q 1; then
    say "creating database mailtrail"
    psql -w -X -d "$db_server/postgres" -qc 'CREATE DATABASE mailtrail'
fi

say "building the operator (the first build takes a few minutes)"
cargo build --release --bin operator
operator=target/release/operator
mkdir -p target/run

if [[ -f target/run/operator.pid ]] && kill -0 "$(cat target/run/operator.pid)" 2>/dev/null; then
    say "stopping the operator started earlier"
    kill "$(cat target/run/operator.pid)"
    while kill -0 "$(cat target/run/operator.pid)" 2>/dev/null; do sleep 0.2; done
fi

"$operator" migrate
if [[ ! -s target/run/api-key ]]; then
    "$operator" keys create --name quickstart --role admin >target/run/api-key
fi
key=$(cat target/run/api-key)

say "starting the operator (log: target/run/operator.log)"
nohup "$operator" run >>target/run/operator.log 2>&1 &
echo $! >target/run/operator.pid
api="http://$MAILTRAIL_HTTP_ADDR"
for _ in $(seq 1 100); do
    "$python" - "$api/readyz" <<'PY' && break
import sys, urllib.request
try:
    sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=1).status == 200 else 1)
except Exception:
    sys.exit(1)
PY
    kill -0 "$(cat target/run/operator.pid)" 2>/dev/null ||
        { echo "the operator stopped; see target/run/operator.log" >&2; exit 1; }
    sleep 0.2
done

say "publishing sample requests"
run_id=$(date +%s)
for n in 1 2; do
    REQUEST_ID="sample-$run_id-$n" "$python" docs/examples/python/publish.py "ann+$n@example.com" "bob@example.com"
done

say "histories"
# Wait until the operator has recorded and queued every sample email (2 requests x 2 recipients).
queued_sql="SELECT count(*) FROM emails e JOIN requests r ON r.id = e.request_id
             WHERE r.request_key LIKE 'sample-$run_id-%' AND e.status = 'queued'"
for attempt in $(seq 1 150); do
    [[ $(psql -w -X -d "$MAILTRAIL_DATABASE_URL" -Atqc "$queued_sql") -ge 4 ]] && break
    if [[ $attempt -eq 150 ]]; then
        echo "the sample emails were not queued within 30 s; see target/run/operator.log" >&2
        exit 1
    fi
    sleep 0.2
done
ids=$(psql -w -X -d "$MAILTRAIL_DATABASE_URL" -Atqc \
    "SELECT e.id FROM emails e JOIN requests r ON r.id = e.request_id
      WHERE r.request_key LIKE 'sample-$run_id-%' ORDER BY r.request_key, e.recipient_canonical")
for id in $ids; do
    "$python" - "$api/v1/messages/$id" "$key" <<'PY'
import json, sys, urllib.request
req = urllib.request.Request(sys.argv[1], headers={"Authorization": "Bearer " + sys.argv[2]})
m = json.load(urllib.request.urlopen(req, timeout=5))
print(f"{m['id']}  {m['to']:<24} {m['status']:<10} " +
      "  ".join(f"{e['type']}@{e['occurred_at'][11:23]}" for e in m["events"]))
PY
done
cat >&2 <<TXT

mailtrail is running: API $api (key in target/run/api-key), log target/run/operator.log.
Try:  curl -H "Authorization: Bearer \$(cat target/run/api-key)" $api/v1/messages/<email id>
Stop: kill \$(cat target/run/operator.pid)
TXT
