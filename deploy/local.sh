#!/usr/bin/env bash
# The main job on one machine with local defaults: builds both processes and runs
#   tandem-relay      with config/relay.toml      (STUN/TURN on 127.0.0.1:3478,
#                                                  control API on 127.0.0.1:9642)
#   tandem-signaling  with config/signaling.toml  (SIP on 127.0.0.1:5060 UDP+TCP,
#                                                  SIP over WebSocket on
#                                                  ws://127.0.0.1:5066,
#                                                  HTTP API on 127.0.0.1:8080,
#                                                  embedded SQLite under ./data)
# joined: signaling places each call's media session on the relay (its [[relays]]
# entry is added here) and mints TURN credentials the relay accepts. The two secrets
# they share are made on first start and kept in ./data (mode 0600).
# Ctrl-C (or SIGTERM) stops both gracefully. Extra arguments are ignored.
set -euo pipefail
cd "$(dirname "$0")/.."

# Only the two servers: the benchmark tool (bench/) is built by bench/compare.sh.
cargo build --release -p tandem-relay -p tandem-signaling --bins
mkdir -p data
umask 077
secret() { [ -s "$1" ] || head -c 32 /dev/urandom | base64 | tr -d '/+=\n' >"$1"; }
secret data/control-secret
secret data/turn-secret
umask 022
# Signaling's configuration: the example file plus the local relay.
{
  cat config/signaling.toml
  printf '\n# Added by deploy/local.sh: the relay started next to this process.\n'
  printf '[[relays]]\ncontrol_url = "http://127.0.0.1:9642"\n'
  printf 'secret_file = "data/control-secret"\npublic_address = "127.0.0.1"\n'
} >data/signaling.local.toml

pids=()
stopping=0
stop() {
  stopping=1
  trap - INT TERM EXIT
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait || true
}
trap stop INT TERM EXIT

TANDEM_STATIC_AUTH_SECRET="$(cat data/turn-secret)" ./target/release/tandem-relay \
  --config config/relay.toml --control-listen 127.0.0.1:9642 \
  --control-secret-file data/control-secret &
pids+=($!)
TANDEM_TURN_SECRET_FILE=data/turn-secret ./target/release/tandem-signaling \
  --config data/signaling.local.toml &
pids+=($!)

# If either process exits, stop the other and report its status.
set +e
wait -n "${pids[@]}"
status=$?
if [ "$stopping" -eq 0 ]; then
  echo "local: a process exited with status $status; stopping the other" >&2
fi
exit "$status"
