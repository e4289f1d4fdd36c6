#!/usr/bin/env bash
# The whole test suite, set-up included: Rust (unit, in-process, end-to-end over real sockets,
# real processes), the JavaScript client against a real server (node:test), the real Pusher
# libraries against a real server (node:test), and the demo page in a real headless Chromium
# (Playwright).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh

echo "== cargo test"
cargo test --workspace
cargo build --quiet --bin wshub
export WSHUB_BIN="$PWD/target/debug/wshub"

echo "== JavaScript client (clients/js, node:test against a real server)"
(cd clients/js && npm test --silent)

echo "== Pusher compatibility (tests/pusher: pusher-js and the pusher server SDK against a real server)"
(cd tests/pusher && npm test --silent)

echo "== Browser test (tests/browser, Playwright + headless Chromium)"
(cd tests/browser && npm test --silent)
