#!/usr/bin/env bash
# Installs sdfs (with --tests, also everything its tests need) into the current Python
# environment (activate a venv first if you want one). Run as root or with sudo
# for the Debian packages.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # fuse3: the mount (libfuse 3 and fusermount3); rsync and libglib2.0-bin (gio):
    # copy-tool tests; systemd: `systemd-analyze verify` of the unit (a test)
    apt-get install -y -qq fuse3 rsync libglib2.0-bin systemd >/dev/null
fi

# Without a GPU, take the CPU build of torch first: an unpinned torch pulls a
# CUDA build of several GB. With a GPU, the pyproject range picks a CUDA build.
if ! command -v nvidia-smi >/dev/null && ! python3 -c "import torch" 2>/dev/null; then
    python3 -m pip install -q "torch==2.13.0"
fi
# --tests: also what the tests need (pytest, and the `ray` extra: `sdfs import --ray` is tested too).
# Without it, sdfs alone: the mount never needs Ray.
if [ "${1:-}" = "--tests" ]; then
    python3 -m pip install -q -e ".[test]"
else
    python3 -m pip install -q -e .
fi

# `sdfs mount` loads libfuse 3 through mfusepy; say now, not at the first mount
if ! python3 -c "import ctypes.util, sys; sys.exit(ctypes.util.find_library('fuse3') is None)"; then
    echo "setup: libfuse 3 (libfuse.so.3) is missing and sdfs mount needs it: install fuse3" \
         "(Debian, Ubuntu) or fuse3-libs (Fedora), then run this again" >&2
    exit 1
fi
echo "sdfs installed: $(command -v sdfs)"
