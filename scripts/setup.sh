#!/usr/bin/env bash
# Set up this machine for blobfs: system packages (as root), the .venv, the `blobfs` link.
# Idempotent and quick when nothing changed; `make setup` runs it, and every make target that
# needs the venv depends on that.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
venv=$root/.venv
stamp=$venv/.installed

say() { printf 'setup: %s\n' "$*"; }

# --- system packages ------------------------------------------------------------------------
# fuse3: fusermount3 and mount.fuse3 for the mount; libfuse3-dev + pkg-config + gcc: building
# pyfuse3 from source; docker-registry: the real OCI registry the tests start; skopeo: an
# independent registry client the interop tests and benchmarks compare against; python3-venv:
# `python -m venv` when python3 is Debian's own.
apt_pkgs=(fuse3 libfuse3-dev pkg-config gcc docker-registry skopeo python3-venv)

python=${PYTHON:-python3}
has_headers() {
    "$1" -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
        2>/dev/null
}
if ! command -v "$python" >/dev/null 2>&1; then
    apt_pkgs+=(python3 python3-dev) # no Python at all: take Debian's (3.11 on Debian 12)
    python=/usr/bin/python3
elif ! has_headers "$python"; then
    apt_pkgs+=(python3-dev) # Python.h, to build pyfuse3
fi

missing=()
for p in "${apt_pkgs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then
        say "installing system packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        say "WARNING: missing system packages (run as root to install): ${missing[*]}" >&2
    fi
fi

# --- virtualenv -----------------------------------------------------------------------------
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    say "ERROR: $python is $("$python" -V 2>&1); blobfs needs Python >= 3.11" >&2
    exit 1
fi
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c '' 2>/dev/null; then
    say "creating .venv with $("$python" -V 2>&1)"
    rm -rf "$venv"
    "$python" -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    say "installing blobfs and dev tools into .venv (pip install -e '.[dev]')"
    "$venv/bin/python" -m pip install -qq --disable-pip-version-check -e '.[dev]'
    touch "$stamp"
fi

# --- bytecode ------------------------------------------------------------------------------------
# A stale or missing .pyc makes every command recompile the module at start (a mount then takes
# ~0.3 s longer), and nothing rewrites it where PYTHONDONTWRITEBYTECODE is set. Cheap when current.
"$venv/bin/python" -m compileall -q -j 0 blobfs >/dev/null

# --- `blobfs` on root's PATH ------------------------------------------------------------------
# mount.fuse3 looks the file-system type's program up on root's PATH.
if [ "$(id -u)" -eq 0 ] && [ -d /usr/local/bin ]; then
    target=$venv/bin/blobfs
    if [ "$(readlink /usr/local/bin/blobfs 2>/dev/null || true)" != "$target" ]; then
        say "linking /usr/local/bin/blobfs -> $target"
        ln -sfn "$target" /usr/local/bin/blobfs
    fi
fi

say "ok"
