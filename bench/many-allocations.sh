#!/usr/bin/env bash
# 100,000 concurrent allocations on one tandem-relay process, and what they cost in
# memory:
#
#   bash bench/many-allocations.sh [COUNT] [extra alloc-rate args]
#
# Starts the release tandem-relay on 127.0.0.1 with 8 relay addresses (127.0.0.2-9,
# 16,384 ports each), lets the generator make COUNT (default 100000) authenticated
# allocations from clients spread over 4 loopback addresses, holds them all live
# for 5 s, reads the relay's VmRSS before and after, and writes
# bench/results/<date>-allocations.{json,md}. Needs a hard open file limit above
# COUNT for both processes: raised here with `ulimit -Hn` where that is allowed (root
# with CAP_SYS_RESOURCE), else COUNT is lowered to what the limit allows and the report
# says so; the relay raises its soft limit to the hard one itself. Bounded: 120 s for
# the allocations, 5 s held.
set -euo pipefail
cd "$(dirname "$0")/.."
count="${1:-100000}"
shift || true
target="${CARGO_TARGET_DIR:-target}"
[ -x "$target/release/tandem-relay" ] && [ -x "$target/release/tandem-bench" ] ||
  cargo build --release --quiet -p tandem-relay -p tandem-bench

# Each allocation is one descriptor in the relay and one in the generator.
need=$(( count + 1024 ))
asked="$count"
capped=""
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt "$need" ]; then
  if ulimit -Hn "$need" 2>/dev/null; then
    hard=$need
  else
    count=$(( hard - 500 ))
    capped="asked $asked; the hard open file limit here is $hard and cannot be raised (setrlimit needs CAP_SYS_RESOURCE), so $count"
    echo "$capped" >&2
  fi
fi
echo "hard open file limit: $(ulimit -Hn), soft: $(ulimit -Sn) (the relay raises its soft limit)"

dir=$(mktemp -d)
trap 'kill "$relay_pid" 2>/dev/null || true; wait "$relay_pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
printf 'user-quota = 0\ntotal-quota = 0\nunauthorized-rate = 1000000\n' >"$dir/relay.toml"
port=$(( 30000 + RANDOM % 2000 ))
relay_ips=()
for i in 2 3 4 5 6 7 8 9; do relay_ips+=(--relay-ip "127.0.0.$i"); done
"$target/release/tandem-relay" --config "$dir/relay.toml" --listening-ip 127.0.0.1 \
  --listening-port "$port" "${relay_ips[@]}" --realm bench --user bench:bench \
  --log-level info >"$dir/relay.log" 2>&1 &
relay_pid=$!
sleep 1
grep -E "open file limit|allocations possible|datapath" "$dir/relay.log" | sed 's/^/relay: /' || true

day=$(date +%F)
mkdir -p bench/results
timeout 200 "$target/release/tandem-bench" alloc-rate --server "127.0.0.1:$port" \
  --user bench:bench --count "$count" --duration 120 --concurrency 256 --max-errors 100 \
  --client-ip 127.0.1.1 --client-ip 127.0.1.2 --client-ip 127.0.1.3 --client-ip 127.0.1.4 \
  --hold 5 --server-pid "$relay_pid" --json "$@" >"$dir/report.json"
grep -iE "warn|error" "$dir/relay.log" | sort | uniq -c | head -5 | sed 's/^/relay: /' || true
python3 - "$dir/report.json" "$count" "bench/results/$day-allocations" "$(nproc)" "$asked" "$capped" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); want = int(sys.argv[2]); stem = sys.argv[3]
asked = int(sys.argv[5]); capped = sys.argv[6]
rss = r.get("server_rss_kib") or [0, 0, 0]
per = r.get("server_rss_bytes_per_allocation")
lines = [
    f"# {want} concurrent allocations on one tandem-relay process",
    "",
] + ([f"**Capped:** {capped}.", ""] if capped else []) + [
    f"Default workers ({sys.argv[4]} cores), default datapath, 8 relay addresses (127.0.0.2-9), "
    "clients on 4 loopback addresses, authenticated Allocate (401 then MESSAGE-INTEGRITY), "
    f"every allocation held live {r.get('held_s', 0):.1f} s after the last one was made.",
    "",
    "| what | value |",
    "|---|---:|",
    f"| allocations made (asked {want}) | {r['allocations']} |",
    f"| errors | {r['errors']} |",
    f"| allocations per second | {r['allocations_per_s']:.0f} |",
    f"| relay VmRSS before | {rss[0]} KiB |",
    f"| relay VmRSS with all made | {rss[1]} KiB |",
    f"| relay VmRSS after the hold | {rss[2]} KiB |",
    f"| RSS growth per allocation | {per:.0f} bytes |" if per is not None else "| RSS growth per allocation | n/a |",
    f"| relay open files / soft limit | {r.get('server_fds')} / {r.get('server_nofile_limit')} |",
    f"| generator soft open file limit | {r.get('client_nofile_limit')} |",
    "",
    "VmRSS is the process's resident memory; the kernel's socket buffers and io_uring "
    "requests of each relayed socket are kernel memory and not in it.",
]
if r["first_errors"]:
    lines += ["", "First errors:", ""] + [f"- {e}" for e in r["first_errors"]]
open(stem + ".md", "w").write("\n".join(lines) + "\n")
r["asked"] = asked
r["capped_by_open_file_limit"] = bool(capped)
json.dump(r, open(stem + ".json", "w"), indent=2)
print("\n".join(lines))
PY
