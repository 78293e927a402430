#!/usr/bin/env bash
# Installs and starts what the test suite needs on a Debian machine:
# the third-party peers (coturn's turnutils_*, sipp, baresip, Linphone's linphonec,
# Chromium with node for JsSIP)
# and a running PostgreSQL.
# Idempotent: does nothing that is already in place.
set -euo pipefail

need_apt=()
command -v turnutils_uclient >/dev/null 2>&1 || need_apt+=(coturn)
command -v sipp >/dev/null 2>&1 || need_apt+=(sip-tester)
command -v baresip >/dev/null 2>&1 || need_apt+=(baresip-core)
command -v linphonec >/dev/null 2>&1 || need_apt+=(linphone-cli)
command -v pg_isready >/dev/null 2>&1 || need_apt+=(postgresql-client)
# The browser client test (signaling/tests/clients_browser.rs): JsSIP in headless
# Chromium, driven from node by playwright-core (tests/browser).
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || need_apt+=(chromium)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)

if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  echo "setup: installing ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# The coturn package may start its own daemon on 3478; the tests use their own ports,
# but a stray system daemon only adds noise, so stop it when we can.
if pgrep -x turnserver >/dev/null 2>&1 && command -v systemctl >/dev/null 2>&1; then
  systemctl stop coturn >/dev/null 2>&1 || true
fi

# The browser test's npm packages, exactly as locked (no download once present).
browser_dir="$(dirname "$0")/browser"
if [ ! -d "$browser_dir/node_modules/jssip" ] || [ ! -d "$browser_dir/node_modules/playwright-core" ] \
   || [ ! -d "$browser_dir/node_modules/esbuild" ]; then
  echo "setup: npm ci in tests/browser"
  (cd "$browser_dir" && npm ci --no-audit --no-fund --loglevel=error)
fi

pg_host=${TANDEM_TEST_PG_HOST:-127.0.0.1}
if ! pg_isready -q -h "$pg_host" -p 5432; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    echo "setup: starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
  for _ in $(seq 1 30); do pg_isready -q -h "$pg_host" -p 5432 && break; sleep 1; done
fi
pg_isready -h "$pg_host" -p 5432 || { echo "setup: PostgreSQL is not reachable on $pg_host:5432" >&2; exit 1; }
echo "setup: turnutils_uclient=$(command -v turnutils_uclient) sipp=$(command -v sipp) baresip=$(command -v baresip) linphonec=$(command -v linphonec) chromium=${CHROMIUM:-/usr/bin/chromium} node=$(command -v node) postgres=ok"
