#!/usr/bin/env bash
# kagi's TLS-terminating reverse proxy vs nginx, side by side, configured alike: TLS 1.3, a P-256
# certificate signed by a P-256 CA (the same chain length on both), X25519, the same upstream (one
# `kagi sample-backend` on loopback) over pooled HTTP/1.1 keep-alive connections (nginx:
# `proxy_http_version 1.1`, `keepalive 64`), X-Forwarded-For/Proto/Host set by both, no access log
# (nginx: `access_log off`; kagi: `access_log = "off"`), request bodies streamed (nginx: `proxy_request_buffering off`,
# `client_body_buffer_size 1m`), no per-connection request limit (nginx: `keepalive_requests`),
# 2 nginx worker processes and kagi's default proxy workers (one single-threaded runtime per core: 2).
# kagi's key is in its keystore (`kagi certs ca create` + `kagi certs issue`); nginx reads an
# openssl-made key file. Session tickets on both, as by default; no client here resumes.
#
#   bench/proxy_vs_nginx.sh [SECONDS] [ROUNDS] [CONNECTIONS] [HANDSHAKE_CLIENTS]
#
# SECONDS per measure (10), ROUNDS (3; each measure alternates kagi and nginx, the first one
# swapping every round, and the table shows the median of the rounds), CONNECTIONS kept alive in
# (1) (32), HANDSHAKE_CLIENTS parallel sequential clients in (2) (8). Measures:
#   (1) keep-alive: requests/s and latency percentiles of GET /echo (a ~0.2-0.3 KiB JSON answer)
#       on CONNECTIONS HTTP/1.1 connections: wrk -t 2 --latency (closed loop; p50/p99 from its
#       histogram), and the server's CPU per request from /proc. Extra rows: the same over HTTP/2
#       with h2load (one stream per connection; h2load gives no percentiles, so its mean latency
#       is shown); and, as a diagnostic, (1) on a second kagi listener whose upstream is the same
#       backend spoken to over HTTP/2 (one multiplexed connection instead of the HTTP/1.1 pool).
#   (2) new TLS connections: HANDSHAKE_CLIENTS parallel `openssl s_time -new -tls1_3`, each a
#       loop of full handshakes (-new: never resumed; wrk is not used here because its
#       Connection: close loop resumes sessions), first handshake then close, then handshake +
#       one HTTP/1.0 GET /echo read to the close. Connections/s over the wall time, and the
#       server's CPU time (utime+stime of /proc/PID/stat, all threads; nginx: master + workers)
#       per connection. On 2 shared cores the client's handshake work limits the rate, so CPU per
#       handshake is the fair comparison.
#   (3) upload: curl -T of a 64 MiB random file (PUT /echo, which reads and counts the body; the
#       count is checked), 5 times per round; MB/s = 10^6 bytes/s of the median time, and server
#       CPU per upload.
# Everything runs on loopback and stops by itself; processes started here are killed on exit.
# Installs nginx, wrk and nghttp2-client (h2load) from Debian when missing (needs root).
# Writes the table and the raw figures to bench/results/proxy_vs_nginx.md.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
rounds=${2:-3}
connections=${3:-32}
hs_clients=${4:-8}
uploads=5
. bench/lib.sh
install_missing nginx:nginx wrk:wrk h2load:nghttp2-client
build_kagi

# --- the upstream: one sample backend, shared ---------------------------------------------
"$kagi" sample-backend --listen 127.0.0.1:0 --ready-file "$work/backend.addr" 2>"$work/backend.log" &
backend_pid=$!
pids+=("$backend_pid")
wait_for "$work/backend.addr" "$backend_pid"
backend=$(cat "$work/backend.addr")

# --- kagi: a P-256 CA and a P-256 leaf whose keys are keystore keys ----------------------
data=$work/kagi-data
"$kagi" --data-dir "$data" init >/dev/null
"$kagi" --data-dir "$data" certs ca create --name bench-ca --key-spec ECC_NIST_P256 >/dev/null
"$kagi" --data-dir "$data" certs issue --name bench --dns localhost --ip 127.0.0.1 \
    --ca bench-ca --key-spec ECC_NIST_P256 >/dev/null
