#!/usr/bin/env bash
# Installs what the test suite needs when it is missing: system packages with apt-get (a C
# compiler, OpenSSL, Node.js, Debian's Chromium for the browser test, redis-server and nats-server
# for the cluster tests, which start their own on free ports) and the browser test's
# npm packages (playwright-core, from its lock file; it never downloads a browser).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v python3 >/dev/null || need_apt+=(python3)
command -v cc >/dev/null || need_apt+=(gcc)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
[[ -x /usr/bin/chromium ]] || need_apt+=(chromium)
[[ -x /usr/bin/redis-server ]] || command -v redis-server >/dev/null || need_apt+=(redis-server)
[[ -x /usr/sbin/nats-server ]] || command -v nats-server >/dev/null || need_apt+=(nats-server)
if ((${#need_apt[@]})); then
  echo "== apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  as_root=()
  if [[ $(id -u) != 0 ]]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
      as_root=(sudo -n -E)
    else
      echo "install-test-deps: missing ${need_apt[*]}, and installing needs root:" >&2
      echo "  sudo apt-get install ${need_apt[*]}" >&2
      exit 1
    fi
  fi
  # Two commands, not `a && b`: under `set -e` a failure on the left of && would not stop us.
  "${as_root[@]}" apt-get update -qq
  "${as_root[@]}" apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [[ ! -d tests/browser/node_modules/playwright-core ]]; then
  echo "== npm ci (tests/browser)"
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
fi

# pusher-js, laravel-echo, the `pusher` server SDK and playwright-core, from their lock file:
# the Pusher compatibility tests run the real libraries (Echo in Debian's Chromium).
if [[ ! -d tests/pusher/node_modules/pusher-js || ! -d tests/pusher/node_modules/laravel-echo || ! -d tests/pusher/node_modules/playwright-core ]]; then
  echo "== npm ci (tests/pusher)"
  (cd tests/pusher && npm ci --no-audit --no-fund --loglevel=error)
fi
