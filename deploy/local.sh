#!/usr/bin/env bash
# The main job on one machine with local defaults: builds both processes and runs
#   tandem-relay      with config/relay.toml      (STUN/TURN on 127.0.0.1:3478)
#   tandem-signaling  with config/signaling.toml  (SIP on 127.0.0.1:5060 UDP+TCP,
#                                                  HTTP API on 127.0.0.1:8080,
#                                                  embedded SQLite under ./data)
# Ctrl-C (or SIGTERM) stops both gracefully. Extra arguments are ignored.
set -euo pipefail
cd "$(dirname "$0")/.."

# Only the two servers: the benchmark tool (bench/) is built by bench/compare.sh.
cargo build --release -p tandem-relay -p tandem-signaling --bins
mkdir -p data

pids=()
stopping=0
stop() {
  stopping=1
  trap - INT TERM EXIT
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait || true
}
trap stop INT TERM EXIT

./target/release/tandem-relay --config config/relay.toml &
pids+=($!)
./target/release/tandem-signaling --config config/signaling.toml &
pids+=($!)

# If either process exits, stop the other and report its status.
set +e
wait -n "${pids[@]}"
status=$?
if [ "$stopping" -eq 0 ]; then
  echo "local: a process exited with status $status; stopping the other" >&2
fi
exit "$status"
