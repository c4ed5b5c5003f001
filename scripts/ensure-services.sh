#!/usr/bin/env bash
# Makes sure the services the tests need are installed, running and answering:
#   * PostgreSQL on 127.0.0.1:5432, user postgres;
#   * RabbitMQ on 127.0.0.1:5672, user guest/guest.
#
# Idempotent: when both answer it only says so. Meant for Debian/Ubuntu: installs with apt-get,
# starts PostgreSQL with pg_ctlcluster and RabbitMQ with `rabbitmq-server -detached` (no systemd
# needed, so it works in containers). Runs as root, or as a user with sudo.
#
# When MAILTRAIL_TEST_DATABASE_URL / MAILTRAIL_TEST_AMQP_URL point to another host, nothing is
# installed or started for that service: the script only checks that it answers.
#
# Authentication: the tests connect to PostgreSQL over TCP as `postgres`, without a password
# unless MAILTRAIL_TEST_DATABASE_URL carries one. A freshly installed Debian cluster requires a
# password on 127.0.0.1 (scram-sha-256 in pg_hba.conf) and the postgres role has none. In that case
# this script does not touch pg_hba.conf; it sets the role's password to `postgres` (over the local
# Unix socket, as the postgres OS user) and tells you to
#   export MAILTRAIL_TEST_DATABASE_URL=postgres://postgres:postgres@127.0.0.1:5432
# (scripts/test.sh does that by itself).
set -euo pipefail

log() { printf 'ensure-services: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Root runs commands directly; other users go through sudo when there is one.
if [[ $(id -u) -eq 0 ]]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    SUDO=()
    log "not root and no sudo: installing or starting services may fail"
fi

as_root() { "${SUDO[@]}" "$@"; }

# Runs a shell command as the postgres OS user (peer authentication on the Unix socket).
as_postgres() {
    if [[ $(id -u) -eq 0 ]]; then
        su -s /bin/sh postgres -c "$1"
    else
        "${SUDO[@]}" -u postgres sh -c "$1"
    fi
}

APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install $* yourself"
    if [[ $APT_UPDATED -eq 0 ]]; then
        log "apt-get update"
        as_root apt-get update -qq
        APT_UPDATED=1
    fi
    log "installing $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

# tcp_open HOST PORT: whether something accepts TCP connections there.
tcp_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" >/dev/null 2>&1
}

# wait_for DESCRIPTION SECONDS COMMAND...: polls COMMAND every second.
wait_for() {
    local what=$1 seconds=$2
    shift 2
    local i
    for ((i = 0; i < seconds; i++)); do
        if "$@"; then
            return 0
        fi
        if ((i % 10 == 9)); then
            log "still waiting for $what ($((i + 1))s)"
        fi
        sleep 1
    done
    return 1
}

# url_host_port URL DEFAULT_PORT: prints "host port" of a postgres:// or amqp:// URL.
url_host_port() {
    local rest=${1#*://}
    rest=${rest%%[/?]*}  # authority
    rest=${rest##*@}     # without user info
    local host=${rest%%:*} port=$2
    if [[ $rest == *:* ]]; then
        port=${rest##*:}
    fi
    printf '%s %s\n' "${host:-127.0.0.1}" "$port"
}

is_local() { [[ $1 == 127.0.0.1 || $1 == localhost || $1 == ::1 ]]; }

# --- PostgreSQL ---------------------------------------------------------------------------------

PG_URL=${MAILTRAIL_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432}
read -r PG_HOST PG_PORT < <(url_host_port "$PG_URL" 5432)

pg_answers() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 2; }

# The newest installed PostgreSQL version (from /etc/postgresql, else the installed binaries).
pg_version() {
    local v
    v=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1 || true)
    if [[ -z $v ]]; then
        v=$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -n 1 || true)
    fi
    printf '%s\n' "$v"
}

