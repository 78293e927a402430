#!/usr/bin/env bash
# Provisions a demo on the processes `bash deploy/local.sh` started: an account `demo`
# with two devices (a phone and a laptop) and an account `caller` with one device to
# call it from, then prints the settings to put in a SIP client for each device and a
# TURN credential minted for `demo`.
#
# Run it again and it prints the same settings: the passwords and device ids are kept
# in data/demo.env (mode 0600). Remove that file and the two accounts (or ./data) to
# start over.
#
# Environment: TANDEM_API (default: the [api] listen address of
# data/signaling.local.toml), TANDEM_ADMIN_TOKEN (default: data/admin-token),
# TANDEM_LOCAL_DIR (where deploy/local.sh keeps ./data; default: the repository).
set -euo pipefail
cd "$(dirname "$0")/.."
src=$(pwd)
cd "${TANDEM_LOCAL_DIR:-$src}"

conf=data/signaling.local.toml
[ -f "$conf" ] || conf=$src/config/signaling.toml
get() {
  awk -v sec="$1" -v key="$2" '
    /^[ \t]*\[/ { cur = $0; gsub(/[][ \t]/, "", cur); next }
    cur == sec && $0 ~ "^[ \t]*" key "[ \t]*=" {
      sub(/^[^=]*=[ \t]*/, ""); sub(/[ \t]*#.*$/, ""); gsub(/"/, ""); print; exit
    }' "$conf"
}
api=${TANDEM_API:-http://$(get api listen)}
realm=$(get sip realm)
udp=$(get sip udp_listen)
tcp=$(get sip tcp_listen)
ws=$(get sip ws_listen)
sip_host=${udp:-$tcp}

fail() { echo "demo: $*" >&2; exit 1; }
curl -fsS --max-time 2 -o /dev/null "$api/health" 2>/dev/null ||
  fail "signaling does not answer at $api/health; start it first: bash deploy/local.sh"
if [ -z "${TANDEM_ADMIN_TOKEN:-}" ]; then
  [ -r data/admin-token ] || fail "no admin token: set TANDEM_ADMIN_TOKEN or start with deploy/local.sh (it writes data/admin-token)"
  TANDEM_ADMIN_TOKEN=$(cat data/admin-token)
fi

# `call METHOD PATH BODY [AUTH...]`: prints the body; fails with the server's answer
# on any status but 2xx (and 409 when ALLOW_409=1).
call() {
  local method=$1 path=$2 body=$3; shift 3
  local out status
  out=$(curl -sS --max-time 10 -X "$method" -H 'content-type: application/json' "$@" \
    ${body:+-d "$body"} -w '\n%{http_code}' "$api$path") || fail "$method $path: no answer"
  status=${out##*$'\n'}
  out=${out%$'\n'*}
  case "$status" in
    2??) printf '%s' "$out" ;;
    409) [ "${ALLOW_409:-0}" = 1 ] || fail "$method $path: 409 $out"; printf '%s' "$out" ;;
    *) fail "$method $path: $status $out" ;;
  esac
}
admin=(-H "Authorization: Bearer $TANDEM_ADMIN_TOKEN")
uuid() { cat /proc/sys/kernel/random/uuid; }
pw() { head -c 18 /dev/urandom | base64 | tr -d '/+=\n'; }

if [ -f data/demo.env ]; then
  # shellcheck disable=SC1091
  . data/demo.env
else
  DEMO_PASSWORD=$(pw); CALLER_PASSWORD=$(pw)
  PHONE_ID=$(uuid); LAPTOP_ID=$(uuid); CALLER_ID=$(uuid)
  for login in demo caller; do
    pass=$DEMO_PASSWORD; [ "$login" = caller ] && pass=$CALLER_PASSWORD
    out=$(ALLOW_409=1 call POST /accounts \
      "{\"login\":\"$login\",\"password\":\"$pass\",\"display_name\":\"${login^}\"}" "${admin[@]}")
    case "$out" in
      *'"id"'*) ;;
      *) fail "an account '$login' already exists but data/demo.env is gone; delete it (DELETE $api/accounts/{id}) or start with an empty ./data" ;;
    esac
  done
  umask 077
  cat >data/demo.env <<EOF
DEMO_PASSWORD='$DEMO_PASSWORD'
CALLER_PASSWORD='$CALLER_PASSWORD'
PHONE_ID='$PHONE_ID'
LAPTOP_ID='$LAPTOP_ID'
CALLER_ID='$CALLER_ID'
EOF
  umask 022
fi

# Devices (authorising one twice answers 409, which is fine on a re-run).
ALLOW_409=1 call POST /me/devices "{\"instance_id\":\"urn:uuid:$PHONE_ID\",\"class\":\"mobile\",\"name\":\"phone\"}" \
  -u "demo:$DEMO_PASSWORD" >/dev/null
ALLOW_409=1 call POST /me/devices "{\"instance_id\":\"urn:uuid:$LAPTOP_ID\",\"class\":\"desktop\",\"name\":\"laptop\"}" \
  -u "demo:$DEMO_PASSWORD" >/dev/null
ALLOW_409=1 call POST /me/devices "{\"instance_id\":\"urn:uuid:$CALLER_ID\",\"class\":\"desktop\",\"name\":\"desk\"}" \
  -u "caller:$CALLER_PASSWORD" >/dev/null

turn=$(call POST /me/turn-credentials "" -u "demo:$DEMO_PASSWORD" 2>/dev/null ||
  echo '{"error":"no TURN secret configured ([turn] in the signaling config)"}')

device() { # name login password instance
  cat <<EOF
  $1
    SIP URI      sip:$2@$realm
    server       sip:$sip_host (UDP or TCP)${ws:+, ws://$ws (WebSocket)}
    user         $2
    password     $3
    instance     urn:uuid:$4   (the client must send it as +sip.instance)
    baresip      accounts: <sip:$2@$realm>;auth_pass=$3;regint=600;sipnat=outbound;outbound="sip:$sip_host"
                 config: module uuid.so, and the file uuid holding $4 (no newline)
    Linphone     [misc] uuid=$4, [proxy_0] reg_proxy=<sip:$sip_host;transport=udp>
EOF
}

cat <<EOF

Demo accounts on $api (realm $realm)

account demo (two devices: each rings when someone calls sip:demo@$realm)
$(device "phone (mobile)" demo "$DEMO_PASSWORD" "$PHONE_ID")
$(device "laptop (desktop)" demo "$DEMO_PASSWORD" "$LAPTOP_ID")

account caller (one device, to call demo from)
$(device "desk (desktop)" caller "$CALLER_PASSWORD" "$CALLER_ID")

TURN credential for demo (POST $api/me/turn-credentials):
  $turn

Each client's full settings (baresip, Linphone, sipp, JsSIP in a browser):
README.md, "Connect a SIP client".
The API: $api/openapi.json; the admin token is in data/admin-token.
EOF
