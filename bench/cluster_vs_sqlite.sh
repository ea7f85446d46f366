#!/usr/bin/env bash
# KMS API throughput of kagi nodes sharing one PostgreSQL database versus one node on SQLite:
# Encrypt and GenerateDataKey requests/s and p99 with 1, 2 and 3 PostgreSQL nodes and 1 SQLite
# node, same machine, same client (examples/kms_load.rs: SigV4, keep-alive, N connections
# spread over the nodes, one thread).
#
#   bench/cluster_vs_sqlite.sh [CONNECTIONS] [SECONDS]
#
# Installs PostgreSQL from Debian when missing (as root); starts a throwaway cluster with
# tests/pg/cluster.sh, with fsync on (unlike the tests' clusters).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
connections=${1:-16}
seconds=${2:-10}

if ! command -v pg_config >/dev/null 2>&1 && ! ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1; then
    install_missing pg_config:postgresql
fi
build_kagi
cargo build --release --quiet --example kms_load
load=$target_dir/release/examples/kms_load

chmod 755 "$work"
# fsync on: shared-store numbers must not flatter PostgreSQL.
pg_url=$(KAGI_PG_FSYNC=on bash tests/pg/cluster.sh start "$work/pg")
stop_pg() { bash tests/pg/cluster.sh stop "$work/pg" >/dev/null 2>&1 || true; cleanup; }
trap stop_pg EXIT

config() { # NAME STORE-TABLE
    cat >"$work/$1.toml" <<TOML
[keystore]
data_dir = "$work/$1"
[api]
listen = "127.0.0.1:0"
[[principals]]
name = "bench"
access_key_id = "AKIAKAGIBENCH0000000"
secret = "bench-secret-0123456789"
administrator = true
[quotas]
symmetric = 10000000.0
management = 1000.0
$2
TOML
}

start() { # NAME: starts a node, waits until ready
    "$kagi" serve --config "$work/$1.toml" --ready-file "$work/$1.ready" 2>"$work/$1.log" &
    pids+=($!)
    wait_for "$work/$1.ready" $!
}
field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$@"; }

export AWS_ACCESS_KEY_ID=AKIAKAGIBENCH0000000 AWS_SECRET_ACCESS_KEY=bench-secret-0123456789
run() { "$load" --connections "$connections" --seconds "$seconds" "$@"; }
results=()

config sqlite ""
start sqlite
for op in Encrypt GenerateDataKey; do
    results+=("sqlite 1 $(run --operation $op --endpoint "https://$(field "$work/sqlite.ready" api)" \
        --ca-bundle "$(field "$work/sqlite.ready" ca_bundle)")")
done
kill "${pids[-1]}"

store="[store]
url = \"$pg_url\""
for n in 1 2 3; do
    config "pg$n" "$store"
    if [ "$n" -gt 1 ]; then
        mkdir -p "$work/pg$n"
        cp "$work/pg1/root.key" "$work/pg1/root.check" "$work/pg$n/"
    fi
    start "pg$n"
    endpoints=() bundles=()
    for i in $(seq 1 "$n"); do
        endpoints+=(--endpoint "https://$(field "$work/pg$i.ready" api)")
        bundles+=(--ca-bundle "$(field "$work/pg$i.ready" ca_bundle)")
    done
    for op in Encrypt GenerateDataKey; do
        results+=("postgres $n $(run --operation $op "${endpoints[@]}" "${bundles[@]}")")
    done
done

python3 - "${results[@]}" <<'PY'
import json, sys
rows = []
for line in sys.argv[1:]:
    store, nodes, report = line.split(" ", 2)
    rows.append((store, int(nodes), json.loads(report)))
base = {r["operation"]: r["requests_per_second"] for s, n, r in rows if s == "sqlite"}
print(f"{'store':<10}{'nodes':>6}{'operation':>17}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'vs SQLite':>11}")
for store, nodes, r in rows:
    ratio = r["requests_per_second"] / (base[r["operation"]] or 1)
    print(f"{store:<10}{nodes:>6}{r['operation']:>17}{r['requests_per_second']:>10.0f}"
          f"{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['errors']:>8}{ratio:>10.2f}x")
print(f"({rows[0][2]['connections']} connections, {rows[0][2]['seconds']} s each, one client thread)")
PY