kagi_ca=$data/certs/bench-ca.pem
cat > "$work/kagi.toml" <<TOML
[keystore]
data_dir = "$data"
[api]
listen = "127.0.0.1:0"
[proxy]
access_log = "off"
[[listeners]]
name = "bench"
listen = "127.0.0.1:0"
certificates = ["bench"]
[[upstreams]]
name = "backend"
targets = ["$backend"]
[[routes]]
name = "all"
listeners = ["bench"]
upstream = "backend"
max_body_bytes = 134217728
# Diagnostic only: the same backend spoken to over HTTP/2 (one multiplexed connection, so no
# HTTP/1.1 pool), to tell the pool's part in kagi's keep-alive figures.
[[listeners]]
name = "h2-upstream"
listen = "127.0.0.1:0"
certificates = ["bench"]
[[upstreams]]
name = "backend-h2"
targets = ["$backend"]
protocol = "http2"
[[routes]]
name = "h2-upstream"
listeners = ["h2-upstream"]
upstream = "backend-h2"
TOML
"$kagi" serve --config "$work/kagi.toml" --ready-file "$work/kagi.ready" 2>"$work/kagi.log" &
kagi_pid=$!
pids+=("$kagi_pid")
wait_for "$work/kagi.ready" "$kagi_pid"
listener() {
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["listeners"][sys.argv[2]])' \
        "$work/kagi.ready" "$1"
}
kagi_addr=$(listener bench)
kagi_h2up_addr=$(listener h2-upstream)

# --- nginx: the same chain shape (P-256 leaf signed by a P-256 CA), key in a file ---------
ng=$work/nginx
mkdir -p "$ng/logs"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$ng/ca.key" 2>/dev/null
openssl req -x509 -new -key "$ng/ca.key" -subj /CN=nginx-bench-ca -days 30 -out "$ng/ca.pem" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
    2>/dev/null
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$ng/leaf.key" 2>/dev/null
openssl req -new -key "$ng/leaf.key" -subj /CN=localhost -out "$ng/leaf.csr" 2>/dev/null
cat > "$ng/leaf.ext" <<'EXT'
subjectAltName=DNS:localhost,IP:127.0.0.1
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
EXT
openssl x509 -req -in "$ng/leaf.csr" -CA "$ng/ca.pem" -CAkey "$ng/ca.key" -CAcreateserial \
    -days 30 -extfile "$ng/leaf.ext" -out "$ng/leaf.pem" 2>/dev/null
# kagi serves the chain of its PEM file; nginx serves the same number of certificates.
kagi_chain_len=$(grep -c 'BEGIN CERTIFICATE' "$data/certs/bench.pem")
if [ "$kagi_chain_len" -ge 2 ]; then
    cat "$ng/leaf.pem" "$ng/ca.pem" > "$ng/chain.pem"
else
    cp "$ng/leaf.pem" "$ng/chain.pem"
fi
# nginx cannot report a port it picked, so take a free one.
nginx_port=$(python3 -c \
    'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
user_line=""
[ "$(id -u)" = 0 ] && user_line="user root;"   # workers read files in this root-only work dir
cat > "$ng/nginx.conf" <<NGINX
$user_line
worker_processes 2;
pid $ng/nginx.pid;
error_log $ng/logs/error.log warn;
events { worker_connections 16384; }
http {
    access_log off;
    client_body_temp_path $ng/client_body;
    proxy_temp_path $ng/proxy;
    fastcgi_temp_path $ng/fastcgi;
    uwsgi_temp_path $ng/uwsgi;
    scgi_temp_path $ng/scgi;
    upstream backend {
        server $backend;
        keepalive 64;               # kagi: max_idle_per_target = 64
        keepalive_requests 1000000; # kagi's pool has no per-connection request limit
    }
    server {
        listen 127.0.0.1:$nginx_port ssl http2;
        server_name localhost;
        ssl_certificate $ng/chain.pem;
        ssl_certificate_key $ng/leaf.key;
        ssl_protocols TLSv1.3;
        keepalive_requests 1000000; # hyper (kagi) has no per-connection request limit
        keepalive_timeout 60s;      # kagi: idle_timeout 60 s
        client_max_body_size 128m;  # kagi: max_body_bytes
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_request_buffering off;  # stream request bodies, as kagi does
            client_body_buffer_size 1m;   # not the 16 KiB default: larger reads, fewer writes
        }
    }
}
NGINX
nginx -p "$ng" -e "$ng/logs/error.log" -c "$ng/nginx.conf" -g 'daemon off;' &
nginx_pid=$!
pids+=("$nginx_pid")
until curl -s -o /dev/null --cacert "$ng/ca.pem" "https://127.0.0.1:$nginx_port/echo"; do
    kill -0 "$nginx_pid" 2>/dev/null || { cat "$ng/logs/error.log" >&2; exit 1; }
    sleep 0.1
