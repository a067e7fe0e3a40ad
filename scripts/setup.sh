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
# gcc, libc6-dev: build the multi-buffer MD5 library (module_utils/md5_lanes) the copy engine uses.
DEB_PKGS=(zookeeper postgresql-15 postgresql-contrib nginx-light default-jre-headless curl gcc libc6-dev)
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

# The copy engine's multi-buffer MD5 (module_utils/md5_lanes) compiles itself into
# ~/.cache/manta-ops on first use; build it now so no test or run pays for it, and say
# if it cannot be (the engine then uses hashlib, about 2.5x slower on 1 MiB objects).
"$VENV/bin/python" - <<'PY' || say "warning: could not check the MD5 lanes library"
from ansible_collections.manta.ops.plugins.module_utils import md5_lanes
e = md5_lanes.engine()
import sys
print(f"setup: MD5 lanes: {e.isa}, {e.lanes} lanes" if e else
      f"setup: warning: MD5 lanes unavailable ({md5_lanes.last_error}); the copy engine uses hashlib",
      file=sys.stderr)
PY

# --- awx.awx (playbooks/awx/: AWX as code) ----------------------------------
# No Galaxy here: the collection comes from PyPI, out of the `ansible` community
# package's wheel (8.7.0 is the last release that bundles awx.awx; 22.7.0).
# Only ansible_collections/awx/awx is extracted, next to manta/ops.
AWX_WHEEL="ansible-8.7.0-py3-none-any.whl"
AWX_SHA256="fa7d3bc2dfdb0ab031df645814ff86b15cb5ec041bfbee4041f795abfa5646ca"
AWX_DIR="$VENV/collections/ansible_collections/awx/awx"
if [ "$(cat "$AWX_DIR/.from-wheel" 2>/dev/null)" != "$AWX_SHA256" ]; then
  say "installing awx.awx from the PyPI ansible==8.7.0 wheel"
  dl=$(mktemp -d)
  printf 'ansible==8.7.0 --hash=sha256:%s\n' "$AWX_SHA256" > "$dl/req.txt"
  "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps --require-hashes -d "$dl" -r "$dl/req.txt"
  rm -rf "$AWX_DIR"
  "$VENV/bin/python" - "$dl/$AWX_WHEEL" "$VENV/collections" <<'PY'
import sys, zipfile
wheel, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    z.extractall(dest, [n for n in z.namelist() if n.startswith("ansible_collections/awx/awx/")])
PY
  echo "$AWX_SHA256" > "$AWX_DIR/.from-wheel"
  rm -rf "$dl"
fi

# --- ansible-test's pip bootstrap, provided locally -------------------------
# `ansible-test sanity` makes a venv per test and bootstraps pip in it with
# get-pip-<v>.py downloaded from a host we cannot reach. It uses a cached copy
# at ~/.ansible/test/cache/get_pip_<v>.py when present: ours runs ensurepip (in
# a subprocess, so pip keeps its configured indexes and CA) and then pip
# installs the requested pins, minus get-pip's own --no-setuptools/--no-wheel.
pip_v=$("$VENV/bin/python" - <<'PY'
import re, pathlib, ansible_test
src = pathlib.Path(ansible_test.__file__).parent / "_internal" / "python_requirements.py"
m = re.search(r"default_packages = dict\(\s*pip='([0-9.]+)'", src.read_text())
print(m.group(1) if m else "")
PY
)
if [ -n "$pip_v" ]; then
  GETPIP="$HOME/.ansible/test/cache/get_pip_${pip_v//./_}.py"
  GETPIP_BODY='# ansible-test pip bootstrap written by manta.ops scripts/setup.sh (offline stand-in for get-pip.py)
import subprocess, sys
subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade"])
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
if args:
    subprocess.check_call([sys.executable, "-m", "pip", "install"] + args)'
  if [ "$(cat "$GETPIP" 2>/dev/null)" != "$GETPIP_BODY" ]; then
    mkdir -p "$(dirname "$GETPIP")"
    printf '%s\n' "$GETPIP_BODY" > "$GETPIP"
    rm -f "$GETPIP.download"
  fi
else
  say "warning: could not read ansible-test's pip version; sanity tests may try to download get-pip"
fi

# --- node-fash oracle (interop tests and benchmarks) ------------------------
if [ "$want_oracle" = 1 ]; then
  ORACLE="$VENV/fash-oracle"
  SRC="$ROOT/tests/oracle/fash"   # our manifest: node-fash 3.0.1 from the registry
  if [ -f "$SRC/package.json" ] && command -v npm >/dev/null; then
    if [ ! -x "$ORACLE/node_modules/.bin/fash" ] || ! cmp -s "$SRC/package.json" "$ORACLE/package.json"; then
      say "installing node-fash oracle from the npm registry"
      rm -rf "$ORACLE"; mkdir -p "$ORACLE"
      cp "$SRC/package.json" "$ORACLE/"
      (cd "$ORACLE" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
    fi
  else
    say "warning: node-fash oracle not installed (need npm)"
  fi
fi
