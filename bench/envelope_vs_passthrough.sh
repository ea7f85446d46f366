#!/usr/bin/env bash
# What an envelope route costs: one `kagi serve`, one upstream (`kagi sample-backend`), two
# plain-HTTP proxy listeners whose routes differ only in `[routes.envelope]`:
#   enc:   key alias/bench, context tenant=bench, suite 0478, 64 KiB frames (the defaults); the
#          route acts as principal route-enc, which the key's policy allows GenerateDataKey and
#          Decrypt;
#   plain: no envelope (passthrough).
# Both: access log off, HTTP/1.1 pooled keep-alive connections to the upstream, kagi's default
# default proxy workers (one per CPU: 2), max_body_bytes 2 GiB. Plain HTTP isolates the envelope's cost from TLS.
#
#   bench/envelope_vs_passthrough.sh [SECONDS] [ROUNDS] [CONNECTIONS]
#
# SECONDS per keep-alive measure (10), ROUNDS (3; each measure alternates enc and plain, the
# first one swapping every round; the table shows the median of the rounds), CONNECTIONS kept
# alive in (1) (32). Measures:
#   (1) 1 KiB POSTs to /echo (the backend reads the body and answers its length): wrk -t 2
#       --latency with a Lua script for the body, keep-alive; requests/s, p50/p99 (wrk's closed
#       loop), and kagi's CPU per request (utime+stime of /proc/PID/stat, all threads).
#   (2) a 256 MiB random file, `curl -T` to PUT /echo, 3 times per round; MB/s = 10^6 bytes/s
#       of the median time, and kagi's CPU per upload. The backend's count is checked: the
#       plaintext length on plain, the computed 0478 ciphertext length on enc.
#   (3) kagi's peak resident memory during a 1 GiB upload (PUT /echo): a fresh `kagi serve` for
#       each route (VmHWM cannot be reset), VmHWM when ready and after the upload, and VmRSS
#       sampled every 20 ms during it. enc is the goal; plain is the reference.
#   (4) GET of a stored 64 MiB object (stored through each route: ciphertext through enc, which
#       decrypts it streaming on the way back; as is through plain), 5 times per round; MB/s of
#       the median. The bytes that come back are compared with the original once.
# Goals (from the issue): enc/plain ≥ 0.9 in (1) requests/s (and in p99 taken as a rate: enc's p99
# ≤ plain's / 0.9), ≥ 0.7 in (2) MB/s, and enc's peak resident memory in (3) < 64 MiB.
# The key: `kagi serve` is started once with only the KMS API and an administrator principal,
# and the key (with its policy) and alias are made with CreateKey and CreateAlias, signed by
# curl's --aws-sigv4; the proxy's configuration check needs the key to exist when it starts.
# Everything runs on loopback, in a temporary directory, on free ports, and stops by itself;
# processes started here are killed on exit. Installs wrk from Debian when missing (as root).
# Writes the table and the raw figures to bench/results/envelope_vs_passthrough.md.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
rounds=${2:-3}
connections=${3:-32}
uploads=3
gets=5
. bench/lib.sh
install_missing wrk:wrk curl:curl
build_kagi

# --- the upstream: one sample backend, shared ---------------------------------------------
"$kagi" sample-backend --listen 127.0.0.1:0 --ready-file "$work/backend.addr" 2>"$work/backend.log" &
backend_pid=$!
pids+=("$backend_pid")
wait_for "$work/backend.addr" "$backend_pid"
backend=$(cat "$work/backend.addr")

# --- the key, through the KMS API of a server that serves nothing else ------------------------
data=$work/kagi-data
"$kagi" --data-dir "$data" init >/dev/null
access_key=AKIAKAGIBENCH0000000
secret=bench-secret-0123456789
envelope_key "$data" bench alias/bench "envelope bench"