done
nginx_addr=127.0.0.1:$nginx_port
sleep 0.5
nginx_procs=("$nginx_pid" $(pgrep -P "$nginx_pid"))
[ ${#nginx_procs[@]} -eq 3 ] || { echo "expected nginx master + 2 workers: ${nginx_procs[*]}" >&2; exit 1; }

# kagi-h2up: the diagnostic listener of the same kagi process.
declare -A addr=([kagi]=$kagi_addr [nginx]=$nginx_addr [kagi-h2up]=$kagi_h2up_addr)
declare -A cafile=([kagi]=$kagi_ca [nginx]=$ng/ca.pem [kagi-h2up]=$kagi_ca)
declare -A procs=([kagi]="$kagi_pid" [nginx]="${nginx_procs[*]}" [kagi-h2up]="$kagi_pid")

# CPU time (clock ticks) of a server: utime + stime of each of its processes (all threads).
cpu_ticks() {
    local total=0 pid t
    for pid in ${procs[$1]}; do
        t=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat")
        total=$((total + t))
    done
    echo "$total"
}
hz=$(getconf CLK_TCK)
now() { date +%s.%N; }

# Sanity and what each side negotiates.
check() {
    local body
    body=$(curl -sS --fail --tlsv1.3 --cacert "${cafile[$1]}" "https://${addr[$1]}/echo")
    python3 -c 'import json,sys; j=json.loads(sys.argv[1]); assert j["method"]=="GET", j' "$body"
    local hello
    hello=$(openssl s_client -connect "${addr[$1]}" -servername localhost -showcerts \
        -CAfile "${cafile[$1]}" </dev/null 2>/dev/null)
    { grep -E '^(New,|Server Temp Key|Peer signature type|Peer signing digest|Verify return code)' \
        <<<"$hello" | sort -u
      echo "certificates sent: $(grep -c 'BEGIN CERTIFICATE' <<<"$hello")"
    } | paste -sd';' | sed "s/;/; /g; s/^/$1: /"
}
negotiated=$( { check kagi; check nginx; } )

raw=$work/raw.txt
: > "$raw"
record() { echo "$*" >> "$raw"; }

# (1) keep-alive, HTTP/1.1, wrk.
measure_keepalive() { # SERVER
    local before after t0 t1 out
    before=$(cpu_ticks "$1"); t0=$(now)
    out=$(wrk -t 2 -c "$connections" -d "${seconds}s" --latency "https://${addr[$1]}/echo")
    t1=$(now); after=$(cpu_ticks "$1")
    python3 - "$1" "$out" "$before" "$after" "$hz" <<'PY' >> "$raw"
import re, sys
server, out, before, after, hz = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
def ms(text):
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
requests = int(re.search(r"(\d+) requests in", out).group(1))
dist = out.split("Latency Distribution", 1)[1]
p50 = ms(re.search(r"^\s+50%\s+(\S+)", dist, re.M).group(1))
p99 = ms(re.search(r"^\s+99%\s+(\S+)", dist, re.M).group(1))
errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
errors += int(m.group(1)) if m else 0
cpu_us = (after - before) / hz * 1e6 / max(requests, 1)
print(f"h1 {server} rps={rps:.0f} p50_ms={p50:.3f} p99_ms={p99:.3f} cpu_us_per_req={cpu_us:.1f} errors={errors}")
PY
}

# Extra: keep-alive, HTTP/2, h2load (one stream per connection).
measure_h2() { # SERVER
    local before after out
    before=$(cpu_ticks "$1")
    out=$(h2load -t 2 -c "$connections" -m 1 -D "$seconds" "https://${addr[$1]}/echo")
    after=$(cpu_ticks "$1")
    python3 - "$1" "$out" "$before" "$after" "$hz" <<'PY' >> "$raw"
import re, sys
server, out, before, after, hz = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
assert "h2" in re.search(r"Application protocol: (\S+)", out).group(1), out
rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
m = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
done, ok, failed, errored = map(int, m.groups())
mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out).group(1)
value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", mean).groups()
mean_ms = float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
cpu_us = (after - before) / hz * 1e6 / max(ok, 1)
print(f"h2 {server} rps={rps:.0f} mean_ms={mean_ms:.3f} cpu_us_per_req={cpu_us:.1f} errors={failed + errored + done - ok}")
PY
}

# (2) new TLS connections: parallel sequential clients, each a loop of full handshakes;
# KIND hs: handshake, then close; hsget: handshake, one GET /echo (HTTP/1.0), read to the close.
measure_handshakes() { # SERVER KIND
    local before after t0 t1 i spids=() www=()
    [ "$2" = hsget ] && www=(-www /echo)
    before=$(cpu_ticks "$1"); t0=$(now)
    for i in $(seq "$hs_clients"); do
        openssl s_time -connect "${addr[$1]}" -new -tls1_3 -time "$seconds" "${www[@]}" \
            > "$work/s_time.$i" 2>&1 &
        spids+=($!)
    done
    for i in "${spids[@]}"; do wait "$i"; done
    t1=$(now); after=$(cpu_ticks "$1")
    python3 - "$1" "$work" "$hs_clients" "$t0" "$t1" "$before" "$after" "$hz" "$2" <<'PY' >> "$raw"
import re, sys
server, work, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
t0, t1 = float(sys.argv[4]), float(sys.argv[5])
before, after, hz, kind = int(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8]), sys.argv[9]
conns = 0
per_conn = []
for i in range(1, n + 1):
    out = open(f"{work}/s_time.{i}").read()
    m = re.search(r"(\d+) connections in [\d.]+ real seconds, (\d+) bytes read per connection", out)
    assert m, out
    conns += int(m.group(1))
    per_conn.append(int(m.group(2)))
cpu_us = (after - before) / hz * 1e6 / max(conns, 1)
print(f"{kind} {server} conns_per_s={conns / (t1 - t0):.0f} cpu_us_per_conn={cpu_us:.1f} "
      f"connections={conns} bytes_per_conn={min(per_conn)}-{max(per_conn)}")
PY
}

