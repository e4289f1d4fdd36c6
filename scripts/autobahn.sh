#!/usr/bin/env bash
# Runs the Autobahn TestSuite (RFC 6455 conformance) against wshub's /ws/echo endpoint.
#
#   scripts/autobahn.sh [--quick] [OUTDIR]
#
# Needs an Autobahn TestSuite checkout: AUTOBAHN_DIR (default: the CI workspace's copy); installs the suite with its
# install.sh when missing. Starts a release build of wshub on a free port, runs the suite,
# prints the summary and exits 1 if any case FAILED or is UNIMPLEMENTED (permessage-deflate,
# sections 12 and 13, is part of conformance), 2 on a usage or run error, 3 when the suite could
# not be installed.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=()
if [[ "${1:-}" == "--quick" ]]; then quick=(--quick); shift; fi
out="${1:-target/autobahn}"
ab="${AUTOBAHN_DIR:-../shared/autobahn}"
if [[ ! -x "$ab/run.sh" && ! -f "$ab/run.sh" ]]; then
  echo "autobahn: $ab/run.sh not found; set AUTOBAHN_DIR" >&2
  exit 2
fi
if [[ ! -x /opt/autobahn/venv/bin/wstest ]]; then
  if ! bash "$ab/install.sh"; then
    echo "autobahn: installing the suite failed" >&2
    exit 3
  fi
fi

cargo build --release --quiet
source scripts/lib.sh
start_wshub ./target/release/wshub "$out.server.log" --echo-max-message-size 16MiB
rm -rf "$out"
bash "$ab/run.sh" "${quick[@]}" "ws://127.0.0.1:$port/ws/echo" "$out"
unimplemented=$(awk '$1 == "UNIMPLEMENTED" { print $2 }' "$out/summary.txt")
if [[ "${unimplemented:-0}" != 0 ]]; then
  echo "autobahn: $unimplemented cases UNIMPLEMENTED (permessage-deflate must be negotiated)" >&2
  exit 1
fi
