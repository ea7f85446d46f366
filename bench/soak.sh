#!/usr/bin/env bash
# Soak: one `kagi serve` under mixed, steady, modest traffic for a long time; throughput, p99
# latency, errors and kagi's memory recorded slice by slice, to show nothing grows and nothing
# fails.
#
#   bench/soak.sh [MINUTES] [INTERVAL_SECONDS]
#
# MINUTES of load (10) in slices of INTERVAL_SECONDS (30). kagi serves the KMS API (HTTPS) and
# one TLS proxy listener with two routes to one `kagi sample-backend`:
#   enc:   path prefix /objects/enc-, an envelope route (key alias/soak, context tenant=soak;
#          the route acts as principal route-enc, which the key's policy allows GenerateDataKey
#          and Decrypt): bodies are stored encrypted and decrypted on the way back;
#   plain: everything else, passthrough.
# In every slice three loads run at once, each for the whole slice:
#   kms:   examples/kms_load.rs, SigV4 over HTTPS, KMS_CONNECTIONS keep-alive connections,
#          Encrypt in odd slices and GenerateDataKey in even ones (each run creates its key, so
#          the keystore gains one key a slice);
#   enc, plain: wrk -t 1 with bench/soak.lua over CONNECTIONS keep-alive connections: one PUT
#          for two GETs of NAMES small objects (200 B to 4 KiB), every GET's body checked
#          against what was PUT (through enc: the plaintext, decrypted by kagi), each
#          connection pausing DELAY_MS before each request.
# After each slice one row: elapsed time, load average, requests/s and p99 of each load, their
# errors (kms: error answers and reconnects; wrk: socket errors, non-2xx answers and GETs that
# did not give the stored bytes back), WARN/ERROR lines kagi logged, kagi's VmRSS (at the end
# of the slice, and sampled at its middle under load), VmHWM, open fds, threads, CPU, and the
# data directory's size (the audit trail grows with every KMS call).
# Rows go to bench/results/soak.csv, the summary and the table to bench/results/soak.md: RSS at
# the end of the first slice (the start of the second, after warm-up) against the end of the
# last, the errors, and each load's throughput in its first and last slice.
# Exits 1 if there was any error or RSS grew by more than MAX_GROWTH_PCT.
#
# Settings from the environment (defaults): SOAK_CONNECTIONS (4 per proxy route),
# SOAK_KMS_CONNECTIONS (2), SOAK_DELAY_MS (1), SOAK_NAMES (32 objects per route),
# SOAK_MAX_GROWTH_PCT (20), SOAK_NICE (10: every process started here runs at this niceness,
# so that other work on a shared machine goes first).
# Everything runs on loopback, in a temporary directory, on free ports; processes started here
# are killed on exit. Installs wrk from Debian when missing (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-10}
interval=${2:-30}
connections=${SOAK_CONNECTIONS:-4}
kms_connections=${SOAK_KMS_CONNECTIONS:-2}
delay_ms=${SOAK_DELAY_MS:-1}
names=${SOAK_NAMES:-32}
max_growth=${SOAK_MAX_GROWTH_PCT:-20}
niceness=${SOAK_NICE:-10}
[ "$interval" -ge 5 ] || { echo "INTERVAL_SECONDS: at least 5" >&2; exit 2; }
slices=$(( (minutes * 60 + interval - 1) / interval ))
[ "$slices" -ge 2 ] || { echo "at least two slices: MINUTES * 60 >= 2 * INTERVAL_SECONDS" >&2; exit 2; }
. bench/lib.sh
install_missing wrk:wrk curl:curl
cargo build --release --quiet --bin kagi --example kms_load
ulimit -n 65536 2>/dev/null || true
kms_load=$target_dir/release/examples/kms_load
nice=(nice -n "$niceness") # exec's the command: $! is the command's own PID

# --- the upstream -------------------------------------------------------------------------
"${nice[@]}" "$kagi" sample-backend --listen 127.0.0.1:0 --ready-file "$work/backend.addr" 2>"$work/backend.log" &
backend_pid=$!
pids+=("$backend_pid")
wait_for "$work/backend.addr" "$backend_pid"
backend=$(cat "$work/backend.addr")

# --- the data directory: the proxy's certificate, and the envelope key with its policy -----
data=$work/kagi-data
"$kagi" --data-dir "$data" init >/dev/null
"$kagi" --data-dir "$data" certs ca create --name soak-ca --key-spec ECC_NIST_P256 >/dev/null
"$kagi" --data-dir "$data" certs issue --name soak --dns localhost --ip 127.0.0.1 \
    --ca soak-ca --key-spec ECC_NIST_P256 >/dev/null
