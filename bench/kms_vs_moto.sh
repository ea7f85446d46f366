#!/usr/bin/env bash
# KMS API Encrypt throughput: kagi vs moto's server (the usual local KMS stand-in), same machine,
# same client (examples/kms_load.rs: SigV4, keep-alive, N concurrent connections, one thread).
#
#   bench/kms_vs_moto.sh [CONNECTIONS] [SECONDS]
#
# Installs moto[server] into bench/.venv on first use. kagi is measured over HTTPS (HTTP/1.1 and
# HTTP/2); moto over plain HTTP (it has no TLS of its own), which favours moto.
set -euo pipefail
cd "$(dirname "$0")/.."
connections=${1:-16}
seconds=${2:-10}
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

if [ ! -x bench/.venv/bin/moto_server ]; then
    python3 -m venv bench/.venv
    bench/.venv/bin/pip install --quiet 'moto[server]==5.1.*'
fi
cargo build --release --quiet --bin kagi --example kms_load
load=target/release/examples/kms_load

# kagi: port 0, the ready file says where it listens. Quotas high enough not to throttle.
cat > "$work/kagi.toml" <<TOML
[keystore]
data_dir = "data"
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
TOML
target/release/kagi serve --config "$work/kagi.toml" --ready-file "$work/ready.json" 2>"$work/kagi.log" &
pids+=($!)
while [ ! -s "$work/ready.json" ]; do sleep 0.1; done
api=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["api"])' "$work/ready.json")
ca=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ca_bundle"])' "$work/ready.json")

# moto: it cannot report a port it picked, so take a free one.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
bench/.venv/bin/moto_server -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
pids+=($!)
until curl -s -o /dev/null "http://127.0.0.1:$port/"; do sleep 0.2; done

export AWS_ACCESS_KEY_ID=AKIAKAGIBENCH0000000 AWS_SECRET_ACCESS_KEY=bench-secret-0123456789
run() { "$load" --connections "$connections" --seconds "$seconds" "$@"; }
kagi_h1=$(run --endpoint "https://$api" --ca-bundle "$ca")
kagi_h2=$(run --endpoint "https://$api" --ca-bundle "$ca" --http2)
moto=$(run --endpoint "http://127.0.0.1:$port")

python3 - "$kagi_h1" "$kagi_h2" "$moto" <<'PY'
import json, sys
rows = [("kagi HTTPS HTTP/1.1", json.loads(sys.argv[1])),
        ("kagi HTTPS HTTP/2", json.loads(sys.argv[2])),
        ("moto HTTP/1.1", json.loads(sys.argv[3]))]
moto = rows[2][1]["requests_per_second"] or 1
print(f"{'server':<22}{'Encrypt/s':>12}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'vs moto':>9}")
for name, r in rows:
    print(f"{name:<22}{r['requests_per_second']:>12.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
          f"{r['errors']:>8}{r['requests_per_second'] / moto:>8.1f}x")
print(f"({rows[0][1]['connections']} connections, {rows[0][1]['seconds']} s each, one client thread)")
PY