ensure_postgres() {
    if ! command -v psql >/dev/null 2>&1 || ! command -v pg_isready >/dev/null 2>&1; then
        if is_local "$PG_HOST"; then
            apt_install postgresql
        else
            apt_install postgresql-client
        fi
    fi
    if pg_answers; then
        log "PostgreSQL answers on $PG_HOST:$PG_PORT"
    elif ! is_local "$PG_HOST"; then
        wait_for "PostgreSQL on $PG_HOST:$PG_PORT" 30 pg_answers ||
            die "PostgreSQL on $PG_HOST:$PG_PORT (MAILTRAIL_TEST_DATABASE_URL) does not answer"
    else
        if [[ -z $(pg_version) ]] || ! command -v pg_ctlcluster >/dev/null 2>&1; then
            apt_install postgresql
        fi
        local ver
        ver=$(pg_version)
        [[ -n $ver ]] || die "no PostgreSQL version found in /etc/postgresql or /usr/lib/postgresql"
        if [[ ! -d /etc/postgresql/$ver/main ]]; then
            log "creating PostgreSQL $ver cluster 'main' on port $PG_PORT"
            as_root pg_createcluster --port "$PG_PORT" "$ver" main
        fi
        log "starting PostgreSQL $ver (cluster main)"
        # An "already running" cluster on another port is reported by the wait below.
        as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start ||
            log "pg_ctlcluster start returned an error; waiting anyway"
        wait_for "PostgreSQL on $PG_HOST:$PG_PORT" 60 pg_answers ||
            die "PostgreSQL $ver did not come up on $PG_HOST:$PG_PORT; see /var/log/postgresql/"
        log "PostgreSQL answers on $PG_HOST:$PG_PORT"
    fi

    # Can the tests log in?
    if PGCONNECT_TIMEOUT=5 psql -w -X -d "$PG_URL" -Atqc 'select 1' >/dev/null 2>&1; then
        log "PostgreSQL login OK ($(printf '%s' "$PG_URL" | sed -E 's#(://[^:/@]*:)[^@]*@#\1***@#'))"
        return
    fi
    if [[ -n ${MAILTRAIL_TEST_DATABASE_URL:-} ]]; then
        die "cannot log in with MAILTRAIL_TEST_DATABASE_URL; fix its user/password"
    fi
    local with_password=postgres://postgres:postgres@$PG_HOST:$PG_PORT
    if ! PGCONNECT_TIMEOUT=5 psql -w -X -d "$with_password" -Atqc 'select 1' >/dev/null 2>&1; then
        # Typical for a fresh Debian cluster: host connections need a password, and the postgres
        # role has none. Give it one over the Unix socket (peer authentication).
        log "passwordless login over TCP refused; setting the postgres role's password to 'postgres'"
        as_postgres "psql -X -q -c \"ALTER USER postgres PASSWORD 'postgres'\"" ||
            die "could not set the password; set MAILTRAIL_TEST_DATABASE_URL to a URL that works"
        PGCONNECT_TIMEOUT=5 psql -w -X -d "$with_password" -Atqc 'select 1' >/dev/null 2>&1 ||
            die "login as postgres/postgres still fails; check pg_hba.conf for 127.0.0.1, or set \
MAILTRAIL_TEST_DATABASE_URL"
    fi
    log "PostgreSQL login needs a password; before running tests (scripts/test.sh does this):"
    log "  export MAILTRAIL_TEST_DATABASE_URL=$with_password"
}

# --- RabbitMQ -----------------------------------------------------------------------------------

AMQP_URL=${MAILTRAIL_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
read -r MQ_HOST MQ_PORT < <(url_host_port "$AMQP_URL" 5672)

mq_answers() { tcp_open "$MQ_HOST" "$MQ_PORT"; }

ensure_rabbitmq() {
    if mq_answers; then
        log "RabbitMQ answers on $MQ_HOST:$MQ_PORT"
        return
    fi
    if ! is_local "$MQ_HOST"; then
        wait_for "RabbitMQ on $MQ_HOST:$MQ_PORT" 30 mq_answers ||
            die "RabbitMQ on $MQ_HOST:$MQ_PORT (MAILTRAIL_TEST_AMQP_URL) does not answer"
        log "RabbitMQ answers on $MQ_HOST:$MQ_PORT"
        return
    fi
    if ! command -v rabbitmq-server >/dev/null 2>&1 &&
        [[ ! -x /usr/sbin/rabbitmq-server ]]; then
        apt_install rabbitmq-server
        # The package may have started it through its init script.
        if wait_for "RabbitMQ after install" 5 mq_answers; then
            log "RabbitMQ answers on $MQ_HOST:$MQ_PORT"
            return
        fi
    fi
    export PATH=$PATH:/usr/sbin:/usr/lib/rabbitmq/bin
    # Never start a second node next to a running one (e.g. one still booting, or listening
    # elsewhere): only start when the local node does not answer a ping.
    if as_root timeout 20 rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
        log "the local RabbitMQ node runs but $MQ_HOST:$MQ_PORT does not answer yet; waiting"
    else
        log "starting RabbitMQ (rabbitmq-server -detached)"
        as_root rabbitmq-server -detached ||
            log "rabbitmq-server -detached returned an error; waiting anyway"
    fi
    log "waiting for RabbitMQ to finish booting (up to 120s)"
    as_root timeout 120 rabbitmqctl await_startup >/dev/null 2>&1 ||
        log "rabbitmqctl await_startup did not confirm; checking the port"
    wait_for "RabbitMQ on $MQ_HOST:$MQ_PORT" 60 mq_answers ||
        die "RabbitMQ did not come up on $MQ_HOST:$MQ_PORT; see /var/log/rabbitmq/"
    log "RabbitMQ answers on $MQ_HOST:$MQ_PORT"
}

ensure_postgres
ensure_rabbitmq
log "services ready"
