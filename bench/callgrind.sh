#!/usr/bin/env bash
# User-space instructions per forwarded packet, counted by valgrind's callgrind, at a
# low rate per socket (call media: many sockets, few packets each, so the cost is in
# wake-ups rather than in batches):
#
#   bash bench/callgrind.sh                  # every contender, 3 rounds
#   bash bench/callgrind.sh --only tandem-relay-portable,coturn --rounds 1
#   bash bench/callgrind.sh --rate 5000,1000,200 --allocations 10 --duration 5 --size 200
#   bash bench/callgrind.sh --before-bin /tmp/tandem-relay-old --before-label "at abc123"
#   bash bench/callgrind.sh --tag try        # writes <date>-callgrind-try.{md,json}
#
# For each contender (tandem-relay with --io portable, tandem-relay with --io uring,
# coturn's turnserver, the bare forwarder `tandem-bench forwarder`, and with
# --before-bin the same two tandem-relay runs of another binary, named "...-before"):
# starts it under `valgrind --tool=callgrind --instr-atstart=no` pinned to CPU 0, and
# drives it with `tandem-bench turn-load --mode client-to-client` pinned to CPU 1.
# Counting is switched on with `callgrind_control -i on` once the generator has made
# its allocations and bound its channels, and off after the load and its 1 s drain
# (`turn-load --window-file`), then dumped: start-up, Allocate/ChannelBind/Refresh and
# teardown are not counted; the idle timers of the drain second are. Instructions per
# forwarded packet = instructions counted / (4 x round trips delivered): in
# client-to-client mode each round trip crosses the server four times.
#
# The count depends on how many packets each wake-up finds: a server that falls
# behind batches and looks cheaper. Under callgrind a server runs tens of times
# slower, so at 5,000 round trips/s it falls behind where it would not natively, and
# on a shared machine other work delays its wake-ups. The report therefore gives, for
# each run, packets per wait call and the median RTT; measures also at 1,000 and 200
# round trips/s, where a server keeps up (at 200, about one packet per wake-up, the
# regime of call media); runs contenders in alternating order over
# several rounds and reports medians; and as root runs server and generator at
# niceness -10 (--nice) for the few seconds each run takes.
#
# Writes bench/results/<date>-callgrind.{md,json}, and each run's callgrind output
# and `callgrind_annotate` listing under bench/results/callgrind-<date>/ (not kept in
# git). Installs what is missing (valgrind, coturn, taskset) with apt-get and builds
# the release binaries. Everything runs on 127.0.0.1, every run is bounded in
# packets and time, and each server is stopped at the end of its run.
set -euo pipefail
cd "$(dirname "$0")/.."

rates=5000,1000,200
allocations=10
duration=5
size=200
rounds=3
tag=""
before_bin=""
before_label=""
only="tandem-relay-portable,tandem-relay-uring,coturn,forwarder"
nice_n=0
[ "$(id -u)" -eq 0 ] && nice_n=-10
while [ $# -gt 0 ]; do
  case "$1" in
    --rate) rates="$2"; shift 2 ;;
    --allocations) allocations="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --size) size="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    --before-bin) before_bin="$2"; shift 2 ;;
    --before-label) before_label="$2"; shift 2 ;;
    --tag) tag="-$2"; shift 2 ;;
    --nice) nice_n="$2"; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
if [ "$(nproc)" -lt 2 ]; then
  echo "need at least 2 CPUs (server on CPU 0, load generator on CPU 1)" >&2
  exit 1
fi

need_apt=()
command -v valgrind >/dev/null && command -v callgrind_control >/dev/null || need_apt+=(valgrind)
command -v turnserver >/dev/null || need_apt+=(coturn)
command -v taskset >/dev/null || need_apt+=(util-linux)
command -v python3 >/dev/null || need_apt+=(python3)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
  # Debian starts coturn as a service on install; the measurement starts its own.
  if [[ " ${need_apt[*]} " == *" coturn "* ]]; then
    $SUDO systemctl stop coturn 2>/dev/null || true
  fi
