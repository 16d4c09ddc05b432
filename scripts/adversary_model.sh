#!/usr/bin/env bash
# The adversarial model test (tests/adversary_model.rs) at scale: N random cases (default
# 2000) of authentic messages and an attacker's variants against the release binary.
#   scripts/adversary_model.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
HOOKGUARD_MODEL_CASES="${1:-2000}" cargo test --release --test adversary_model -- --nocapture
