#!/usr/bin/env bash
# Creates .venv with the pinned environment and clipflow installed in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -r requirements.lock -r requirements-test.lock
.venv/bin/pip install --quiet --disable-pip-version-check --no-deps -e .
.venv/bin/pip install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.lock
