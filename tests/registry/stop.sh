#!/bin/sh
# Stops the registries started by start.sh (by their recorded pids) and,
# with --purge, deletes their storage.
DIR=${HYPER_REGISTRY_DIR:-/tmp/hyper-test-registry}
for n in open auth; do
    if [ -f "$DIR/$n.pid" ]; then
        kill "$(cat "$DIR/$n.pid")" 2>/dev/null || true
        rm -f "$DIR/$n.pid" "$DIR/$n.addr"
    fi
done
[ "${1:-}" = --purge ] && rm -rf "$DIR"
exit 0