fi

target="${CARGO_TARGET_DIR:-target}"
cargo build --release --quiet -p tandem-relay -p tandem-bench
relay="$target/release/tandem-relay"
bench="$target/release/tandem-bench"

date_s=$(date -u +%F)
outdir="bench/results/callgrind-$date_s"
mkdir -p "$outdir"
tmp=$(mktemp -d)
server_pid=""
load_pid=""
cleanup() {
  if [ -n "$load_pid" ]; then kill "$load_pid" 2>/dev/null || true; fi
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

free_port() {
  # A port free for UDP and TCP (coturn also listens on TCP).
  python3 - <<'EOF'
import socket
for _ in range(50):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    p = u.getsockname()[1]
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        t.bind(("127.0.0.1", p))
    except OSError:
        continue
    print(p)
    break
EOF
}

udp_bound() {
  python3 -c '
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(0)
sys.exit(1)' "$1"
}

# Why a run failed, on one line: the first line of a log that names an error, else its
# last lines (valgrind's own lines left out).
log_tail() {
  local e
  e=$({ grep -v '^==' "$1" 2>/dev/null || true; } | { grep -i -m1 'error' || true; })
  if [ -n "$e" ]; then
    printf '%s ' "$e"
  else
    { grep -v '^==' "$1" 2>/dev/null || true; } | tail -3 | tr '\n' ' '
  fi
}

# Wait (at most $3 s) until file $1 has a line matching $2.
wait_line() {
  local end=$(( $(date +%s) + $3 ))
  until grep -q "$2" "$1" 2>/dev/null; do
    if [ "$(date +%s)" -gt "$end" ] || ! kill -0 "$load_pid" 2>/dev/null; then
      return 1
    fi
    sleep 0.05
  done
}

# Calls made in the counted window to the functions that wait for the kernel
# (epoll_wait, io_uring_enter) and to the libc functions that enter it for the
# datapath, from callgrind's call counts: prints "waits io_calls".
call_counts() {
  awk '
    /^c?fn=\([0-9]+\)/ {
      id = $0; sub(/^c?fn=\(/, "", id); sub(/\).*/, "", id)
      name = $0; sub(/^c?fn=\([0-9]+\) ?/, "", name)
      if (name != "") names[id] = name
      if ($0 ~ /^cfn=/) cur = names[id]
    }
    /^calls=/ { split($1, a, "="); calls[cur] += a[2] }
    END {
      for (n in calls) {
        if (n ~ /^(epoll_wait|epoll_pwait|poll|select|io_uring_enter|io_uring::submit::Submitter::submit_with_args)$/) w += calls[n]
        if (n ~ /^(epoll_wait|epoll_pwait|poll|select|recvmmsg|sendmmsg|recvmsg|sendmsg|recvfrom|sendto|recv|send|read|write|readv|writev|syscall|io_uring_enter)$/) s += calls[n]
      }
      printf "%d %d\n", w, s
    }' "$1"
}

conf="$tmp/relay.toml"
# As compare.sh: quotas sized for a generator that opens every allocation from 127.0.0.1.
printf 'user-quota = 0\ntotal-quota = 200000\nunauthorized-rate = 1000000\n' >"$conf"

# Per "contender@rate": space-separated values, one per round.
declare -A ipp loss wakes iocalls rtt fails
keys=()

# run_one CONTENDER RATE ROUND
run_one() {
  local name="$1" rate="$2" round="$3" key="$1@$2" port dir bin cmd=() target_args=()
  port=$(free_port)
  dir="$tmp/$name-$rate-$round"
  mkdir -p "$dir"
  [[ " ${keys[*]} " == *" $key "* ]] || keys+=("$key")
  case "$name" in
    tandem-relay-portable*|tandem-relay-uring*)
      bin="$relay"
      [[ "$name" == *-before ]] && bin="$before_bin"
      local io="${name#tandem-relay-}"
      io="${io%-before}"
      cmd=("$bin" --config "$conf" --listening-ip 127.0.0.1 --listening-port "$port"
        --relay-ip 127.0.0.1 --realm bench --user bench:bench --allow-loopback-peers
        --log-level warn --workers 1 --io "$io")
      target_args=(--user bench:bench) ;;
    coturn)
      cmd=("$(command -v turnserver)" -n --listening-ip=127.0.0.1 "--listening-port=$port"
        --relay-ip=127.0.0.1 --relay-threads=1 --no-tls --no-dtls --no-cli --lt-cred-mech
        --user=bench:bench --realm=bench --allow-loopback-peers --simple-log
        "--log-file=$dir/turn.log" "--pidfile=$dir/turn.pid")
      target_args=(--user bench:bench) ;;
    forwarder)
      cmd=("$bench" forwarder --listen "127.0.0.1:$port" --max-time 300)
      target_args=(--forwarder) ;;
    *) echo "unknown contender $name" >&2; exit 2 ;;
  esac
  echo "== $name at $rate round trips/s, round $round (port $port)"
  nice -n "$nice_n" taskset -c 0 valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$dir/callgrind.out" "${cmd[@]}" >"$dir/server.log" 2>&1 &
  server_pid=$!
  local end=$(( $(date +%s) + 60 ))
  until udp_bound "$port"; do
    if ! kill -0 "$server_pid" 2>/dev/null || [ "$(date +%s)" -gt "$end" ]; then
      fails[$key]+="round $round: did not start: $(log_tail "$dir/server.log"); "
      kill "$server_pid" 2>/dev/null || true
      wait "$server_pid" 2>/dev/null || true
      server_pid=""
      return 0
    fi
    sleep 0.2
  done
  sleep 1
  local win="$dir/window" ok=1
  nice -n "$nice_n" taskset -c 1 timeout $(( duration + 300 )) "$bench" turn-load \
    --server "127.0.0.1:$port" "${target_args[@]}" --mode client-to-client \
    --allocations "$allocations" --rate "$rate" --size "$size" --duration "$duration" \
    --window-file "$win" --json >"$dir/load.json" 2>"$dir/load.err" &
  load_pid=$!
  if wait_line "$dir/load.err" '^setup done' 120; then
    callgrind_control -i on "$server_pid" >/dev/null
    touch "$win"
    if wait_line "$dir/load.err" '^load done' $(( duration + 60 )); then
      callgrind_control -i off "$server_pid" >/dev/null
      # Dump now (callgrind.out.1): a server that does not stop cleanly below would
      # otherwise take its counts with it.
      callgrind_control -d "$server_pid" >/dev/null
    else
      ok=0
    fi
    rm -f "$win"
  else
    ok=0
  fi
  wait "$load_pid" || ok=0
  load_pid=""
  kill -INT "$server_pid" 2>/dev/null || true
  local i=0
  while kill -0 "$server_pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
  kill -KILL "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
  local out="$dir/callgrind.out.1"
  if [ $ok -ne 1 ] || [ ! -s "$out" ]; then
    fails[$key]+="round $round: $(log_tail "$dir/load.err") $(log_tail "$dir/server.log"); "
    echo "   failed"
    return 0
  fi
  local ir received w s v
  ir=$(awk '/^(summary|totals):/ {v=$2} END {print v+0}' "$out")
  received=$({ grep -o '"received":[0-9]*' "$dir/load.json" || true; } | cut -d: -f2)
  if [ -z "$received" ] || [ "$received" -eq 0 ]; then
    fails[$key]+="round $round: no round trip came back; "
    echo "   no round trip came back"
    return 0
  fi
  read -r w s < <(call_counts "$out")
  v=$(awk -v i="$ir" -v r="$received" 'BEGIN {printf "%.0f", i / (4 * r)}')
  ipp[$key]+="$v "
  loss[$key]+="$({ grep -o '"loss_pct":[0-9.e+-]*' "$dir/load.json" || true; } | cut -d: -f2) "
  rtt[$key]+="$({ grep -o '"rtt_p50_us":[0-9.]*' "$dir/load.json" || true; } | cut -d: -f2 | cut -d. -f1) "
  wakes[$key]+="$(awk -v w="$w" -v r="$received" 'BEGIN {printf "%.2f", 4 * r / (w > 0 ? w : 1)}') "
  iocalls[$key]+="$(awk -v s="$s" -v r="$received" 'BEGIN {printf "%.2f", s / (4 * r)}') "
  echo "   $ir instructions, $received round trips: $v instructions per forwarded packet"
  cp "$out" "$outdir/$name-$rate-r$round.callgrind.out"
  cp "$dir/load.json" "$outdir/$name-$rate-r$round.load.json"
  callgrind_annotate --inclusive=no "$out" 2>/dev/null | head -80 \
    >"$outdir/$name-$rate-r$round.annotate.txt" || true
}

