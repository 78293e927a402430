#!/usr/bin/env bash
# Side-by-side TURN benchmark in one command:
#
#   bash bench/compare.sh            # full run (3 rounds)
#   bash bench/compare.sh --quick    # smoke run (1 round, short points)
#
# Installs what is missing (Debian's coturn, protoc for the turn-server crate,
# the turn-server crate into bench/.tools), builds release tandem-relay and
# tandem-bench, then runs `tandem-bench compare`, which writes
# bench/results/<date>-turn.{md,json,png}, then `tandem-bench stream-compare`
# (TURN over TCP and TLS, bench/results/<date>-turn-stream.{md,json}), then
# bench/many-allocations.sh
# (bench/results/<date>-allocations.{md,json}). Extra arguments go to `compare`.
# Everything runs on 127.0.0.1; contenders are pinned to CPU 0, the load
# generator to CPU 1 (needs at least 2 CPUs).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

need_apt=()
command -v turnserver >/dev/null || need_apt+=(coturn)
command -v taskset >/dev/null || need_apt+=(util-linux)
if [ ! -x bench/.tools/bin/turn-server ] && ! command -v protoc >/dev/null; then
  need_apt+=(protobuf-compiler)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
  # Debian starts coturn as a service on install; the benchmark starts its own.
  if [[ " ${need_apt[*]} " == *" coturn "* ]]; then
    $SUDO systemctl stop coturn 2>/dev/null || true
  fi
fi

echo "packages: $(( $(date +%s) - start )) s"

# The turn-server crate and our release binaries build side by side: each build
# leaves a core idle in its serial stretches (big crates, linking), the other fills it.
target="${CARGO_TARGET_DIR:-target}"
install_pid=""
if [ ! -x bench/.tools/bin/turn-server ]; then
  echo "installing the turn-server crate into bench/.tools (in the background)"
  (
    t=$(date +%s)
    CARGO_TARGET_DIR="$target/turn-server-build" \
      cargo install turn-server --locked --root bench/.tools --quiet
    echo "turn-server crate: $(( $(date +%s) - t )) s"
  ) &
  install_pid=$!
fi

t=$(date +%s)
cargo build --release --quiet -p tandem-relay -p tandem-bench
echo "release build: $(( $(date +%s) - t )) s"
if [ -n "$install_pid" ] && ! wait "$install_pid"; then
  echo "the turn-server crate did not install; compare skips it" >&2
fi
echo "setup took $(( $(date +%s) - start )) s"

nproc_n=$(nproc)
if [ "$nproc_n" -lt 2 ]; then
  echo "need at least 2 CPUs (server on CPU 0, load generator on CPU 1)" >&2
  exit 1
fi

"$target/release/tandem-bench" compare \
  --relay-bin "$target/release/tandem-relay" \
  --turn-server-bin bench/.tools/bin/turn-server \
  --out-dir bench/results "$@"

# TURN over TCP and TLS client connections, tandem-relay and coturn side by side
# (bench/results/<date>-turn-stream.{md,json}).
stream_args=()
if [[ " $* " == *" --quick "* ]]; then stream_args+=(--quick); fi
"$target/release/tandem-bench" stream-compare \
  --relay-bin "$target/release/tandem-relay" \
  --out-dir bench/results ${stream_args[@]+"${stream_args[@]}"} || echo "stream comparison failed" >&2

# Many concurrent allocations on one relay process (bounded: about half a minute).
if [[ " $* " != *" --quick "* ]]; then
  bash bench/many-allocations.sh 100000 || echo "many-allocations run failed" >&2
fi
echo "total $(( $(date +%s) - start )) s"
