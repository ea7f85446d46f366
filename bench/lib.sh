# Shared by the bench scripts (sourced after `set -euo pipefail` and `cd` to the repository):
# a work directory and the PIDs to kill on exit, Debian packages installed when missing, the
# release build, and waiting for a ready file.

target_dir=${CARGO_TARGET_DIR:-target}
kagi=$target_dir/release/kagi
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

install_missing() { # COMMAND:PACKAGE…: apt-get installs the packages whose command is missing
    local need=() pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
    done
    [ ${#need[@]} -gt 0 ] || return 0
    if [ "$(id -u)" != 0 ]; then
        echo "missing ${need[*]}: run as root, or apt-get install -y ${need[*]}" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
}

build_kagi() {
    cargo build --release --quiet --bin kagi
    ulimit -n 65536 2>/dev/null || true
}

wait_for() { # FILE PID: until FILE is non-empty, or PID died
    local tries=0
    until [ -s "$1" ]; do
        kill -0 "$2" 2>/dev/null || { echo "process $2 exited before writing $1" >&2; exit 1; }
        tries=$((tries + 1))
        [ $tries -lt 600 ] || { echo "timed out waiting for $1" >&2; exit 1; }
        sleep 0.1
    done
}

stop() { # PID: kill it, wait for it to exit, forget it (so cleanup never kills a reused PID)
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    forget "$1"
}
forget() { # PID
    local kept=() pid
    for pid in "${pids[@]}"; do [ "$pid" = "$1" ] || kept+=("$pid"); done
    pids=("${kept[@]}")
}
ready_field() { # READY-FILE PYTHON-EXPRESSION-ON-j
    python3 -c "import json,sys; j=json.load(open(sys.argv[1])); print($2)" "$1"
}

# The key of an envelope route, made through the KMS API of a kagi serving nothing else on the
# (initialised) data directory DATA, stopped afterwards: a symmetric key aliased ALIAS whose
# policy lets the principal NAME ($access_key, $secret) do anything and the route `enc`
# (principal route-enc) GenerateDataKey and Decrypt. Sets $principals (the TOML table naming
# NAME, administrator) and $key_arn.
envelope_key() { # DATA NAME ALIAS DESCRIPTION
    local data=$1 name=$2 alias=$3 description=$4 api_pid api api_ca policy created
    principals=$(cat <<TOML
[[principals]]
name = "$name"
access_key_id = "$access_key"
secret = "$secret"
administrator = true
TOML
)
    cat > "$work/api.toml" <<TOML
[keystore]
data_dir = "$data"
[api]
listen = "127.0.0.1:0"
$principals
TOML
    "$kagi" serve --config "$work/api.toml" --ready-file "$work/api.ready" 2>"$work/api.log" &
    api_pid=$!
    pids+=("$api_pid")
    wait_for "$work/api.ready" "$api_pid"
    api=$(ready_field "$work/api.ready" 'j["api"]')
    api_ca=$(ready_field "$work/api.ready" 'j["ca_bundle"]')
    kms() { # OPERATION JSON
        curl -sS --fail-with-body --cacert "$api_ca" --aws-sigv4 "aws:amz:us-east-1:kms" \
            --user "$access_key:$secret" -H 'Content-Type: application/x-amz-json-1.1' \
            -H "X-Amz-Target: TrentService.$1" --data-binary "$2" "https://$api/"
    }
    policy=$(python3 -c 'import json,sys; a="arn:aws:iam::111122223333:user/"; print(json.dumps({
        "Version": "2012-10-17", "Statement": [
            {"Sid": "admin", "Effect": "Allow", "Action": "kms:*", "Resource": "*",
             "Principal": {"AWS": a + sys.argv[1]}},
            {"Sid": "route", "Effect": "Allow", "Resource": "*",
             "Action": ["kms:GenerateDataKey", "kms:Decrypt"],
             "Principal": {"AWS": a + "route-enc"}}]}))' "$name")
    created=$(kms CreateKey "$(python3 -c 'import json,sys; print(json.dumps({"Policy": sys.argv[1], "Description": sys.argv[2]}))' "$policy" "$description")")
    key_arn=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["KeyMetadata"]["Arn"])' "$created")
    kms CreateAlias "{\"AliasName\": \"$alias\", \"TargetKeyId\": \"$key_arn\"}" >/dev/null
    stop "$api_pid"
}
