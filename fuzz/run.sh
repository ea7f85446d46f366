#!/usr/bin/env bash
# Runs every fuzz target (or those named) for SECONDS each and prints, per target, the
# executions and the crashes found:
#
#   fuzz/run.sh [SECONDS] [TARGET…]        (SECONDS: 60)
#
# Stable toolchain, no sanitizer (`-s none`): kagi has no unsafe code, and the sanitizers need
# nightly flags. libFuzzer still finds panics, overflows (debug assertions are on), aborts,
# timeouts and out-of-memory. The build goes to $CARGO_TARGET_DIR/fuzz (default target/fuzz).
# Inputs found go to that directory's corpus/TARGET, which grows from run to run; the seed
# corpora in fuzz/corpus are read, never written. Crashing inputs are written to
# fuzz/artifacts/TARGET/ (git-ignored); `cargo fuzz run -s none TARGET FILE` replays one.
# Installs cargo-fuzz when it is missing. Exits 1 when a target crashed.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(envelope_decrypt kms_blob sigv4 kms_request config policy)

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --quiet
fi
target_dir=${CARGO_TARGET_DIR:-$(cd .. && pwd)/target}/fuzz
fuzz() { cargo fuzz "$1" -s none --target-dir "$target_dir" "${@:2}"; }
fuzz build

crashed=0
printf '%-18s %12s %10s %8s  %s\n' target executions exec/s crashes "new artifacts"
for target in "${targets[@]}"; do
    corpus=$target_dir/corpus/$target
    artifacts=artifacts/$target
    mkdir -p "$corpus" "$artifacts"
    before=$(ls "$artifacts" | wc -l)
    log=$target_dir/$target.log
    status=0
    fuzz run "$target" "$corpus" "corpus/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 -artifact_prefix="$artifacts/" \
        >"$log" 2>&1 || status=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    new=$(($(ls "$artifacts" | wc -l) - before))
    crashes=$new
    if [ "$status" -ne 0 ] && [ "$crashes" -eq 0 ]; then
        crashes=1 # died without writing an artifact (build or harness failure): see the log
    fi
    names=$(ls -t "$artifacts" | head -n "$new" | tr '\n' ' ')
    printf '%-18s %12s %10s %8s  %s\n' "$target" "${runs:-?}" "${rate:-?}" "$crashes" "$names"
    if [ "$crashes" -ne 0 ]; then
        crashed=1
        echo "--- $target: the end of $log" >&2
        tail -n 40 "$log" >&2
    fi
done
exit "$crashed"