# --- the proxy: two listeners, two routes, one upstream ----------------------------------
cat > "$work/kagi.toml" <<TOML
[keystore]
data_dir = "$data"
[api]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
$principals
[proxy]
access_log = "off"
[[listeners]]
name = "enc"
listen = "127.0.0.1:0"
tls = false
[[listeners]]
name = "plain"
listen = "127.0.0.1:0"
tls = false
[[upstreams]]
name = "backend"
targets = ["$backend"]
[[routes]]
name = "enc"
listeners = ["enc"]
upstream = "backend"
max_body_bytes = 2147483648
[routes.envelope]
key = "alias/bench"
[[routes.envelope.context]]
key = "tenant"
value = "bench"
[[routes]]
name = "plain"
listeners = ["plain"]
upstream = "backend"
max_body_bytes = 2147483648
TOML
# Starts a kagi serve; sets kagi_pid and addr[enc], addr[plain].
declare -A addr
start_kagi() { # NAME
    rm -f "$work/$1.ready"
    "$kagi" serve --config "$work/kagi.toml" --ready-file "$work/$1.ready" 2>"$work/$1.log" &
    kagi_pid=$!
    pids+=("$kagi_pid")
    wait_for "$work/$1.ready" "$kagi_pid"
    addr[enc]=$(ready_field "$work/$1.ready" 'j["listeners"]["enc"]')
    addr[plain]=$(ready_field "$work/$1.ready" 'j["listeners"]["plain"]')
    admin=$(ready_field "$work/$1.ready" 'j["admin"]')
}
start_kagi kagi
hz=$(getconf CLK_TCK)
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$kagi_pid/stat"; }
status_kib() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; } # PID FIELD

# The 0478 ciphertext length of PLAINTEXT bytes (64 KiB frames) whose header is HEADER bytes.
ciphertext_len() { # HEADER PLAINTEXT
    python3 -c 'import sys; h, p = map(int, sys.argv[1:]); f = 65536
r = (p - 1) // f if p else 0; print(h + r * (f + 32) + (p - r * f) + 40)' "$1" "$2"
}

# Sanity: enc sends the upstream an AWS Encryption SDK message, plain the bytes as they are.
head -c 1024 /dev/urandom > "$work/1k.bin"
echo_bytes() { # ROUTE FILE: what the backend counted of a PUT /echo of FILE through ROUTE
    curl -sS --fail -H 'Expect:' -T "$2" "http://${addr[$1]}/echo" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["body_bytes"])'
}
[ "$(echo_bytes plain "$work/1k.bin")" = 1024 ] || { echo "plain: the backend did not count 1024 bytes" >&2; exit 1; }
curl -sS --fail -H 'Expect:' -T "$work/1k.bin" "http://${addr[enc]}/objects/probe" >/dev/null
curl -sS --fail "http://$backend/objects/probe" -o "$work/probe.esdk"
python3 - "$work/probe.esdk" "$work/1k.bin" <<'PY'
import sys
stored, plain = open(sys.argv[1], "rb").read(), open(sys.argv[2], "rb").read()
assert stored[:3] == b"\x02\x04\x78", f"not a 0478 message: {stored[:3].hex()}"
assert plain[:32] not in stored, "plaintext in the stored message"
PY
curl -sS --fail "http://${addr[enc]}/objects/probe" -o "$work/probe.out"
cmp -s "$work/probe.out" "$work/1k.bin" || { echo "enc: GET did not give the plaintext back" >&2; exit 1; }
# The message header's length (header + its tag), from the probe: its length minus the frames.
header_len=$(( $(stat -c %s "$work/probe.esdk") - 1024 - 40 ))
enc_1k=$(echo_bytes enc "$work/1k.bin")
[ "$enc_1k" = "$(ciphertext_len "$header_len" 1024)" ] || { echo "enc: the backend counted $enc_1k bytes" >&2; exit 1; }

raw=$work/raw.txt
: > "$raw"

# (1) 1 KiB POSTs, keep-alive, wrk.
cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = string.rep("k", 1024)
wrk.headers["Content-Type"] = "application/octet-stream"
LUA
measure_post() { # ROUTE
    local before after out
    before=$(cpu_ticks)
    out=$(wrk -t 2 -c "$connections" -d "${seconds}s" --latency -s "$work/post.lua" "http://${addr[$1]}/echo")
    after=$(cpu_ticks)
    python3 - "$1" "$out" "$before" "$after" "$hz" <<'PY' >> "$raw"
import re, sys
route, out, before, after, hz = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
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
print(f"post {route} rps={rps:.0f} p50_ms={p50:.3f} p99_ms={p99:.3f} cpu_us_per_req={cpu_us:.1f} errors={errors}")
PY
}

