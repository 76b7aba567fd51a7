#!/bin/sh
# Starts the test registries (Debian's docker-registry) on loopback:
#   - an open one            on 127.0.0.1:$HYPER_REGISTRY_PORT (default 5000, or the next free port)
#   - one with htpasswd auth on the port after it (user "hyper", password "hyper-secret")
# Storage is a directory under $HYPER_REGISTRY_DIR (default /tmp/hyper-test-registry).
# Idempotent: if they already run, it only prints the address again.
# Prints the open registry's address ("127.0.0.1:5000") on stdout; writes
# $HYPER_REGISTRY_DIR/env with the HYPER_TEST_REGISTRY* variables the tests read:
#   . "$HYPER_REGISTRY_DIR/env"   (or: eval "$(cat .../env)")
# Stop with tests/registry/stop.sh.
set -eu
DIR=${HYPER_REGISTRY_DIR:-/tmp/hyper-test-registry}
PORT=${HYPER_REGISTRY_PORT:-5000}
USER_NAME=hyper
USER_PASS=hyper-secret
mkdir -p "$DIR"

log() { echo "registry: $*" >&2; }

need=""
command -v docker-registry >/dev/null 2>&1 || need="$need docker-registry"
command -v skopeo >/dev/null 2>&1 || need="$need skopeo"
command -v htpasswd >/dev/null 2>&1 || need="$need apache2-utils"
command -v zstd >/dev/null 2>&1 || need="$need zstd"
[ -x /bin/busybox ] || need="$need busybox-static"
if [ -n "$need" ]; then
    log "installing:$need"
    if [ "$(id -u)" -ne 0 ]; then log "not root: install$need yourself"; exit 1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $need >&2 \
      || { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $need >&2; }
fi

alive() { # alive NAME -> 0 if its pid runs and /v2/ answers
    [ -f "$DIR/$1.pid" ] && [ -f "$DIR/$1.addr" ] || return 1
    kill -0 "$(cat "$DIR/$1.pid")" 2>/dev/null || return 1
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://$(cat "$DIR/$1.addr")/v2/" || true)
    [ "$code" = 200 ] || [ "$code" = 401 ]
}

free_port_from() {
    p=$1
    while ! bash -c "! (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null"; do p=$((p + 1)); done
    echo "$p"
}

start_one() { # start_one NAME PORT AUTH(0|1)
    name=$1; port=$2; auth=$3
    mkdir -p "$DIR/$name-storage"
    cfg="$DIR/$name.yml"
    {
        echo "version: 0.1"
        echo "log: {level: warn, formatter: text}"
        echo "storage:"
        echo "  filesystem: {rootdirectory: $DIR/$name-storage}"
        echo "  delete: {enabled: true}"
        echo "  maintenance: {uploadpurging: {enabled: false}}"
        echo "http:"
        echo "  addr: 127.0.0.1:$port"
        echo "  secret: hyper-test-only"
        if [ "$auth" = 1 ]; then
            htpasswd -Bbc "$DIR/htpasswd" "$USER_NAME" "$USER_PASS" >/dev/null 2>&1
            echo "auth:"
            echo "  htpasswd: {realm: hyper-test, path: $DIR/htpasswd}"
        fi
    } >"$cfg"
    # No blob-descriptor cache: the seed tampers blobs on disk on purpose.
    setsid docker-registry serve "$cfg" >"$DIR/$name.log" 2>&1 </dev/null &
    echo $! >"$DIR/$name.pid"
    echo "127.0.0.1:$port" >"$DIR/$name.addr"
    i=0
    until alive "$name"; do
        i=$((i + 1))
        if [ $i -gt 100 ]; then log "$name did not start; see $DIR/$name.log"; tail -5 "$DIR/$name.log" >&2; exit 1; fi
        sleep 0.1
    done
    log "$name up on 127.0.0.1:$port (storage $DIR/$name-storage)"
}

if ! alive open; then
    p=$(free_port_from "$PORT")
    start_one open "$p" 0
fi
if ! alive auth; then
    op=$(cat "$DIR/open.addr"); op=${op#127.0.0.1:}
    p=$(free_port_from $((op + 1)))
    start_one auth "$p" 1
fi

cat >"$DIR/env" <<ENV
export HYPER_TEST_REGISTRY=$(cat "$DIR/open.addr")
export HYPER_TEST_REGISTRY_STORAGE=$DIR/open-storage
export HYPER_TEST_REGISTRY_AUTH=$(cat "$DIR/auth.addr")
export HYPER_TEST_REGISTRY_USER=$USER_NAME
export HYPER_TEST_REGISTRY_PASSWORD=$USER_PASS
export HYPER_TEST_ARCHIVES=$DIR/archives
ENV
log "variables in $DIR/env"
cat "$DIR/open.addr"
