#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv with vit-deploy installed
# editable, plus the test extras. Re-runs pip only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    if ! "$PYTHON" -m venv .venv; then
        echo "setup: could not create a virtual environment; on Debian: apt-get install python3-venv" >&2
        exit 1
    fi
fi
stamp=.venv/.vit-deploy-setup
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e '.[test]'
    echo "$want" > "$stamp"
fi
