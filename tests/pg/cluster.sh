#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for kagi's tests and benchmarks, listening on a Unix socket in
# its own directory (no TCP port to collide on) and, with a port given, on 127.0.0.1 too.
#
#   tests/pg/cluster.sh start DIR [PORT]   initdb (first time) and start; prints the URL
#   tests/pg/cluster.sh stop DIR           fast shutdown
#   tests/pg/cluster.sh restart DIR        stop, then start on the same settings
#
# fsync is off (throwaway data) unless KAGI_PG_FSYNC=on.
# initdb and postgres refuse to run as root: as root they run as the `postgres` user.
set -euo pipefail

bindir() {
    if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
        pg_config --bindir
        return
    fi
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    if [ -z "$dir" ]; then
        echo "PostgreSQL is not installed (apt-get install postgresql)" >&2
        exit 1
    fi
    echo "$dir"
}

as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

cmd=${1:?usage: cluster.sh start|stop|restart DIR [PORT]}
dir=${2:?usage: cluster.sh start|stop|restart DIR [PORT]}
bin=$(bindir)
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
[ "$(id -u)" = 0 ] && chown postgres "$dir"

start() {
    local port=${1:-5432} listen=""
    [ -n "${1:-}" ] && listen=127.0.0.1
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust --no-sync -E UTF8 >"$dir/initdb.log" 2>&1 ||
            { cat "$dir/initdb.log" >&2; exit 1; }
    fi
    echo "$port" >"$dir/port"
    echo "$listen" >"$dir/listen"
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
        -o "-k $dir -p $port -c listen_addresses='$listen' -c fsync=${KAGI_PG_FSYNC:-off} -c max_connections=200" start >/dev/null
    local host
    host=$(printf '%s' "$dir" | sed 's|/|%2F|g')
    echo "postgres://postgres@${host}:${port}/postgres"
}

stop() {
    if [ -f "$dir/data/postmaster.pid" ]; then
        as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    fi
}

case $cmd in
start) start "${3:-}" ;;
stop) stop ;;
restart)
    stop
    port=$(cat "$dir/port")
    listen=$(cat "$dir/listen")
    if [ -n "$listen" ]; then start "$port"; else start; fi >/dev/null
    ;;
*) echo "unknown command $cmd" >&2; exit 2 ;;
esac
