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