# (3) 64 MiB uploads through the proxy to /echo, which reads and counts the body.
head -c $((64 * 1024 * 1024)) /dev/urandom > "$work/body.bin"
measure_upload() { # SERVER
    local before after i line times=()
    before=$(cpu_ticks "$1")
    for i in $(seq "$uploads"); do
        line=$(curl -sS --fail --tlsv1.3 --cacert "${cafile[$1]}" -H 'Expect:' -T "$work/body.bin" \
            -o "$work/upload.json" -w '%{time_total}' "https://${addr[$1]}/echo")
        python3 -c 'import json,sys; n=json.load(open(sys.argv[1]))["body_bytes"]; assert n==64<<20, n' "$work/upload.json"
        times+=("$line")
    done
    after=$(cpu_ticks "$1")
    python3 - "$1" "$before" "$after" "$hz" "${times[@]}" <<'PY' >> "$raw"
import statistics, sys
server, before, after, hz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
times = [float(t) for t in sys.argv[5:]]
mbs = (64 << 20) / statistics.median(times) / 1e6
cpu_ms = (after - before) / hz * 1e3 / len(times)
print(f"up {server} mb_per_s={mbs:.0f} cpu_ms_per_upload={cpu_ms:.0f} "
      f"times_s={','.join(f'{t:.3f}' for t in times)}")
PY
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
# Warm up both (pools, caches, page faults).
for s in kagi nginx kagi-h2up; do
    wrk -t 2 -c "$connections" -d 2s "https://${addr[$s]}/echo" >/dev/null
done
for round in $(seq "$rounds"); do
    if [ $((round % 2)) = 1 ]; then order=(kagi nginx); else order=(nginx kagi); fi
    echo "round $round/$rounds (${order[*]})" >&2
    for s in "${order[@]}" kagi-h2up; do measure_keepalive "$s"; done
    for s in "${order[@]}"; do measure_h2 "$s"; done
    for s in "${order[@]}"; do measure_handshakes "$s" hs; done
    for s in "${order[@]}"; do measure_handshakes "$s" hsget; done
    for s in "${order[@]}"; do measure_upload "$s"; done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

versions=$(
    echo "kagi $(git rev-parse --short HEAD) (release build), rustls with aws-lc-rs"
    nginx -v 2>&1 | sed 's/^nginx version: //'
    echo "nginx's $(nginx -V 2>&1 | grep -o 'built with OpenSSL [^ ]*' || true)"
    wrk -v 2>&1 | head -1 | cut -d' ' -f1-2
    h2load --version
    openssl version
    curl --version | head -1 | cut -d' ' -f1-2,5
)

out=bench/results/proxy_vs_nginx.md
mkdir -p bench/results
python3 - "$raw" "$seconds" "$rounds" "$connections" "$hs_clients" "$uploads" \
    "$load_before" "$load_after" "$versions" "$negotiated" <<'PY' | tee "$out"
import collections, datetime, os, re, statistics, sys
raw, seconds, rounds, conns, hs_clients, uploads, load0, load1, versions, negotiated = sys.argv[1:]
runs = collections.defaultdict(list)
lines = open(raw).read().splitlines()
for line in lines:
    kind, server, *pairs = line.split()
    runs[(kind, server)].append(dict(p.split("=", 1) for p in pairs))
def med(kind, server, key):
    return statistics.median(float(r[key]) for r in runs[(kind, server)])
# (label, kind, key, format, goal: None, ">=1" (higher is better), "<=1" or "<=0.7"; kagi's row)
rows = [
    ("(1) HTTP/1.1 keep-alive, requests/s", "h1", "rps", "{:.0f}", ">=1"),
    ("(1) HTTP/1.1 keep-alive, p50 latency ms", "h1", "p50_ms", "{:.2f}", None),
    ("(1) HTTP/1.1 keep-alive, p99 latency ms", "h1", "p99_ms", "{:.2f}", "<=1"),
    ("(1) HTTP/1.1 server CPU µs per request", "h1", "cpu_us_per_req", "{:.1f}", None),
    ("(diag.) (1) with kagi's upstream over HTTP/2, requests/s", "h1", "rps", "{:.0f}", None, "kagi-h2up"),
    ("(diag.) (1) with kagi's upstream over HTTP/2, p99 ms", "h1", "p99_ms", "{:.2f}", None, "kagi-h2up"),
    ("(diag.) (1) with kagi's upstream over HTTP/2, CPU µs/req", "h1", "cpu_us_per_req", "{:.1f}", None, "kagi-h2up"),
    ("(extra) HTTP/2 keep-alive, requests/s", "h2", "rps", "{:.0f}", None),
    ("(extra) HTTP/2 keep-alive, mean latency ms", "h2", "mean_ms", "{:.2f}", None),
    ("(extra) HTTP/2 server CPU µs per request", "h2", "cpu_us_per_req", "{:.1f}", None),
    ("(2) new TLS connections/s, handshake only", "hs", "conns_per_s", "{:.0f}", None),
    ("(2) server CPU µs per handshake", "hs", "cpu_us_per_conn", "{:.0f}", "<=0.7"),
    ("(2) new TLS connections/s, handshake + 1 GET", "hsget", "conns_per_s", "{:.0f}", None),
    ("(2) server CPU µs per connection, handshake + 1 GET", "hsget", "cpu_us_per_conn", "{:.0f}", None),
    ("(3) 64 MiB upload, MB/s", "up", "mb_per_s", "{:.0f}", ">=1"),
    ("(3) server CPU ms per 64 MiB upload", "up", "cpu_ms_per_upload", "{:.0f}", None),
]
print(f"# kagi proxy vs nginx — {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
print()
print(f"`bench/proxy_vs_nginx.sh {seconds} {rounds} {conns} {hs_clients}` on {os.cpu_count()} cores "
      f"shared by client, proxy and backend; load average before {load0}, after {load1}. "
      f"Median of {rounds} rounds, {seconds} s per measure, {conns} keep-alive connections, "
      f"{hs_clients} handshake clients, {uploads} uploads per round.")
print()
print("| metric | kagi | nginx | kagi/nginx | goal |")
print("|---|---:|---:|---:|---|")
for label, kind, key, fmt, goal, *kagi_row in rows:
    k, n = med(kind, (kagi_row or ["kagi"])[0], key), med(kind, "nginx", key)
    ratio = k / n if n else float("nan")
    verdict = ""
    if goal == ">=1":
        verdict = ("met" if ratio >= 1 else "not met") + " (≥ 1)"
    elif goal and goal.startswith("<="):
        limit = float(goal[2:])
        verdict = ("met" if ratio <= limit else "not met") + f" (≤ {limit})"
    print(f"| {label} | {fmt.format(k)} | {fmt.format(n)} | {ratio:.2f} | {verdict} |")
errors = [l for l in lines if re.search(r"errors=([1-9]\d*)", l)]
print()
print("Errors: " + ("; ".join(errors) if errors else "none (every wrk/h2load request answered 2xx, every upload counted 64 MiB)."))
print()
print("Negotiated (openssl s_client):")
print()
for line in negotiated.splitlines():
    print(f"- {line}")
print()
print("Tools:")
print()
for line in versions.splitlines():
    print(f"- {line}")
print()
print("Raw figures, one line per measure and round:")
print()
print("```")
for line in lines:
    print(line)
print("```")
PY
echo "(written to $out)" >&2