# (2) 256 MiB uploads to /echo.
big=$((256 * 1024 * 1024))
head -c "$big" /dev/urandom > "$work/256m.bin"
declare -A expect=([plain]=$big [enc]=$(ciphertext_len "$header_len" "$big"))
measure_upload() { # ROUTE
    local before after i t times=()
    before=$(cpu_ticks)
    for i in $(seq "$uploads"); do
        t=$(curl -sS --fail -H 'Expect:' -T "$work/256m.bin" -o "$work/upload.json" \
            -w '%{time_total}' "http://${addr[$1]}/echo")
        python3 -c 'import json,sys; n=json.load(open(sys.argv[1]))["body_bytes"]; assert n==int(sys.argv[2]), n' \
            "$work/upload.json" "${expect[$1]}"
        times+=("$t")
    done
    after=$(cpu_ticks)
    python3 - "$1" "$big" "$before" "$after" "$hz" "${times[@]}" <<'PY' >> "$raw"
import statistics, sys
route, size, before, after, hz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
times = [float(t) for t in sys.argv[6:]]
print(f"up {route} mb_per_s={size / statistics.median(times) / 1e6:.0f} "
      f"cpu_ms_per_upload={(after - before) / hz * 1e3 / len(times):.0f} "
      f"times_s={','.join(f'{t:.3f}' for t in times)}")
PY
}

# (4) GET of a stored 64 MiB object: stored through each route once, compared once.
obj=$((64 * 1024 * 1024))
head -c "$obj" "$work/256m.bin" > "$work/64m.bin"
for route in enc plain; do
    curl -sS --fail -H 'Expect:' -T "$work/64m.bin" "http://${addr[$route]}/objects/$route-64m" >/dev/null
    curl -sS --fail "http://${addr[$route]}/objects/$route-64m" -o "$work/64m.out"
    cmp -s "$work/64m.out" "$work/64m.bin" || { echo "$route: GET gave other bytes back" >&2; exit 1; }
