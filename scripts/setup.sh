#!/usr/bin/env bash
# Idempotent set-up for manta.ops: Debian packages, a Python >= 3.12 venv with
# the pinned requirements, the collection on the venv's collections path, and
# the node-fash oracle. On a machine that has everything it takes a second or two.
#
# Usage: scripts/setup.sh [--no-oracle]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
want_oracle=1
[ "${1:-}" = "--no-oracle" ] && want_oracle=0

say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

# --- Debian packages ------------------------------------------------------
# zookeeper: the lab's ZooKeeper 3.8; postgresql-15: the manatee peers;
# nginx-light: the storage nodes (mako is nginx, with the dav module);
# libleveldb-dev: not needed by plyvel's wheel, but gives leveldbutil for debugging.
DEB_PKGS=(zookeeper postgresql-15 postgresql-contrib nginx-light default-jre-headless curl)
missing=()
for p in "${DEB_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  command -v apt-get >/dev/null || die "Debian packages missing (${missing[*]}) and apt-get not found; install them by hand."
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  say "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Debian packages enable system services we do not use; the lab runs its
# own instances on loopback ports, so a distro nginx on :80 is only in the way.
for svc in nginx zookeeper; do
  if command -v systemctl >/dev/null && systemctl is-enabled "$svc" >/dev/null 2>&1; then
    systemctl disable --now "$svc" >/dev/null 2>&1 || true
  fi
done

# --- Python >= 3.12 -------------------------------------------------------
find_python() {
  local c v
  for c in "${PYTHON:-}" python3.13 python3.12 \
           "$HOME"/.pyenv/versions/3.13*/bin/python3.13 "$HOME"/.pyenv/versions/3.12*/bin/python3.12 \
           /usr/local/bin/python3.13 /usr/local/bin/python3.12 /usr/bin/python3.13 /usr/bin/python3.12 python3; do
    [ -n "$c" ] || continue
    command -v "$c" >/dev/null 2>&1 || [ -x "$c" ] || continue
    v=$("$c" -c 'import sys; print(int(sys.version_info >= (3, 12)))' 2>/dev/null) || continue
    [ "$v" = 1 ] && { command -v "$c" || echo "$c"; return 0; }
  done
  return 1
}

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys; assert sys.version_info >= (3, 12)' 2>/dev/null; then
  PY=$(find_python) || die "no Python >= 3.12 found. Install one (pyenv install 3.12, or apt-get install python3.12 python3.12-venv) or set PYTHON=/path/to/python3.12."
  say "creating venv with $PY"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
fi

req_sum=$(cat "$ROOT/requirements.txt" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" != "$req_sum" ]; then
  say "installing pinned Python packages"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$ROOT/requirements.txt"
  echo "$req_sum" > "$VENV/.requirements.sha256"
fi

# --- the collection, importable as ansible_collections.manta.ops -------------
COLL="$VENV/collections/ansible_collections/manta"
mkdir -p "$COLL"
[ "$(readlink "$COLL/ops" 2>/dev/null)" = "$ROOT" ] || ln -sfn "$ROOT" "$COLL/ops"
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
printf '%s\n%s\n' "$VENV/collections" "$ROOT/lab" > "$site/manta_ops.pth"

# Console entry points installed into the venv.
write_entry() {  # name module
  local f="$VENV/bin/$1"
  local body="#!$VENV/bin/python
import sys
from $2 import main
sys.exit(main())"
  [ "$(cat "$f" 2>/dev/null)" = "$body" ] || { printf '%s\n' "$body" > "$f"; chmod +x "$f"; }
}
write_entry lab manta_lab.cli
write_entry manta-fash ansible_collections.manta.ops.plugins.module_utils.fash.cli

# --- node-fash oracle (interop tests and benchmarks) ------------------------
if [ "$want_oracle" = 1 ]; then
  ORACLE="$VENV/fash-oracle"
  SRC="$ROOT/../shared/oracles/fash"
  if [ -f "$SRC/package.json" ] && command -v npm >/dev/null; then
    if [ ! -x "$ORACLE/node_modules/.bin/fash" ] || ! cmp -s "$SRC/package.json" "$ORACLE/package.json"; then
      say "installing node-fash oracle from the npm registry"
      rm -rf "$ORACLE"; mkdir -p "$ORACLE"
      cp "$SRC/package.json" "$ORACLE/"
      (cd "$ORACLE" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
    fi
  else
    say "warning: node-fash oracle not installed (need ../shared/oracles/fash and npm)"
  fi
fi
