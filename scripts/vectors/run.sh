#!/usr/bin/env bash
# Regenerates fixtures/vectors/*.json with the providers' own SDKs (pinned versions).
# Needs python3 and node with npm; reaches PyPI and the npm registry on first run.
#   scripts/vectors/run.sh             # every provider
#   scripts/vectors/run.sh stripe      # some
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q -r requirements.txt
fi
if [ ! -d node_modules ]; then
  npm install --no-audit --no-fund --silent
fi
.venv/bin/python generate.py "$@"
