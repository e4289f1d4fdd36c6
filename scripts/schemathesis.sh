#!/usr/bin/env bash
# Fuzzes the REST API against its own OpenAPI document with schemathesis (property-based:
# schema-valid requests must be accepted, schema-violating ones refused, no 5xx ever).
#
#   scripts/schemathesis.sh [MAX_EXAMPLES]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v schemathesis >/dev/null || pip install -q schemathesis
cargo build --quiet
source scripts/lib.sh
start_wshub ./target/debug/wshub target/schemathesis-server.log
schemathesis run "http://127.0.0.1:$port/openapi.json" --max-examples "${1:-100}"
