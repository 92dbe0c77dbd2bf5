#!/usr/bin/env bash
# Installs everything sdfs and its tests need into the current Python
# environment (activate a venv first if you want one). Run as root or with sudo
# for the Debian packages.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # fuse3/libfuse2: the mount; rsync and libglib2.0-bin (gio): copy-tool tests;
    # systemd: `systemd-analyze verify` of the unit (a test)
    apt-get install -y -qq fuse3 libfuse2 rsync libglib2.0-bin systemd >/dev/null
fi

# Without a GPU, take the CPU build of torch first: an unpinned torch pulls a
# CUDA build of several GB. With a GPU, the pyproject range picks a CUDA build.
if ! command -v nvidia-smi >/dev/null && ! python3 -c "import torch" 2>/dev/null; then
    python3 -m pip install -q "torch==2.13.0"
fi
python3 -m pip install -q -e ".[test]"
echo "sdfs installed: $(command -v sdfs)"
