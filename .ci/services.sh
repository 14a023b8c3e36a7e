#!/usr/bin/env bash
# Make sure the servers the tests and benchmarks use answer on this machine:
#   Redis       127.0.0.1:6379 (the benchmarks'; each test run starts a redis-server of its own from the
#               same package)
#   PostgreSQL  127.0.0.1:5432, user postgres with trust auth over TCP, database `test` (each test run
#               creates databases of its own on this server, and drops them)
#   Chromium    /usr/bin/chromium, the headless browser the jobs page's tests drive through Playwright
# Idempotent: a server that answers is left alone; a missing one is installed from Debian's packages and
# started. The S3 server (moto_server) is started by the tests themselves; this only checks it is installed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

readonly REDIS_HOST=127.0.0.1 REDIS_PORT=6379
readonly PG_HOST=127.0.0.1 PG_PORT=5432 PG_USER=postgres PG_DB=test
readonly WAIT_S=30
apt_updated=false

die() {
    echo "services: error: $*" >&2
    exit 1
}

# Run as root: directly when we are root, else through sudo without a password prompt (CI has no terminal).
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "cannot install $*: no apt-get here; install them by hand"
    if ! $apt_updated; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q || die "apt-get update failed"
        apt_updated=true
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" || die "apt-get install $* failed"
}

# Wait until "$@" succeeds, at most WAIT_S seconds.
wait_for() {
    local deadline=$((SECONDS + WAIT_S))
    until "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.5
    done
}

# --- Redis ---------------------------------------------------------------------------------------------------
redis_answers() {
    if command -v redis-cli >/dev/null 2>&1; then
        [ "$(timeout 5 redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]
    else
        # No client yet: speak the protocol through bash's /dev/tcp.
        # shellcheck disable=SC2016 # $1 and $2 expand in the inner shell
        timeout 5 bash -c 'exec 3<>"/dev/tcp/$1/$2" && printf "PING\r\n" >&3 && read -r reply <&3 &&
            [[ $reply == +PONG* ]]' _ "$REDIS_HOST" "$REDIS_PORT" 2>/dev/null
    fi
}

redis_version() {
    timeout 5 redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" info server 2>/dev/null |
        awk -F: '/^redis_version:/ {sub(/\r$/, "", $2); print "Redis " $2}'
}

ensure_redis() {
    if ! redis_answers; then
        if ! command -v redis-server >/dev/null 2>&1; then
            echo "services: installing redis-server"
            apt_install redis-server
        fi
        # The package's own start (where there is an init system) may already have brought it up.
        if ! redis_answers; then
            as_root mkdir -p /var/lib/redis /var/log/redis
            # As the machine starts it: no persistence (its users clear what they use), loopback only.
            as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" \
                --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log ||
                die "redis-server failed to start (see /var/log/redis/ci.log)"
        fi
        wait_for redis_answers ||
            die "Redis does not answer on $REDIS_HOST:$REDIS_PORT after ${WAIT_S}s (see /var/log/redis/ci.log)"
    fi
    # The tests start redis-server themselves: it must be installed even where this Redis runs elsewhere.
    if ! command -v redis-server >/dev/null 2>&1; then
        echo "services: installing redis-server (the tests start their own)"
        apt_install redis-server
    fi
    echo "redis:      $REDIS_HOST:$REDIS_PORT answers ($(redis_version))"
}

# --- PostgreSQL ----------------------------------------------------------------------------------------------
pg_answers() {
    pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 3
}

# psql as user postgres over TCP, never prompting for a password.
pg_sql() {
    PGCONNECT_TIMEOUT=5 psql -X -w -q -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -v ON_ERROR_STOP=1 "$@"
}

newest() { sort -V | tail -n 1; }

# shellcheck disable=SC2012 # version folders have plain names
pg_version() {
    if [ -d /etc/postgresql ] && [ -n "$(ls -A /etc/postgresql)" ]; then
        ls /etc/postgresql | newest
    elif [ -d /usr/lib/postgresql ]; then
        ls /usr/lib/postgresql | newest
    fi
}

ensure_postgres_running() {
    if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! command -v pg_isready >/dev/null 2>&1; then
        echo "services: installing postgresql"
        apt_install postgresql
    fi
    pg_answers && return 0
    local version
    version="$(pg_version)"
    [ -n "$version" ] || die "PostgreSQL is installed but no server version is under /usr/lib/postgresql"
    if [ ! -d "/etc/postgresql/$version/main" ]; then
        echo "services: creating PostgreSQL $version cluster main on port $PG_PORT"
        as_root pg_createcluster --port "$PG_PORT" "$version" main || die "pg_createcluster failed"
    fi
    if ! pg_answers; then
        # 'start' fails on a cluster that is already running (e.g. still starting up): wait_for decides.
        as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start ||
            echo "services: pg_ctlcluster $version main start failed; waiting in case it is already up" >&2
    fi
    wait_for pg_answers ||
        die "PostgreSQL does not answer on $PG_HOST:$PG_PORT after ${WAIT_S}s (see /var/log/postgresql/)"
}

# Trust auth for user postgres over TCP on loopback: the tests connect with no password.
ensure_postgres_trust() {
    pg_sql -d postgres -c 'SELECT 1' >/dev/null 2>&1 && return 0
    local version hba
    version="$(pg_version)"
    hba="/etc/postgresql/$version/main/pg_hba.conf"
    as_root test -f "$hba" || die "cannot log in as $PG_USER on $PG_HOST:$PG_PORT and found no $hba to fix"
    echo "services: allowing trust auth for $PG_USER from loopback in $hba"
    # First matching line wins: put ours on top.
    as_root sed -i \
        "1i host all $PG_USER 127.0.0.1/32 trust\nhost all $PG_USER ::1/128 trust" "$hba"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload || die "PostgreSQL reload failed"
    wait_for pg_sql -d postgres -c 'SELECT 1' >/dev/null 2>&1 ||
        die "still cannot log in as $PG_USER on $PG_HOST:$PG_PORT with trust auth (see $hba)"
}

ensure_postgres() {
    ensure_postgres_running
    ensure_postgres_trust
    local found
    found="$(pg_sql -d postgres -tA -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" ||
        die "cannot query PostgreSQL on $PG_HOST:$PG_PORT as $PG_USER"
    if [ -z "$found" ]; then
        echo "services: creating database $PG_DB"
        createdb -w -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" "$PG_DB" || die "createdb $PG_DB failed"
    fi
    local server
    server="$(pg_sql -d "$PG_DB" -tA -c 'SHOW server_version' | awk '{print $1}')"
    echo "postgresql: $PG_HOST:$PG_PORT answers (PostgreSQL $server), database $PG_DB ready"
}

# --- S3 ------------------------------------------------------------------------------------------------------
ensure_moto() {
    [ -x .venv/bin/moto_server ] || die "no .venv/bin/moto_server: run 'make venv' (it installs moto[server])"
    echo "s3:         .venv/bin/moto_server installed (the tests start it)"
}

# --- Chromium ------------------------------------------------------------------------------------------------
# Debian's package, launched by Playwright through executable_path: no browser is ever downloaded.
readonly CHROMIUM=/usr/bin/chromium

ensure_chromium() {
    if [ ! -x "$CHROMIUM" ]; then
        echo "services: installing chromium"
        apt_install chromium
    fi
    [ -x "$CHROMIUM" ] || die "the chromium package did not install $CHROMIUM"
    echo "chromium:   $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
}

ensure_redis
ensure_postgres
ensure_moto
ensure_chromium