proxy_ca=$data/certs/soak-ca.pem
access_key=AKIAKAGISOAK00000000
secret=soak-secret-0123456789
envelope_key "$data" soak alias/soak soak

# --- kagi: the KMS API, the admin listener, one TLS proxy listener with two routes ----------
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
name = "soak"
listen = "127.0.0.1:0"
certificates = ["soak"]
[[upstreams]]
name = "backend"
targets = ["$backend"]
[[routes]]
name = "enc"
path_prefix = "/objects/enc-"
upstream = "backend"
[routes.envelope]
key = "alias/soak"
[[routes.envelope.context]]
key = "tenant"
value = "soak"
[[routes]]
name = "plain"
upstream = "backend"
TOML
"${nice[@]}" "$kagi" serve --config "$work/kagi.toml" --ready-file "$work/kagi.ready" 2>"$work/kagi.log" &
kagi_pid=$!
pids+=("$kagi_pid")
wait_for "$work/kagi.ready" "$kagi_pid"
api=$(ready_field "$work/kagi.ready" 'j["api"]')
api_ca=$(ready_field "$work/kagi.ready" 'j["ca_bundle"]')
admin=$(ready_field "$work/kagi.ready" 'j["admin"]')
proxy=$(ready_field "$work/kagi.ready" 'j["listeners"]["soak"]')
log_lines_at_start=$(wc -l < "$work/kagi.log")

# --- the objects, PUT once through each route; enc's are checked to be stored encrypted -----
body_of() { # PREFIX N: the body bench/soak.lua expects of object PREFIX+N
    python3 -c 'import sys; p, n = sys.argv[1], int(sys.argv[2]); h = f"{p}{n}:"
sys.stdout.write(h + chr(ord("a") + n % 26) * (200 + n * 131 % 3900 - len(h)))' "$1" "$2"
}
for route in enc plain; do
    for n in $(seq 0 $((names - 1))); do
        body_of "$route-" "$n" > "$work/object"
        curl -sS --fail --cacert "$proxy_ca" -H 'Expect:' -T "$work/object" \
            "https://$proxy/objects/$route-$n" >/dev/null
    done
done
curl -sS --fail "http://$backend/objects/enc-0" -o "$work/stored"
python3 - "$work/stored" "$work/object" <<'PY'
import sys
stored = open(sys.argv[1], "rb").read()
assert stored[:3] == b"\x02\x04\x78", f"enc: not a 0478 message: {stored[:3].hex()}"
assert b"enc-0:" not in stored, "enc: plaintext in the stored message"
PY
body_of enc- 0 > "$work/object"
curl -sS --fail --cacert "$proxy_ca" "https://$proxy/objects/enc-0" -o "$work/got"
cmp -s "$work/got" "$work/object" || { echo "enc: GET did not give the plaintext back" >&2; exit 1; }

