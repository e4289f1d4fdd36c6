# Sourced by the scripts here: start a wshub server on a free loopback port and stop it on exit.
#   start_wshub BINARY LOGFILE [serve options...]   sets $port and $pid
start_wshub() {
  local bin=$1 log=$2
  shift 2
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$bin" serve --listen "127.0.0.1:$port" "$@" >"$log" 2>&1 &
  pid=$!
  trap 'kill $pid 2>/dev/null || true' EXIT
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "wshub did not start; see $log" >&2
  return 1
}
