#!/usr/bin/env bash
# Start the services Ember's tests use (PostgreSQL, Redis, Docker engine, two loopback registries, one
# with a password, and the base image) if they are not running yet, and print the matching `export`
# lines on stdout:
#     eval "$(bash .ci/services.sh)"
# Everything binds to 127.0.0.1. Idempotent: a second run only checks. Needs root for dockerd.
set -euo pipefail

CI_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE_DIR="${EMBER_CI_CACHE:-/var/cache/ember-ci}"
BASE_IMAGE="${EMBER_TEST_BASE_IMAGE:-ember-base:bookworm}"
REGISTRY_ADDR="127.0.0.1:5000"
# A second registry that wants a password, for the registry-auth tests (test-only credentials).
AUTH_REGISTRY_ADDR="127.0.0.1:5001"
AUTH_REGISTRY_USER="ember-ci"
AUTH_REGISTRY_PASSWORD="ember-ci-password"
DEBIAN_MIRROR="${EMBER_CI_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PG_URL="postgresql+psycopg://postgres@127.0.0.1:5432/test"

log() { echo "[services] $*" >&2; }

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND once a second, at most SECONDS times.
wait_for() {
    local seconds="$1" what="$2"
    shift 2
    for _ in $(seq 1 "$seconds"); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 1
    done
    log "ERROR: $what did not come up within ${seconds}s"
    return 1
}

tcp_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

start_postgres() {
    if ! tcp_open 127.0.0.1 5432; then
        local version
        version="$(ls /etc/postgresql | sort -V | tail -1)"
        log "starting PostgreSQL $version"
        pg_ctlcluster --skip-systemctl-redirect "$version" main start
        wait_for 60 PostgreSQL tcp_open 127.0.0.1 5432
    fi
    local psql=(psql -h 127.0.0.1 -U postgres -d postgres -tAq)
    if ! "${psql[@]}" -c 'select 1' >/dev/null 2>&1; then
        # A fresh Debian cluster asks for a password over TCP; the tests use trust on loopback only.
        local hba
        hba="$(runuser -u postgres -- psql -tAq -c 'show hba_file')"
        log "allowing trust auth for postgres on loopback in $hba"
        sed -i '1i host all postgres 127.0.0.1/32 trust\nhost all postgres ::1/128 trust' "$hba"
        runuser -u postgres -- psql -tAq -c 'select pg_reload_conf()' >/dev/null
    fi
    if [ -z "$("${psql[@]}" -c "select 1 from pg_database where datname='test'")" ]; then
        log "creating database test"
        "${psql[@]}" -c 'create database test'
    fi
}

start_redis() {
    if redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then return 0; fi
    log "starting Redis"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log
    wait_for 30 Redis redis-cli -h 127.0.0.1 ping
}

start_docker() {
    if docker info >/dev/null 2>&1; then return 0; fi
    log "starting dockerd (log: /var/log/ember-ci-dockerd.log)"
    setsid dockerd >/var/log/ember-ci-dockerd.log 2>&1 </dev/null &
    wait_for 60 dockerd docker info
}

registry_up() { curl -sS -o /dev/null -w '%{http_code}' "http://$1/v2/" 2>/dev/null | grep -qE '^(200|401)$'; }

# start_registry NAME ADDR TEMPLATE: run docker-registry with a config made from TEMPLATE.
start_registry() {
    local name="$1" addr="$2" template="$3"
    if registry_up "$addr"; then return 0; fi
    mkdir -p "$CACHE_DIR/$name"
    sed "s#@STORAGE@#$CACHE_DIR/$name#; s#@ADDR@#$addr#; s#@HTPASSWD@#$CACHE_DIR/$name.htpasswd#" \
        "$CI_DIR/$template" >"$CACHE_DIR/$name.yml"
    log "starting docker-registry $name on $addr (log: /var/log/ember-ci-$name.log)"
    setsid docker-registry serve "$CACHE_DIR/$name.yml" >"/var/log/ember-ci-$name.log" 2>&1 </dev/null &
    wait_for 30 "registry $name" registry_up "$addr"
}

write_htpasswd() {
    local file="$CACHE_DIR/registry-auth.htpasswd"
    if [ -s "$file" ]; then return 0; fi
    mkdir -p "$CACHE_DIR"
    # bcrypt, which docker-registry requires (Python's crypt module; `htpasswd -B` would do the same).
    python3 -W ignore -c 'import crypt, sys; print(sys.argv[1] + ":" + crypt.crypt(sys.argv[2], crypt.mksalt(crypt.METHOD_BLOWFISH)))' \
        "$AUTH_REGISTRY_USER" "$AUTH_REGISTRY_PASSWORD" >"$file"
}

# The base image: a minimal Debian bookworm with Python, made with debootstrap (no image hub is
# reachable). The root-filesystem tarball is cached, so a rerun only imports it.
build_base_image() {
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then return 0; fi
    local tarball="$CACHE_DIR/bookworm-minbase-python.tar"
    mkdir -p "$CACHE_DIR"
    if [ ! -s "$tarball" ]; then
        local root
        root="$(mktemp -d "$CACHE_DIR/rootfs.XXXXXX")"
        log "debootstrap bookworm into $root (a few minutes, once)"
        debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
            bookworm "$root" "$DEBIAN_MIRROR" >"$CACHE_DIR/debootstrap.log" 2>&1 ||
            { tail -20 "$CACHE_DIR/debootstrap.log" >&2; rm -rf "$root"; return 1; }
        cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
        # Smaller image: package lists, apt caches and docs are not needed at run time.
        rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/usr/share/doc/* \
            "$root"/usr/share/man/* "$root"/usr/share/locale/*
        tar -C "$root" -c . >"$tarball.tmp"
        mv "$tarball.tmp" "$tarball"
        rm -rf "$root"
    fi
    log "importing $tarball as $BASE_IMAGE"
    docker import --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' "$tarball" "$BASE_IMAGE" >/dev/null
}

start_postgres
start_redis
start_docker
start_registry registry "$REGISTRY_ADDR" registry.yml
write_htpasswd
start_registry registry-auth "$AUTH_REGISTRY_ADDR" registry-auth.yml
build_base_image

cat <<EOF
export EMBER_TEST_BASE_IMAGE=$BASE_IMAGE
export EMBER_TEST_REGISTRY=$REGISTRY_ADDR
export EMBER_TEST_AUTH_REGISTRY=$AUTH_REGISTRY_USER:$AUTH_REGISTRY_PASSWORD@$AUTH_REGISTRY_ADDR
export EMBER_TEST_PG_URL=$PG_URL
export EMBER_TEST_REDIS_URL=redis://127.0.0.1:6379/0
EOF
