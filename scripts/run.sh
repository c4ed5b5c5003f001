#!/usr/bin/env bash
# Quick start: one command from a clean clone to a running mailtrail with sample histories.
#   - installs (Debian) and starts RabbitMQ and PostgreSQL when needed,
#   - creates the `mailtrail` database and a first admin API key (saved in target/run/api-key),
#   - builds and starts the operator, the dispatcher, the webhook sink and smtp-capture (a local
#     SMTP server that logs what it receives, on 127.0.0.1:2525) in the background
#     (logs and pids in target/run/),
#   - publishes sample requests with the Python example and prints their histories.
# Stop everything with: scripts/run.sh stop
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\n=== %s\n' "$*" >&2; }
services=(operator dispatcher webhook-sink smtp-capture)

stop_services() {
    for service in "${services[@]}"; do
        pidfile=target/run/$service.pid
        if [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
            echo "stopping $service (pid $(cat "$pidfile"))" >&2
            kill "$(cat "$pidfile")"
            while kill -0 "$(cat "$pidfile")" 2>/dev/null; do sleep 0.2; done
        fi
        rm -f "$pidfile"
    done
}

if [[ ${1:-} == stop ]]; then
    stop_services
    exit 0
elif [[ $# -gt 0 ]]; then
    echo "usage: scripts/run.sh [stop]" >&2
    exit 2
fi

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

say "building the services (the first build takes a few minutes)"
cargo build --release --bin operator --bin dispatcher --bin webhook-sink --bin smtp-capture
operator=target/release/operator
mkdir -p target/run
stop_services

"$operator" migrate
if [[ ! -s target/run/api-key ]]; then
    "$operator" keys create --name quickstart --role admin >target/run/api-key
fi
key=$(cat target/run/api-key)

say "starting the services (logs: target/run/<service>.log)"
MAILTRAIL_SMTP_CAPTURE_ADDR=${MAILTRAIL_SMTP_CAPTURE_ADDR:-127.0.0.1:2525} \
    nohup target/release/smtp-capture >>target/run/smtp-capture.log 2>&1 &
echo $! >target/run/smtp-capture.pid
nohup "$operator" run >>target/run/operator.log 2>&1 &
echo $! >target/run/operator.pid
MAILTRAIL_HTTP_ADDR=${MAILTRAIL_DISPATCHER_HTTP_ADDR:-127.0.0.1:8082} \
    MAILTRAIL_SMTP_URL=${MAILTRAIL_SMTP_URL:-smtp://${MAILTRAIL_SMTP_CAPTURE_ADDR:-127.0.0.1:2525}} \
    nohup target/release/dispatcher >>target/run/dispatcher.log 2>&1 &
echo $! >target/run/dispatcher.pid
MAILTRAIL_HTTP_ADDR=${MAILTRAIL_WEBHOOK_SINK_HTTP_ADDR:-127.0.0.1:8081} \
    nohup target/release/webhook-sink >>target/run/webhook-sink.log 2>&1 &
echo $! >target/run/webhook-sink.pid
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
# Wait until every sample email (2 requests x 2 recipients) has been sent to smtp-capture.
queued_sql="SELECT count(*) FROM emails e JOIN requests r ON r.id = e.request_id
             WHERE r.request_key LIKE 'sample-$run_id-%' AND e.status = 'dispatched'"
for attempt in $(seq 1 150); do
    [[ $(psql -w -X -d "$MAILTRAIL_DATABASE_URL" -Atqc "$queued_sql") -ge 4 ]] && break
    if [[ $attempt -eq 150 ]]; then
        echo "the sample emails were not dispatched within 30 s; see target/run/*.log" >&2
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
print(f"{m['id']}  {m['to']:<20} {m['status']:<10} " +
      "  ".join(f"{e['type']}@{e['occurred_at'][11:23]}" for e in m["events"]))
PY
done
say "health"
for probe in "operator $api" \
    "dispatcher http://${MAILTRAIL_DISPATCHER_HTTP_ADDR:-127.0.0.1:8082}" \
    "webhook-sink http://${MAILTRAIL_WEBHOOK_SINK_HTTP_ADDR:-127.0.0.1:8081}"; do
    read -r service base <<<"$probe"
    "$python" - "$service" "$base/readyz" <<'PY'
import json, sys, time, urllib.error, urllib.request
service, url = sys.argv[1], sys.argv[2]
for _ in range(50):
    try:
        body = json.load(urllib.request.urlopen(url, timeout=1))
        break
    except urllib.error.HTTPError as e:
        body = json.load(e)
    except Exception as e:
        body = {"status": f"not answering ({e})"}
    time.sleep(0.2)
print(f"{service:<13} {url:<32} {body}")
PY
done

cat >&2 <<TXT

mailtrail is running: operator API $api (key in target/run/api-key), logs in target/run/;
the emails went to smtp-capture on ${MAILTRAIL_SMTP_CAPTURE_ADDR:-127.0.0.1:2525} (target/run/smtp-capture.log).
Try:  curl -H "Authorization: Bearer \$(cat target/run/api-key)" $api/v1/messages/<email id>
Stop: scripts/run.sh stop
TXT
