#!/usr/bin/env bash
# The main job on one machine with local defaults: builds both processes and runs
#   tandem-relay      with config/relay.toml      (STUN/TURN on 127.0.0.1:3478,
#                                                  control API on 127.0.0.1:9642,
#                                                  metrics and health on 127.0.0.1:9641)
#   tandem-signaling  with config/signaling.toml  (SIP on 127.0.0.1:5060 UDP+TCP,
#                                                  SIP over WebSocket on
#                                                  ws://127.0.0.1:5066,
#                                                  HTTP API on 127.0.0.1:8080,
#                                                  embedded SQLite under ./data)
# joined: signaling places each call's media session on the relay (its [[relays]]
# entry is added here) and mints TURN credentials the relay accepts. The two secrets
# they share are made on first start and kept in ./data (mode 0600).
#
# When both answer their health checks it prints one block with every address, the
# admin token's path and what to run next (bash deploy/demo.sh). Each log line is
# prefixed with its process. Ctrl-C (or SIGTERM) stops both gracefully.
#
# Environment: TANDEM_LOCAL_READY_SECS (default 60) bounds the wait for health;
# TANDEM_LOCAL_BIN_DIR runs the binaries found there instead of building release ones;
# TANDEM_LOCAL_DIR is where ./data goes (default: the repository).
set -euo pipefail
cd "$(dirname "$0")/.."
src=$(pwd)
target="${CARGO_TARGET_DIR:-$src/target}"
bin_dir=${TANDEM_LOCAL_BIN_DIR:-$target/release}
relay_bin="$bin_dir/tandem-relay"
signaling_bin="$bin_dir/tandem-signaling"

if [ -z "${TANDEM_LOCAL_BIN_DIR:-}" ]; then
  echo "local: building tandem-relay and tandem-signaling (release; the first build takes a few minutes)"
  # Only the two servers: the benchmark tool (bench/) is built by bench/compare.sh.
  cargo build --release -p tandem-relay -p tandem-signaling --bins
fi

root=$(mkdir -p "${TANDEM_LOCAL_DIR:-$src}" && cd "${TANDEM_LOCAL_DIR:-$src}" && pwd)
cd "$root"
relay_conf=$src/config/relay.toml
mkdir -p data
umask 077
secret() { [ -s "$1" ] || head -c 32 /dev/urandom | base64 | tr -d '/+=\n' >"$1"; }
secret data/control-secret
secret data/turn-secret
umask 022
control_listen=127.0.0.1:9642
# Signaling's configuration: the example file plus the local relay.
{
  cat "$src/config/signaling.toml"
  printf '\n# Added by deploy/local.sh: the relay started next to this process.\n'
  printf '[[relays]]\ncontrol_url = "http://%s"\n' "$control_listen"
  printf 'secret_file = "data/control-secret"\npublic_address = "127.0.0.1"\n'
} >data/signaling.local.toml

