#!/usr/bin/env bash
# Call media through tandem-relay's media sessions, side by side with the forwarder
# floor, in one run:
#
#   bash bench/media.sh [SESSIONS] [SECONDS]      # default 500 sessions, 10 s
#
# - tandem-relay (one worker, pinned to CPU 0) with SESSIONS media sessions placed
#   through the control API, both legs sending 200-byte RTP at 50 packets/s
#   (SESSIONS x 100 packets/s through the relay): plain forwarding, then SRTP
#   bridging on every session (the caller leg SRTP, the callee leg plain RTP);
# - the floor: `tandem-bench forwarder` (one socket per client, no TURN or media
#   logic) driven client-to-client with the same number of sockets and the same
#   forwarded packet rate;
# - rtpengine (Debian's rtpengine-daemon, userspace forwarding: no kernel module)
#   with the same sessions set up through its NG protocol (offer/answer with SDP);
# - a high-rate point: the same sessions at FULL_PPS (default 100) packets/s per leg,
#   on both (twice the call-audio rate; higher rates measure the generator).
# The load generator runs on CPU 1. Everything on 127.0.0.1, bounded in time.
# Writes bench/results/<date>-media.{md,json}.
set -euo pipefail
cd "$(dirname "$0")/.."
sessions=${1:-500}
secs=${2:-10}
# The high-rate point, per leg: as high as the one-core load generator sustains
# while it also receives everything (above that it, not the relay, drops packets).
full_pps=${FULL_PPS:-100}
target="${CARGO_TARGET_DIR:-target}"
need_apt=()
command -v taskset >/dev/null || need_apt+=(util-linux)
command -v rtpengine >/dev/null || need_apt+=(rtpengine-daemon)
command -v curl >/dev/null || need_apt+=(curl)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
  # Debian may start rtpengine as a service on install; the benchmark runs its own.
  $SUDO systemctl stop rtpengine-daemon 2>/dev/null || true
fi
cargo build --release --quiet -p tandem-relay -p tandem-bench
relay="$target/release/tandem-relay"
bench="$target/release/tandem-bench"
token="bench-media-control-token-$(date +%s%N)"
export TANDEM_CONTROL_SECRET="$token"
date_s=$(date +%F)
out_json="bench/results/$date_s-media.json"
out_md="bench/results/$date_s-media.md"
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_relay() {
  local cport=$1
  taskset -c 0 "$relay" --listening-ip 127.0.0.1 --listening-port 0 --user bench:bench \
    --workers 1 --io "${IO:-auto}" --control-listen "127.0.0.1:$cport" --log-level warn \
    --media-inactivity-timeout 120 >"$tmp/relay.log" 2>&1 &
  pids+=($!)
  echo $!
}

wait_http() {
  for _ in $(seq 1 100); do
    curl -sf -H "Authorization: Bearer $token" "http://127.0.0.1:$1/health" >/dev/null && return 0
    sleep 0.1
  done
  echo "relay control API did not come up" >&2; cat "$tmp/relay.log" >&2; exit 1
}

run_media() { # name pps srtp
  local cport pid
  cport=$(free_port)
  pid=$(start_relay "$cport")
  wait_http "$cport"
  local extra=()
  [ "$3" = srtp ] && extra+=(--srtp)
  taskset -c 1 "$bench" media-load --control "127.0.0.1:$cport" --sessions "$sessions" \
    --pps "$2" --duration "$secs" --server-pid "$pid" --server-cpu 0 --json "${extra[@]}" \
    >"$tmp/$1.json"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "$1: $(cat "$tmp/$1.json")"
}

run_floor() { # name forwarded-pps
  local port
  port=$(free_port)
  taskset -c 0 "$bench" forwarder --listen "127.0.0.1:$port" --max-time 120 >"$tmp/fwd.log" 2>&1 &
  local pid=$!
  pids+=($pid)
  sleep 0.3
  # client-to-client: 4 forwarded packets per round trip; one socket per client, as
  # many clients as the media run has legs.
  local rt=$(( $2 / 4 ))
  taskset -c 1 "$bench" turn-load --server "127.0.0.1:$port" --forwarder --mode client-to-client \
    --allocations $(( sessions * 2 )) --rate "$rt" --size 200 --duration "$secs" \
    --server-pid "$pid" --server-cpu 0 --json >"$tmp/$1.json"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "$1: $(cat "$tmp/$1.json")"
}