done
rm -f "$work/64m.out"
stored_enc=$(curl -sS --fail -o /dev/null -w '%{size_download}' "http://$backend/objects/enc-64m")
[ "$stored_enc" = "$(ciphertext_len "$header_len" "$obj")" ] || { echo "enc: stored $stored_enc bytes" >&2; exit 1; }
measure_get() { # ROUTE
    local before after i line times=()
    before=$(cpu_ticks)
    for i in $(seq "$gets"); do
        line=$(curl -sS --fail -o /dev/null -w '%{size_download} %{time_total}' \
            "http://${addr[$1]}/objects/$1-64m")
        [ "${line% *}" = "$obj" ] || { echo "$1: GET gave ${line% *} bytes" >&2; exit 1; }
        times+=("${line#* }")
    done
    after=$(cpu_ticks)
    python3 - "$1" "$obj" "$before" "$after" "$hz" "${times[@]}" <<'PY' >> "$raw"
import statistics, sys
route, size, before, after, hz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
times = [float(t) for t in sys.argv[6:]]
print(f"get {route} mb_per_s={size / statistics.median(times) / 1e6:.0f} "
      f"cpu_ms_per_get={(after - before) / hz * 1e3 / len(times):.0f} "
      f"times_s={','.join(f'{t:.3f}' for t in times)}")
PY
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
# Warm up both (upstream pool, page faults).
for route in enc plain; do
    wrk -t 2 -c "$connections" -d 2s -s "$work/post.lua" "http://${addr[$route]}/echo" >/dev/null
done
for round in $(seq "$rounds"); do
    if [ $((round % 2)) = 1 ]; then order=(enc plain); else order=(plain enc); fi
    echo "round $round/$rounds (${order[*]})" >&2
    for route in "${order[@]}"; do measure_post "$route"; done
    for route in "${order[@]}"; do measure_upload "$route"; done
    for route in "${order[@]}"; do measure_get "$route"; done
done
# What the envelope route did, as kagi counts it (bodies, bytes, failures, data-key cache).
metrics=$(curl -sS "http://$admin/metrics" | grep '^kagi_envelope_' || true)
stop "$kagi_pid"

# (3) peak resident memory during a 1 GiB upload, a fresh kagi serve per route.
rm -f "$work/64m.bin"
for i in 1 2 3 4; do cat "$work/256m.bin"; done > "$work/1g.bin"
gib=$((4 * big))
expect[enc]=$(ciphertext_len "$header_len" "$gib")
expect[plain]=$gib
echo "peak memory, 1 GiB uploads" >&2
for route in plain enc; do
    start_kagi "mem-$route"
    hwm0=$(status_kib "$kagi_pid" VmHWM)
    rss0=$(status_kib "$kagi_pid" VmRSS)
    python3 - "$kagi_pid" "$work/rss-$route.txt" <<'PY' &
import sys, time
pid, out = sys.argv[1], sys.argv[2]
with open(out, "w") as f:
    while True:
        try:
            status = open(f"/proc/{pid}/status").read()
        except OSError:
            break
        rss = next(l.split()[1] for l in status.splitlines() if l.startswith("VmRSS:"))
        f.write(rss + "\n")
        f.flush()
        time.sleep(0.02)
PY
    sampler=$!
    pids+=("$sampler")
    t=$(curl -sS --fail -H 'Expect:' -T "$work/1g.bin" -o "$work/upload.json" -w '%{time_total}' \
        "http://${addr[$route]}/echo")
    python3 -c 'import json,sys; n=json.load(open(sys.argv[1]))["body_bytes"]; assert n==int(sys.argv[2]), n' \
        "$work/upload.json" "${expect[$route]}"
    hwm1=$(status_kib "$kagi_pid" VmHWM)
    rss1=$(status_kib "$kagi_pid" VmRSS)
    stop "$sampler"
    python3 - "$route" "$work/rss-$route.txt" "$hwm0" "$rss0" "$hwm1" "$rss1" "$t" "$gib" <<'PY' >> "$raw"
import statistics, sys
route, samples = sys.argv[1], [int(l) for l in open(sys.argv[2]) if l.strip()]
hwm0, rss0, hwm1, rss1 = (int(v) for v in sys.argv[3:7])
t, size = float(sys.argv[7]), int(sys.argv[8])
mib = lambda kib: f"{kib / 1024:.1f}"
print(f"mem {route} hwm_ready_mib={mib(hwm0)} rss_ready_mib={mib(rss0)} hwm_after_mib={mib(hwm1)} "
      f"rss_after_mib={mib(rss1)} rss_max_sampled_mib={mib(max(samples))} "
      f"rss_median_sampled_mib={mib(statistics.median(samples))} samples={len(samples)} "
      f"mb_per_s={size / t / 1e6:.0f}")
PY
    stop "$kagi_pid"
done
rm -f "$work/1g.bin"
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

versions=$(
    echo "kagi $(git rev-parse --short HEAD) (release build), src/ as of main $(git merge-base HEAD main 2>/dev/null | cut -c1-7)"
    wrk -v 2>&1 | head -1 | cut -d' ' -f1-2
    curl --version | head -1 | cut -d' ' -f1-2,5
)

out=bench/results/envelope_vs_passthrough.md
mkdir -p bench/results
python3 - "$raw" "$seconds" "$rounds" "$connections" "$uploads" "$gets" \
    "$load_before" "$load_after" "$versions" "$header_len" "$metrics" <<'PY' | tee "$out"
import collections, datetime, os, re, statistics, sys
raw, seconds, rounds, conns, uploads, gets, load0, load1, versions, header_len, metrics = sys.argv[1:]
runs = collections.defaultdict(list)
lines = open(raw).read().splitlines()
for line in lines:
    kind, route, *pairs = line.split()
    runs[(kind, route)].append(dict(p.split("=", 1) for p in pairs))
def med(kind, route, key):
    return statistics.median(float(r[key]) for r in runs[(kind, route)])
# (label, kind, key, format, goal on enc/plain)
rows = [
    ("(1) 1 KiB POST, keep-alive, requests/s", "post", "rps", "{:.0f}", ">=0.9"),
    ("(1) p50 latency, ms", "post", "p50_ms", "{:.2f}", None),
    ("(1) p99 latency, ms", "post", "p99_ms", "{:.2f}", "<=1.11"),
    ("(1) kagi CPU µs per request", "post", "cpu_us_per_req", "{:.1f}", None),
    ("(2) 256 MiB upload, MB/s", "up", "mb_per_s", "{:.0f}", ">=0.7"),
    ("(2) kagi CPU ms per 256 MiB upload", "up", "cpu_ms_per_upload", "{:.0f}", None),
    ("(4) GET of a stored 64 MiB object, MB/s", "get", "mb_per_s", "{:.0f}", None),
    ("(4) kagi CPU ms per 64 MiB GET", "get", "cpu_ms_per_get", "{:.0f}", None),
]
mem_rows = [
    ("(3) 1 GiB upload: kagi VmHWM (peak RSS) after, MiB", "hwm_after_mib", "<64"),
    ("(3) VmHWM when ready, before the upload, MiB", "hwm_ready_mib", None),
    ("(3) VmRSS sampled every 20 ms during the upload: max, MiB", "rss_max_sampled_mib", None),
    ("(3) VmRSS sampled: median, MiB", "rss_median_sampled_mib", None),
    ("(3) VmRSS after the upload, MiB", "rss_after_mib", None),
    ("(3) 1 GiB upload, MB/s (one upload)", "mb_per_s", None),
]
print(f"# Envelope route vs passthrough — {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
print()
print(f"`bench/envelope_vs_passthrough.sh {seconds} {rounds} {conns}` on {os.cpu_count()} cores "
      f"shared by client, proxy and backend; load average before {load0}, after {load1}. "
      f"Plain HTTP listeners, one kagi, one backend. Median of {rounds} rounds: {seconds} s of "
      f"wrk on {conns} keep-alive connections, {uploads} uploads and {gets} GETs per round. "
      f"(3) is one upload per route, each in a fresh kagi process.")
print()
print("| metric | enc | plain | enc/plain | rounds' enc/plain | goal |")
print("|---|---:|---:|---:|---:|---|")
def verdict(goal, value):
    if goal is None:
        return ""
    if goal.startswith(">="):
        return ("met" if value >= float(goal[2:]) else "not met") + f" (≥ {goal[2:]})"
    if goal.startswith("<="):
        return ("met" if value <= float(goal[2:]) else "not met") + f" (≤ {goal[2:]}: plain/enc ≥ 0.9)"
    if goal.startswith("<"):
        return ("met" if value < float(goal[1:]) else "not met") + f" (enc < {goal[1:]} MiB)"
for label, kind, key, fmt, goal in rows:
    e, p = med(kind, "enc", key), med(kind, "plain", key)
    ratio = e / p if p else float("nan")
    # Each round measured enc and plain back to back: the spread of their ratios.
    pairs = sorted(float(a[key]) / float(b[key])
                   for a, b in zip(runs[(kind, "enc")], runs[(kind, "plain")]) if float(b[key]))
    spread = f"{pairs[0]:.2f}–{pairs[-1]:.2f}" if pairs else ""
    print(f"| {label} | {fmt.format(e)} | {fmt.format(p)} | {ratio:.2f} | {spread} | {verdict(goal, ratio)} |")
for label, key, goal in mem_rows:
    e, p = med("mem", "enc", key), med("mem", "plain", key)
    ratio = e / p if p else float("nan")
    print(f"| {label} | {e:.1f} | {p:.1f} | {ratio:.2f} | (one run) | {verdict(goal, e)} |")
errors = [l for l in lines if re.search(r"errors=([1-9]\d*)", l)]
print()
print("Errors: " + ("; ".join(errors) if errors else
      "none (every wrk request answered 2xx; every upload's length counted by the backend as "
      "expected; every GET the stored length)."))
print()
print(f"enc's messages: suite 0478, 64 KiB frames, a {header_len}-byte header (with its tag); "
      "the backend counts ciphertext bytes on enc, so (2) and (3) MB/s are of plaintext.")
print()
print("kagi's envelope metrics at the end of (1), (2) and (4) (`kagi_envelope_*` of /metrics):")
print()
print("```")
print(metrics or "(none)")
print("```")
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