# --- the slices ---------------------------------------------------------------------------
hz=$(getconf CLK_TCK)
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$kagi_pid/stat"; }
status_kib() { awk -v f="$1:" '$1 == f { print $2 }' "/proc/$kagi_pid/status"; } # FIELD
mkdir -p bench/results
csv=bench/results/soak.csv
raw=$work/raw.txt
: > "$raw"
echo "slice,elapsed_s,load1,kms_operation,kms_rps,kms_p99_ms,kms_errors,enc_rps,enc_p99_ms,enc_errors,plain_rps,plain_p99_ms,plain_errors,kagi_warnings,rss_mib,rss_under_load_mib,hwm_mib,fds,threads,kagi_cpu_pct,data_mib" > "$csv"
export AWS_ACCESS_KEY_ID=$access_key AWS_SECRET_ACCESS_KEY=$secret
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
rss_ready=$(status_kib VmRSS)
started=$(date +%s.%N)
echo "soak: $slices slices of ${interval}s; rows in $csv" >&2
for slice in $(seq "$slices"); do
    if [ $((slice % 2)) = 1 ]; then operation=Encrypt; else operation=GenerateDataKey; fi
    ticks0=$(cpu_ticks)
    t0=$(date +%s.%N)
    # kms_load measures for --seconds after a one-second warm-up.
    "${nice[@]}" "$kms_load" --endpoint "https://$api" --ca-bundle "$api_ca" --operation "$operation" \
        --connections "$kms_connections" --seconds $((interval - 1)) > "$work/kms.out" 2>"$work/kms.err" &
    load_pids=($!)
    for route in enc plain; do
        "${nice[@]}" wrk -t 1 -c "$connections" -d "${interval}s" --latency -s bench/soak.lua \
            "https://$proxy/" -- "$route-" "$names" "$delay_ms" > "$work/$route.out" 2>&1 &
        load_pids+=($!)
    done
    pids+=("${load_pids[@]}")
    sleep $((interval / 2))
    rss_load=$(status_kib VmRSS)
    failed=()
    for pid in "${load_pids[@]}"; do
        wait "$pid" || failed+=("$pid")
        forget "$pid"
    done
    t1=$(date +%s.%N)
    ticks1=$(cpu_ticks)
    kill -0 "$kagi_pid" 2>/dev/null || { echo "kagi exited; its log:" >&2; tail -20 "$work/kagi.log" >&2; exit 1; }
    [ ${#failed[@]} = 0 ] || { echo "a load generator failed:" >&2; cat "$work"/kms.err "$work"/{enc,plain}.out >&2; exit 1; }
    warnings=$(tail -n +$((log_lines_at_start + 1)) "$work/kagi.log" | grep -cE '\b(WARN|ERROR)\b' || true)
    python3 - "$slice" "$started" "$t0" "$t1" "$operation" "$work/kms.out" "$work/enc.out" \
        "$work/plain.out" "$warnings" "$(status_kib VmRSS)" "$rss_load" "$(status_kib VmHWM)" \
        "$(ls "/proc/$kagi_pid/fd" | wc -l)" "$(status_kib Threads)" "$ticks0" "$ticks1" "$hz" \
        "$(du -sk "$data" | cut -f1)" "$(cut -d' ' -f1 /proc/loadavg)" "$raw" <<'PY' >> "$csv"
import json, re, sys
(slice, started, t0, t1, operation, kms_out, enc_out, plain_out, warnings, rss, rss_load, hwm,
 fds, threads, ticks0, ticks1, hz, data_kib, load1, raw) = sys.argv[1:]
kms = json.loads(open(kms_out).read().strip().splitlines()[-1])
def ms(text):
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]
def wrk(path):
    out = open(path).read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = ms(re.search(r"^\s+99%\s+(\S+)", out.split("Latency Distribution", 1)[1], re.M).group(1))
    socket = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    non2xx = int(m.group(1)) if m else 0
    soak = dict(p.split("=") for p in re.search(r"^soak (.*)$", out, re.M).group(1).split())
    return rps, p99, socket, non2xx, int(soak["bad"]), soak
enc, plain = wrk(enc_out), wrk(plain_out)
kib = lambda v: int(v) / 1024
cpu = (int(ticks1) - int(ticks0)) / int(hz) / (float(t1) - float(t0)) * 100
with open(raw, "a") as f:
    f.write(f"slice {slice}: kms {json.dumps(kms)}; enc socket={enc[2]} non2xx={enc[3]} "
            f"bad={enc[4]} {enc[5]}; plain socket={plain[2]} non2xx={plain[3]} bad={plain[4]} "
            f"{plain[5]}\n")
print(",".join(str(v) for v in [
    slice, f"{float(t1) - float(started):.0f}", load1, operation,
    f"{kms['requests_per_second']:.0f}", f"{kms['p99_ms']:.2f}", kms["errors"] + kms["reconnects"],
    f"{enc[0]:.0f}", f"{enc[1]:.2f}", sum(enc[2:5]),
    f"{plain[0]:.0f}", f"{plain[1]:.2f}", sum(plain[2:5]),
    warnings, f"{kib(rss):.1f}", f"{kib(rss_load):.1f}", f"{kib(hwm):.1f}", fds, threads,
    f"{cpu:.0f}", f"{int(data_kib) / 1024:.1f}"]))
PY
    tail -1 "$csv" >&2
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
metrics=$(curl -sS "http://$admin/metrics" |
    grep -E '^kagi_(envelope_|memory_locked|proxy_upstream_connections_opened_total|proxy_requests_total|api_requests_total)' || true)
tail -n +$((log_lines_at_start + 1)) "$work/kagi.log" | grep -E '\b(WARN|ERROR)\b' | head -20 > "$work/warnings.txt" || true
versions=$(
    echo "kagi $(git rev-parse --short HEAD) (release build)"
    { wrk -v 2>&1 || true; } | head -1 | cut -d' ' -f1-2
)

out=bench/results/soak.md
set +e
python3 - "$csv" "$raw" "$minutes" "$interval" "$connections" "$kms_connections" "$delay_ms" \
    "$names" "$max_growth" "$niceness" "$load_before" "$load_after" "$rss_ready" "$metrics" \
    "$work/warnings.txt" "$versions" <<'PY' > "$out"
import csv, datetime, os, sys
(path, raw, minutes, interval, conns, kms_conns, delay_ms, names, max_growth, niceness, load0,
 load1, rss_ready, metrics, warnings_file, versions) = sys.argv[1:]
rows = list(csv.DictReader(open(path)))
first, second, last = rows[0], rows[1], rows[-1]
rss0, rss1 = float(first["rss_mib"]), float(last["rss_mib"])
growth = rss1 - rss0
growth_pct = growth / rss0 * 100
errors = {k: sum(int(r[k]) for r in rows) for k in ("kms_errors", "enc_errors", "plain_errors", "kagi_warnings")}
errors["kagi_warnings"] = int(last["kagi_warnings"])  # cumulative already
failed = sum(errors.values()) > 0 or growth_pct > float(max_growth)
print(f"# Soak — {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
print()
print(f"`bench/soak.sh {minutes} {interval}` on {os.cpu_count()} cores shared by the load "
      f"generators, kagi, the backend and whatever else ran on the machine (load average before "
      f"{load0}, after {load1}). {len(rows)} slices of {interval} s. Loads, all at once: KMS API "
      f"(kms_load, {kms_conns} connections, Encrypt in odd slices, GenerateDataKey in even ones), "
      f"and through one TLS proxy listener an envelope route (enc) and a passthrough route "
      f"(plain), each `wrk -t 1 -c {conns}` with bench/soak.lua (one PUT for two GETs of {names} "
      f"objects of 200 B–4 KiB, every GET checked; {delay_ms} ms pause before each request). "
      f"Everything started at nice {niceness}.")
print()
print(f"**{'FAILED' if failed else 'PASSED'}**: RSS {rss0:.1f} MiB at the end of slice 1 "
      f"(after warm-up) → {rss1:.1f} MiB at the end of slice {last['slice']}: "
      f"{growth:+.1f} MiB ({growth_pct:+.1f} %, limit {max_growth} %); "
      f"errors: KMS {errors['kms_errors']}, enc {errors['enc_errors']}, plain "
      f"{errors['plain_errors']}, kagi WARN/ERROR log lines {errors['kagi_warnings']}. "
      f"RSS when ready, before any load: {float(rss_ready) / 1024:.1f} MiB; "
      f"VmHWM at the end {float(last['hwm_mib']):.1f} MiB.")
print()
def same_op(slice_rows, op):
    return [r for r in slice_rows if r["kms_operation"] == op]
print("| load | first slice req/s, p99 ms | last slice req/s, p99 ms | min–max req/s over slices | max p99 ms |")
print("|---|---:|---:|---:|---:|")
for label, key, sel in [("KMS Encrypt", "kms", same_op(rows, "Encrypt")),
                        ("KMS GenerateDataKey", "kms", same_op(rows, "GenerateDataKey")),
                        ("proxy enc (envelope)", "enc", rows), ("proxy plain", "plain", rows)]:
    if not sel:
        continue
    a, b = sel[0], sel[-1]
    rps = [float(r[f"{key}_rps"]) for r in sel]
    p99 = [float(r[f"{key}_p99_ms"]) for r in sel]
    print(f"| {label} | {float(a[f'{key}_rps']):,.0f}, {float(a[f'{key}_p99_ms']):.2f} "
          f"(slice {a['slice']}) | {float(b[f'{key}_rps']):,.0f}, {float(b[f'{key}_p99_ms']):.2f} "
          f"(slice {b['slice']}) | {min(rps):,.0f}–{max(rps):,.0f} | {max(p99):.2f} |")
print()
print("Every slice (`bench/results/soak.csv`; RSS, HWM and data in MiB, CPU in % of one core, "
      "errors per slice, kagi_warnings cumulative):")
print()
header = list(rows[0].keys())
print("| " + " | ".join(header) + " |")
print("|" + "---|" * len(header))
for r in rows:
    print("| " + " | ".join(r[h] for h in header) + " |")
print()
print("kagi's metrics at the end:")
print()
print("```")
print(metrics or "(none)")
print("```")
warnings = open(warnings_file).read().strip()
if warnings:
    print()
    print("kagi's WARN/ERROR lines (first 20):")
    print()
    print("```")
    print(warnings)
    print("```")
print()
print("Tools: " + "; ".join(versions.splitlines()) + ".")
print()
print("Per slice, as the load generators reported it:")
print()
print("```")
print(open(raw).read().rstrip())
print("```")
sys.exit(1 if failed else 0)
PY
status=$?
set -e
sed -n '1,/^Every slice/p' "$out" | head -n -1
echo "(rows in $csv, summary in $out)" >&2
exit $status