run_rtpengine() { # name pps
  # Userspace forwarding only (no kernel module: --table=-1), one worker thread,
  # no configuration file, loopback only.
  local ng
  ng=$(free_port)
  taskset -c 0 rtpengine --config-file=none --table=-1 --interface=127.0.0.1 \
    --listen-ng="127.0.0.1:$ng" --foreground --log-stderr --log-level=3 \
    --port-min=30000 --port-max=39999 --num-threads=1 >"$tmp/rtpengine.log" 2>&1 &
  local pid=$!
  pids+=($pid)
  sleep 0.5
  taskset -c 1 "$bench" media-load --ng "127.0.0.1:$ng" --sessions "$sessions" \
    --pps "$2" --duration "$secs" --server-pid "$pid" --server-cpu 0 --json >"$tmp/$1.json"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "$1: $(cat "$tmp/$1.json")"
}

pps=$(( sessions * 100 ))
run_media media_plain 50 plain
run_media media_srtp 50 srtp
run_floor forwarder "$pps"
run_rtpengine rtpengine 50
run_media media_plain_full "$full_pps" plain
run_rtpengine rtpengine_full "$full_pps"

python3 - "$tmp" "$out_json" "$out_md" "$sessions" "$secs" <<'EOF'
import json, sys, os
tmp, out_json, out_md, sessions, secs = sys.argv[1:6]
r = {k: json.load(open(os.path.join(tmp, k + ".json"))) for k in
     ["media_plain", "media_srtp", "forwarder", "rtpengine", "media_plain_full",
      "rtpengine_full"]}
def cpu(x):
    return x.get("server_cpu_ns_per_packet") or x.get("server_cpu_ns_per_forwarded_packet")
plain, srtp, floor = cpu(r["media_plain"]), cpu(r["media_srtp"]), cpu(r["forwarder"])
r["ratios"] = {
    "media_plain_vs_forwarder": plain / floor if plain and floor else None,
    "srtp_bridge_vs_plain": srtp / plain if srtp and plain else None,
    "media_plain_vs_rtpengine": plain / cpu(r["rtpengine"]) if plain and cpu(r["rtpengine"]) else None,
    "full_rate_vs_rtpengine_full": (cpu(r["media_plain_full"]) / cpu(r["rtpengine_full"])
        if cpu(r["media_plain_full"]) and cpu(r["rtpengine_full"]) else None),
}
json.dump(r, open(out_json, "w"), indent=2)
with open(out_md, "w") as f:
    f.write(f"# Media sessions: {sessions} sessions, 200-byte RTP, {secs} s per point\n\n")
    f.write("Server pinned to CPU 0 (one worker), load on CPU 1, 127.0.0.1. Latency: one way for the media runs, round trip for the forwarder.\n\n")
    f.write("| run | offered pps | forwarded pps | loss % | p50 us | p99 us | server ns/packet |\n|---|---:|---:|---:|---:|---:|---:|\n")
    for k, x in r.items():
        if k == "ratios":
            continue
        off = x.get("offered_pps") or 0
        fwd = x.get("forwarded_pps") or 0
        f.write(f"| {k} | {off:.0f} | {fwd:.0f} | {x.get('loss_pct', 0):.3f} | "
                f"{x.get('latency_p50_us', x.get('rtt_p50_us', 0)):.0f} | "
                f"{x.get('latency_p99_us', x.get('rtt_p99_us', 0)):.0f} | {cpu(x) or 0:.0f} |\n")
    f.write("\n")
    for k, v in r["ratios"].items():
        f.write(f"- {k}: {v:.2f}\n" if v else f"- {k}: n/a\n")
print(open(out_md).read())
EOF
