#!/usr/bin/env bash
# Creates (or reuses) the virtualenv of the end-to-end API tests: tests/py/venv.sh DIR.
#
# Installs tests/py/requirements.txt into DIR with pip, and writes the file's SHA-256 to
# DIR/.requirements.sha256; a later run whose stamp matches does nothing. Both `.ci/run` (its own
# stage, so the time shows) and the Rust harness (tests/it/support/python.rs, once per test
# process) call this script, so they agree on what "installed" means. Needs python3 with venv
# and access to PyPI.
set -euo pipefail

venv=${1:?usage: tests/py/venv.sh VENV_DIR}
here=$(cd "$(dirname "$0")" && pwd)
requirements="$here/requirements.txt"
python=${KAGI_TEST_PYTHON:-python3}

mkdir -p "$(dirname "$venv")"
# Two processes sharing a target directory (CI and a developer's cargo test) take turns.
if command -v flock >/dev/null 2>&1; then
    exec 9>"$venv.lock"
    flock 9
fi

want=$(sha256sum "$requirements" | cut -d' ' -f1)
stamp="$venv/.requirements.sha256"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi

echo "creating the test virtualenv $venv from $requirements" >&2
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    --requirement "$requirements"
echo "$want" >"$stamp"