median() { # space-separated numbers -> median ("-" when none)
  printf '%s\n' $1 | awk 'NF' | sort -g | awk '{v[NR] = $1} END {
    if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

IFS=, read -r -a contenders <<<"$only"
if [ -n "$before_bin" ]; then
  for c in "${contenders[@]}"; do
    [[ "$c" == tandem-relay-* ]] && contenders+=("$c-before")
  done
fi
IFS=, read -r -a rate_list <<<"$rates"
for rate in "${rate_list[@]}"; do
  for round in $(seq 1 "$rounds"); do
    order=("${contenders[@]}")
    if [ $((round % 2)) -eq 0 ]; then
      order=()
      for ((j = ${#contenders[@]} - 1; j >= 0; j--)); do order+=("${contenders[$j]}"); done
    fi
    for c in "${order[@]}"; do
      run_one "$c" "$rate" "$round"
    done
  done
done

# Medians per contender@rate.
declare -A m_ipp m_loss m_rtt m_wakes m_io
for k in "${keys[@]}"; do
  m_ipp[$k]=$(median "${ipp[$k]:-}")
  m_loss[$k]=$(median "${loss[$k]:-}")
  m_rtt[$k]=$(median "${rtt[$k]:-}")
  m_wakes[$k]=$(median "${wakes[$k]:-}")
  m_io[$k]=$(median "${iocalls[$k]:-}")
done
ratio() { # key format missing -> median instructions per packet / coturn's at that rate
  local b="${m_ipp[coturn@${1#*@}]:--}"
  if [ "$b" != "-" ] && [ "${m_ipp[$1]}" != "-" ]; then
    awk -v a="${m_ipp[$1]}" -v b="$b" -v f="$2" 'BEGIN {printf f, a / b}'
  else
    printf '%s' "$3"
  fi
}

# The functions with the most instructions of their own in one run, as table rows.
top_costs() {
  { grep -E '^ *[0-9,]+ \( *[0-9.]+%\)  ' "$1" 2>/dev/null || true; } |
    grep -v 'PROGRAM TOTALS' | awk -v n="$2" 'NR <= n' |
    sed -E 's/^ *([0-9,]+) \( *([0-9.]+)%\)  (.*)$/| \2 | \3 |/; s/ \[[^]]*\] \|$/ |/' |
    sed -E 's#/rustc/[0-9a-f]+/library/#<std>/#; s#[^ |]*/\.cargo/registry/src/[^/]+/#<crates>/#; s#/rust/deps/#<crates>/#' |
    sed "s#$PWD/##"
}

before_label="${before_label:-$before_bin}"
md="bench/results/$date_s-callgrind$tag.md"
json="bench/results/$date_s-callgrind$tag.json"
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
git diff --quiet HEAD -- relay bench 2>/dev/null || commit="$commit with uncommitted changes"
{
  echo "# Instructions per forwarded packet at a low rate per socket ($date_s)"
  echo
  echo "Client-to-client mode over $allocations allocations (each round trip crosses the server 4 times), ${size}-byte ChannelData payload, ${duration} s of load per run; server under \`valgrind --tool=callgrind\` pinned to CPU 0, \`tandem-bench turn-load\` on CPU 1, both at niceness $nice_n. Counting is on only from the end of the generator's setup to the end of the load's 1 s drain (\`callgrind_control -i on/off\`): start-up, allocations, channel binds and teardown are not counted. User-space instructions only (the kernel's share is not seen). Medians over $rounds round(s), contenders in alternating order. Commit $commit$([ -n "$before_bin" ] && echo "; \"-before\" rows: tandem-relay $before_label"); $(valgrind --version); kernel $(uname -r); $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg) at the end."
  echo
  echo "| contender | round trips/s | instructions per forwarded packet | ratio to coturn | per round | loss % | RTT p50 us | packets per wait call | I/O calls per packet |"
  echo "|---|---:|---:|---:|---|---:|---:|---:|---:|"
  for k in "${keys[@]}"; do
    echo "| ${k%@*} | ${k#*@} | ${m_ipp[$k]} | $(ratio "$k" '%.2fx' -) | ${ipp[$k]:-} | ${m_loss[$k]} | ${m_rtt[$k]} | ${m_wakes[$k]} | ${m_io[$k]} |"
  done
  echo
  echo "\"Packets per wait call\": forwarded packets per call of epoll_wait or io_uring_enter, about the packets one wake-up handles (a server that falls behind finds more, and spreads its per-wake-up cost over them). \"I/O calls\": calls of the libc functions that enter the kernel for the datapath (epoll_wait, recvmmsg, sendmmsg, recvmsg, sendmsg, recvfrom, sendto, read, write, syscall, ...) per forwarded packet. Both from callgrind's call counts in the same window."
  if [ -n "${!fails[*]}" ]; then
    echo
    echo "Failed runs:"
    echo
    for k in ${!fails[*]}; do echo "- $k: ${fails[$k]}"; done
  fi
  echo
  echo "## Top costs"
  echo
  echo "Functions by their own instructions in round 1 (\`callgrind_annotate --inclusive=no\`; every run's listing and callgrind file are in \`$outdir/\`, not kept in git)."
  for k in "${keys[@]}"; do
    f="$outdir/${k%@*}-${k#*@}-r1.annotate.txt"
    [ -s "$f" ] || continue
    echo
    echo "### ${k%@*} at ${k#*@} round trips/s"
    echo
    echo "| % | function |"
    echo "|---:|---|"
    top_costs "$f" 12
  done
} >"$md"
{
  echo "{"
  echo "  \"date\": \"$date_s\", \"commit\": \"$commit\", \"before\": \"$before_label\", \"allocations\": $allocations, \"size\": $size, \"duration_s\": $duration, \"rounds\": $rounds, \"nice\": $nice_n,"
  echo "  \"mode\": \"client-to-client\", \"packets_per_round_trip\": 4,"
  echo "  \"results\": ["
  sep=""
  for k in "${keys[@]}"; do
    num() { [ "$1" = "-" ] && echo null || echo "$1"; }
    list() { local v; v=$(printf '%s, ' $1); echo "[${v%, }]"; }
    printf '%s    {"name": "%s", "rate": %s, "instructions_per_packet": %s, "ratio_to_coturn": %s, "per_round": %s, "loss_pct": %s, "rtt_p50_us": %s, "packets_per_wait_call": %s, "io_calls_per_packet": %s, "failed": "%s"}' \
      "$sep" "${k%@*}" "${k#*@}" "$(num "${m_ipp[$k]}")" "$(ratio "$k" '%.3f' null)" \
      "$(list "${ipp[$k]:-}")" "$(num "${m_loss[$k]}")" "$(num "${m_rtt[$k]}")" \
      "$(num "${m_wakes[$k]}")" "$(num "${m_io[$k]}")" \
      "$(printf '%s' "${fails[$k]:-}" | tr -d '"\\' | tr -c '[:print:]' ' ')"
    sep=$',\n'
  done
  echo
  echo "  ]"
  echo "}"
} >"$json"
cat "$md"
echo "wrote $md and $json"
