#!/usr/bin/env bash
# Side-by-side TURN benchmark in one command:
#
#   bash bench/compare.sh            # full run (3 rounds)
#   bash bench/compare.sh --quick    # smoke run (1 round, short points)
#
# Installs what is missing (Debian's coturn, protoc for the turn-server crate,
# the turn-server crate into bench/.tools), builds release tandem-relay and
# tandem-bench, then runs `tandem-bench compare`, which writes
# bench/results/<date>-turn.{md,json,png}. Extra arguments go to `compare`.
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

if [ ! -x bench/.tools/bin/turn-server ]; then
  echo "installing the turn-server crate into bench/.tools"
  CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/turn-server-build" \
    cargo install turn-server --locked --root bench/.tools --quiet
fi

target="${CARGO_TARGET_DIR:-target}"
cargo build --release --quiet -p tandem-relay -p tandem-bench
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
echo "total $(( $(date +%s) - start )) s"