# `toml_get FILE SECTION KEY`: the value of a simple `key = value` line (quotes and a
# trailing comment removed); SECTION "" is the top level. Enough for our own files.
toml_get() {
  awk -v sec="$2" -v key="$3" '
    /^[ \t]*\[/ { cur = $0; gsub(/[][ \t]/, "", cur); next }
    cur == sec && $0 ~ "^[ \t]*" key "[ \t]*=" {
      sub(/^[^=]*=[ \t]*/, ""); sub(/[ \t]*#.*$/, ""); gsub(/"/, ""); print; exit
    }' "$1"
}

pids=()
stopping=0
stop() {
  stopping=1
  trap - INT TERM EXIT
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait "${pids[@]}" 2>/dev/null || true
}
trap stop INT TERM EXIT

# Each process's output (stdout and stderr) goes through a prefixer so the two logs
# can be told apart; $! is still the server's own pid. The prefixers ignore Ctrl-C:
# they end when their server closes its output, so the shutdown lines still show.
TANDEM_STATIC_AUTH_SECRET="$(cat data/turn-secret)" "$relay_bin" \
  --config "$relay_conf" --control-listen "$control_listen" \
  --control-secret-file data/control-secret \
  > >(trap '' INT; exec sed -u 's/^/relay     | /') 2>&1 &
pids+=($!)
TANDEM_TURN_SECRET_FILE=data/turn-secret "$signaling_bin" \
  --config data/signaling.local.toml \
  > >(trap '' INT; exec sed -u 's/^/signaling | /') 2>&1 &
pids+=($!)

# The addresses, read from the same files the processes read.
sig_conf=data/signaling.local.toml
api=$(toml_get "$sig_conf" api listen)
relay_metrics=$(toml_get "$relay_conf" "" metrics-listen)
relay_ip=$(toml_get "$relay_conf" "" listening-ip | tr -d '[] ' | cut -d, -f1)
turn_port=$(toml_get "$relay_conf" "" listening-port)
tls_port=$(toml_get "$relay_conf" "" tls-listening-port)
relay_cert=$(toml_get "$relay_conf" "" cert)

health_urls=("http://$api/health")
[ -n "$relay_metrics" ] && health_urls+=("http://$relay_metrics/health")

ready_secs=${TANDEM_LOCAL_READY_SECS:-60}
deadline=$(( $(date +%s) + ready_secs ))
while :; do
  ok=1
  for u in "${health_urls[@]}"; do
    curl -fsS --max-time 1 -o /dev/null "$u" 2>/dev/null || { ok=0; break; }
  done
  [ "$ok" -eq 1 ] && break
  for p in "${pids[@]}"; do
    if ! kill -0 "$p" 2>/dev/null; then
      status=0; wait "$p" || status=$?
      echo "local: a process exited during start-up with status $status; stopping the other" >&2
      exit "$status"
    fi
  done
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "local: not healthy after ${ready_secs} s (${health_urls[*]}); stopping" >&2
    exit 1
  fi
  sleep 0.2
done

sip=()
for t in udp tcp tls ws wss; do
  a=$(toml_get "$sig_conf" sip "${t}_listen")
  [ -n "$a" ] && sip+=("$t $a")
done
turn="turn:$relay_ip:$turn_port (UDP and TCP)"
if [ -n "$relay_cert" ]; then
  turn="$turn, turns:$relay_ip:$tls_port (TLS)"
fi
if [ -n "$(toml_get "$sig_conf" api admin_token)" ] || [ -n "${TANDEM_ADMIN_TOKEN:-}" ]; then
  token="set in the configuration (api.admin_token / TANDEM_ADMIN_TOKEN)"
else
  token="$root/data/admin-token"
fi
metrics="http://$api/metrics (signaling)"
health="http://$api/health (signaling)"
if [ -n "$relay_metrics" ]; then
  metrics="$metrics, http://$relay_metrics/metrics (relay)"
  health="$health, http://$relay_metrics/health (relay)"
fi
sip_line=$(IFS=,; echo "${sip[*]}" | sed 's/,/, /g')
cat <<EOF

==================== tandem is ready ====================
version      $("$relay_bin" --version), $("$signaling_bin" --version)
SIP          $sip_line   (realm $(toml_get "$sig_conf" sip realm))
TURN         $turn
HTTP API     http://$api
admin token  $token
metrics      $metrics
health       $health
relay        control API http://$control_listen (media sessions; token in $root/data/control-secret)
data         $root/data (SQLite database, secrets)
try it       bash $src/deploy/demo.sh   (a demo account with two devices, client settings, a TURN credential)
stop         Ctrl-C
=========================================================

EOF

# If either process exits, stop the other and report its status.
set +e
wait -n "${pids[@]}"
status=$?
# Ctrl-C or SIGTERM: stop() has run and both processes have exited.
[ "$stopping" -eq 1 ] && exit 0
echo "local: a process exited with status $status; stopping the other" >&2
exit "$status"
