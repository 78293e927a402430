#!/usr/bin/env bash
# Forked calls with media through the relay against the same calls with media off,
# in one run, on one machine:
#
#   bash bench/calls.sh [RATE] [CALLS] [ROUNDS]   # default 50 calls/s, 1500 calls, 2
#
# - tandem-relay (one worker, CPU 1) with its control API; tandem-signaling (SQLite,
#   pinned to CPU 0) with the relay in `[[relays]]`;
# - account bob has three devices (sipp): one answers every call (180, 100 ms, 200
#   with SDP), two ring until their branch is cancelled; account alice calls bob with
#   sipp at RATE calls/s (digest-authenticated INVITE with a plain audio offer, 1 s
#   of call, BYE), CALLS calls per phase;
# - phases alternate `media = "off"` and `media = "ice"` on both accounts (the
#   offer has no ICE, so every `ice` call is forced through a relay session: create
#   on the INVITE, answer on the 2xx, delete on the BYE), ROUNDS times each;
# - measured per phase: signaling's CPU time (utime + stime from /proc) per call,
#   the relay's, failed calls, and the INVITE->180 time of the authenticated INVITE
#   (sipp's response time, per call, p50 / p99).
# Everything on loopback (signaling 127.0.0.1, relay 127.0.0.2), bounded by CALLS and
# sipp's timeouts. Writes bench/results/<date>-calls.{md,json}.
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:-50}
calls=${2:-1500}
rounds=${3:-2}
target="${CARGO_TARGET_DIR:-target}"
need_apt=()
command -v sipp >/dev/null || need_apt+=(sip-tester)
command -v curl >/dev/null || need_apt+=(curl)
command -v taskset >/dev/null || need_apt+=(util-linux)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
cargo build --release --quiet -p tandem-relay -p tandem-signaling --bins
relay="$PWD/$target/release/tandem-relay"
signaling="$PWD/$target/release/tandem-signaling"
[ -x "$relay" ] || relay="$target/release/tandem-relay"
[ -x "$signaling" ] || signaling="$target/release/tandem-signaling"
date_s=$(date +%F)
out_json="$PWD/bench/results/$date_s-calls.json"
out_md="$PWD/bench/results/$date_s-calls.md"
scen="$PWD/bench/sipp"
reg_xml="$PWD/tests/sipp/register.xml"
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM if sys.argv[1]=="udp" else socket.SOCK_STREAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' "${1:-tcp}"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

token="bench-calls-admin-token-$(date +%s%N)"
secret="bench-calls-control-secret-$(date +%s%N)"
printf '%s\n' "$secret" >"$tmp/control-secret"
cport=$(free_port)
sip_port=$(free_port udp)
api_port=$(free_port)

taskset -c 1 "$relay" --listening-ip 127.0.0.2 --listening-port 0 --relay-ip 127.0.0.2 \
  --user bench:bench --workers 1 --control-listen "127.0.0.1:$cport" \
  --control-secret-file "$tmp/control-secret" --log-level warn \
  --media-inactivity-timeout 120 >"$tmp/relay.log" 2>&1 &
relay_pid=$!
pids+=($relay_pid)

cat >"$tmp/signaling.toml" <<EOF
data_dir = "$tmp/data"
[sip]
udp_listen = "127.0.0.1:$sip_port"
tcp_listen = "127.0.0.1:$sip_port"
[api]
listen = "127.0.0.1:$api_port"
[proxy]
max_outgoing_calls = 100000
[log]
level = "warn"
[[relays]]
control_url = "http://127.0.0.1:$cport"
secret_file = "$tmp/control-secret"
public_address = "127.0.0.2"
EOF
TANDEM_ADMIN_TOKEN="$token" taskset -c 0 "$signaling" --config "$tmp/signaling.toml" \
  >"$tmp/signaling.log" 2>&1 &
sig_pid=$!
pids+=($sig_pid)

api() { # method path [json]
  curl -sf -X "$1" -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    ${3:+--data "$3"} "http://127.0.0.1:$api_port$2"
}
for _ in $(seq 1 100); do api GET /health >/dev/null 2>&1 && break; sleep 0.1; done
api GET /health >/dev/null || { echo "signaling did not come up" >&2; cat "$tmp/signaling.log" >&2; exit 1; }

