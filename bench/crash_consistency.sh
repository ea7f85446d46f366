#!/usr/bin/env bash
# Crash consistency of `kagi serve` under SIGKILL, and its behaviour on a full disk.
#
#   bench/crash_consistency.sh [ITERATIONS] [WORKERS]
#
# ITERATIONS (50) rounds, each: WORKERS (4) boto3 threads drive a mixed KMS workload (create,
# encrypt, decrypt, rotate, disable/enable, schedule/cancel deletion, BYOK import) against a
# release `kagi serve`, logging every acknowledged operation; the server is SIGKILLed after a
# random 0.2–2 s; `kagi audit verify` must pass and hold a line for every acknowledged request;
# after a restart every acknowledged key must be in its acknowledged state and every
# acknowledged ciphertext must decrypt. bench/crash_consistency.py says exactly what is checked.
#
# Then the full-disk check, on a 16 MiB tmpfs (`mount -t tmpfs`, as root), or a loop-mounted
# ext4 image when tmpfs cannot be mounted, or skipped with a message when neither can (not
# root): fill it, operations must fail with a KMS error and no crash, free it, service resumes
# with every earlier key and ciphertext intact. FULL_DISK=0 skips it; SEED=N replays a run's
# random choices (the workload's timing still varies).
#
# Uses the test virtualenv of tests/py (boto3, cryptography), made by tests/py/venv.sh.
# Everything runs on loopback in a temporary directory; only processes started here are
# signalled. Exits 1 when a check failed, after printing every failure and the figures.
set -euo pipefail
cd "$(dirname "$0")/.."
iterations=${1:-50}
workers=${2:-4}
. bench/lib.sh
build_kagi
venv=$target_dir/py-venv
bash tests/py/venv.sh "$venv"

mount_point=""
unmount() {
    if [ -n "$mount_point" ] && mountpoint -q "$mount_point"; then
        umount "$mount_point" || umount -l "$mount_point" || true
    fi
    cleanup
}
trap unmount EXIT

full_disk_args=()
if [ "${FULL_DISK:-1}" != 0 ]; then
    mount_point=$work/small-fs
    mkdir -p "$mount_point"
    if mount -t tmpfs -o size=16m kagi-crash "$mount_point" 2>/dev/null; then
        echo "full disk: a 16 MiB tmpfs at $mount_point"
        full_disk_args=(--full-disk "$mount_point")
    elif truncate -s 16M "$work/small-fs.img" && mkfs.ext4 -q "$work/small-fs.img" \
        && mount -o loop "$work/small-fs.img" "$mount_point" 2>/dev/null; then
        echo "full disk: a 16 MiB loop-mounted ext4 at $mount_point"
        full_disk_args=(--full-disk "$mount_point")
    else
        echo "full disk: skipped (cannot mount a small file system here; run as root)"
        mount_point=""
    fi
fi

seed_args=()
[ -z "${SEED:-}" ] || seed_args=(--seed "$SEED")
"$venv/bin/python" bench/crash_consistency.py --kagi "$kagi" --work "$work" \
    --iterations "$iterations" --workers "$workers" "${seed_args[@]}" "${full_disk_args[@]}"
