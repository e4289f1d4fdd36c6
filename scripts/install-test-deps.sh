#!/usr/bin/env bash
# Installs what the test suite needs when it is missing: system packages with apt-get (a C
# compiler, OpenSSL, Node.js, Debian's Chromium for the browser test, redis-server and nats-server
# for the cluster tests, which start their own on free ports), the npm packages of the browser
# and Pusher tests (from their lock files; nothing downloads a browser) and Pusher's Python SDK.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v python3 >/dev/null || need_apt+=(python3)
# `python3 -m venv` needs ensurepip (Debian's python3-venv) for the Python SDK test.
[[ -x target/pyenv/bin/python ]] || python3 -c "import ensurepip, venv" 2>/dev/null || need_apt+=(python3-venv)
command -v cc >/dev/null || need_apt+=(gcc)
# The server's allocator (jemalloc) is built from C sources with make.
command -v make >/dev/null || need_apt+=(make)
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

if [[ ! -d tests/browser/node_modules/playwright-core || ! -d tests/browser/node_modules/eventsource ]]; then
  echo "== npm ci (tests/browser)"
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
fi

# pusher-js, laravel-echo, the `pusher` server SDK and playwright-core, from their lock file:
# the Pusher compatibility tests run the real libraries (Echo in Debian's Chromium).
if [[ ! -d tests/pusher/node_modules/pusher-js || ! -d tests/pusher/node_modules/laravel-echo || ! -d tests/pusher/node_modules/playwright-core ]]; then
  echo "== npm ci (tests/pusher)"
  (cd tests/pusher && npm ci --no-audit --no-fund --loglevel=error)
fi

# Pusher's Python server SDK, pinned, in a virtual environment of its own (target/pyenv).
if [[ ! -x target/pyenv/bin/python ]] || ! target/pyenv/bin/python -c "import pusher" 2>/dev/null; then
  echo "== pip install -r tests/pusher/requirements.txt (target/pyenv)"
  mkdir -p target
  rm -rf target/pyenv
  python3 -m venv target/pyenv
  target/pyenv/bin/pip install --quiet --disable-pip-version-check -r tests/pusher/requirements.txt
fi