pw=bench-password-1
alice=$(api POST /accounts "{\"login\":\"alice\",\"password\":\"$pw\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
bob=$(api POST /accounts "{\"login\":\"bob\",\"password\":\"$pw\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
cd "$tmp"
dev_ports=()
for n in 1 2 3; do
  inst="urn:uuid:00000000-0000-4000-8000-00000000000$n"
  class=mobile; [ "$n" = 2 ] && class=tablet; [ "$n" = 3 ] && class=desktop
  api POST "/accounts/$bob/devices" "{\"instance_id\":\"$inst\",\"class\":\"$class\",\"name\":\"dev$n\"}" >/dev/null
  port=$(free_port udp)
  printf 'SEQUENTIAL\nbob;%s;%s;tandem.local;\n' "$pw" "$inst" >"reg$n.csv"
  sipp "127.0.0.1:$sip_port" -sf "$reg_xml" -inf "reg$n.csv" -m 1 -au bob -ap "$pw" \
    -i 127.0.0.1 -p "$port" -nostdin -timeout 10s -timeout_error >"reg$n.out" 2>&1 \
    || { echo "registration of device $n failed:" >&2; tail -30 "reg$n.out" >&2; tail -20 "$tmp/signaling.log" >&2; exit 1; }
  dev_ports+=("$port")
done
total=$(( calls * rounds * 2 ))
# The devices, each on the port it registered from; stopped by the cleanup.
for i in 0 1 2; do
  uas="$scen/calls_uas_ring.xml"; [ "$i" = 0 ] && uas="$scen/calls_uas_answer.xml"
  sipp -sf "$uas" -i 127.0.0.1 -p "${dev_ports[$i]}" -m "$total" -mp "$(free_port udp)" \
    -nostdin >"uas$i.out" 2>&1 &
  pids+=($!)
done
sleep 0.5
printf 'SEQUENTIAL\nalice;\n' >caller.csv

hz=$(getconf CLK_TCK)
results=()
for round in $(seq 1 "$rounds"); do
  for mode in off ice; do
    api PATCH "/accounts/$alice" "{\"media\":\"$mode\"}" >/dev/null
    api PATCH "/accounts/$bob" "{\"media\":\"$mode\"}" >/dev/null
    s0=$(cpu_ticks "$sig_pid"); r0=$(cpu_ticks "$relay_pid")
    rm -f ./*_rtt.csv
    set +e
    sipp "127.0.0.1:$sip_port" -sf "$scen/calls_uac.xml" -inf caller.csv -s bob \
      -au alice -ap "$pw" -r "$rate" -m "$calls" -i 127.0.0.1 -p "$(free_port udp)" \
      -mp "$(free_port udp)" -nostdin -timeout 120s -trace_rtt -rtt_freq 1 \
      -trace_stat -fd 1 >"uac-$mode-$round.out" 2>&1
    set -e
    s1=$(cpu_ticks "$sig_pid"); r1=$(cpu_ticks "$relay_pid")
    stat=$(ls -t ./*_.csv 2>/dev/null | head -1 || true)
    rtt=$(ls -t ./*_rtt.csv 2>/dev/null | head -1 || true)
    line=$(python3 - "$mode" "$round" "$calls" "$hz" "$s0" "$s1" "$r0" "$r1" "${stat:-}" "${rtt:-}" <<'PY'
import csv, json, sys
mode, rnd, calls, hz, s0, s1, r0, r1, stat, rtt = sys.argv[1:11]
calls, hz = int(calls), int(hz)
ok = failed = None
if stat:
    rows = list(csv.reader(open(stat), delimiter=';'))
    if len(rows) >= 2:
        h, last = rows[0], rows[-1]
        col = lambda n: int(last[h.index(n)]) if n in h else None
        ok, failed = col('SuccessfulCall(C)'), col('FailedCall(C)')
times = []
if rtt:
    for r in csv.reader(open(rtt), delimiter=';'):
        try:
            times.append(float(r[1]))
        except (ValueError, IndexError):
            pass
times.sort()
pct = lambda p: times[min(len(times) - 1, int(p * len(times)))] if times else None
done = ok or calls
print(json.dumps({
    "mode": mode, "round": int(rnd), "calls": calls, "successful": ok, "failed": failed,
    "signaling_cpu_us_per_call": round((int(s1) - int(s0)) * 1e6 / hz / done, 1),
    "relay_cpu_us_per_call": round((int(r1) - int(r0)) * 1e6 / hz / done, 1),
    "invite_180_ms_p50": pct(0.5), "invite_180_ms_p99": pct(0.99), "samples": len(times),
}))
PY
)
    echo "$line"
    results+=("$line")
  done
done
cd - >/dev/null
python3 - "$out_json" "$out_md" "$rate" "${results[@]}" <<'PY'
import json, sys
out_json, out_md, rate = sys.argv[1], sys.argv[2], sys.argv[3]
rows = [json.loads(r) for r in sys.argv[4:]]
def mean(mode, key):
    v = [r[key] for r in rows if r["mode"] == mode and r[key] is not None]
    return sum(v) / len(v) if v else None
summary = {m: {k: mean(m, k) for k in ("signaling_cpu_us_per_call", "relay_cpu_us_per_call",
           "invite_180_ms_p50", "invite_180_ms_p99")} for m in ("off", "ice")}
ratio = None
if summary["off"]["signaling_cpu_us_per_call"] and summary["ice"]["signaling_cpu_us_per_call"]:
    ratio = summary["ice"]["signaling_cpu_us_per_call"] / summary["off"]["signaling_cpu_us_per_call"]
json.dump({"rate": int(rate), "phases": rows, "summary": summary,
           "signaling_cpu_ratio_media_on_vs_off": ratio}, open(out_json, "w"), indent=2)
with open(out_md, "w") as f:
    f.write(f"# Forked calls with and without relay media sessions ({rate} calls/s)\n\n")
    f.write("Three devices per call (one answers, two cancelled), plain audio offer; `ice`: ")
    f.write("one relay session per call (create, answer, delete). CPU per completed call.\n\n")
    f.write("| mode | round | ok | failed | signaling us/call | relay us/call | INVITE->180 p50 ms | p99 ms |\n")
    f.write("|---|---|---|---|---|---|---|---|\n")
    for r in rows:
        f.write(f"| {r['mode']} | {r['round']} | {r['successful']} | {r['failed']} | "
                f"{r['signaling_cpu_us_per_call']} | {r['relay_cpu_us_per_call']} | "
                f"{r['invite_180_ms_p50']} | {r['invite_180_ms_p99']} |\n")
    if ratio:
        f.write(f"\nSignaling CPU per call, media on / off: **{ratio:.2f}x** (goal <= 1.3x).\n")
print(open(out_md).read())
PY
