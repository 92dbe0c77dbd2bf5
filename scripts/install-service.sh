#!/usr/bin/env bash
# Installs the systemd unit sdfs@.service for the mount NAME:
#   scripts/install-service.sh NAME [--store DIR] [--mountpoint DIR] [--root DIR]
# - links the sdfs console script of this Python environment (pip, venv,
#   pyenv) to /usr/local/bin/sdfs, the absolute path the unit runs (a unit gets
#   no PATH or HOME of yours); SDFS_BIN=/path/to/sdfs picks another one
# - installs systemd/sdfs@.service into /etc/systemd/system
# - writes /etc/sdfs/NAME.toml if there is none (default store
#   /var/lib/sdfs/NAME, mountpoint /mnt/NAME); an existing one is kept
# - prints the systemctl line that starts it
# --root DIR installs under DIR instead of / (packaging, tests): no daemon-reload.
# Run as root (or with sudo) after scripts/setup.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"

usage() { echo "usage: $0 NAME [--store DIR] [--mountpoint DIR] [--root DIR]" >&2; exit 2; }
[[ $# -ge 1 && $1 != -* ]] || usage
name=$1; shift
# the instance name becomes a file name and the %i of the unit: keep it plain
[[ $name =~ ^[A-Za-z0-9_.-]+$ && $name != .* ]] || { echo "$0: NAME must be letters, digits, . _ - (got '$name')" >&2; exit 2; }
store="/var/lib/sdfs/$name"
mountpoint="/mnt/$name"
root=""
while [[ $# -gt 0 ]]; do
    case $1 in
        --store) store=${2:?}; shift 2 ;;
        --mountpoint) mountpoint=${2:?}; shift 2 ;;
        --root) root=$(realpath -m "${2:?}"); shift 2 ;;
        *) usage ;;
    esac
done
[[ $store == /* && $mountpoint == /* ]] || { echo "$0: --store and --mountpoint must be absolute paths" >&2; exit 2; }

# the console script itself, not a pyenv shim (a shim needs your shell's setup)
bin=${SDFS_BIN:-$(python3 -c 'import os, sysconfig; print(os.path.join(sysconfig.get_path("scripts"), "sdfs"))')}
if [[ ! -x $bin ]]; then
    echo "$0: no sdfs console script at $bin; run scripts/setup.sh first (or set SDFS_BIN)" >&2
    exit 1
fi
bin=$(realpath "$bin")
"$bin" --version >/dev/null

link="$root/usr/local/bin/sdfs"
mkdir -p "$(dirname "$link")"
if [[ -e $link && ! -L $link ]]; then
    # pip into the system Python puts the console script here itself
    echo "kept $link (not a link; it is what the unit runs)"
elif [[ -L $link && $(realpath "$link" 2>/dev/null) == "$bin" ]]; then
    echo "kept $link -> $bin"
else
    ln -sfn "$bin" "$link"
    echo "linked $link -> $bin"
fi

install -D -m 0644 "$here/systemd/sdfs@.service" "$root/etc/systemd/system/sdfs@.service"
echo "installed $root/etc/systemd/system/sdfs@.service"

config="$root/etc/sdfs/$name.toml"
if [[ -e $config ]]; then
    echo "kept $config"
else
    mkdir -p "$(dirname "$config")"
    cat >"$config" <<EOF
# sdfs@$name.service: the options of \`sdfs mount\` (see \`sdfs mount --help\`),
# dashes or underscores; unknown keys stop the service with a message.
store = "$store"
mountpoint = "$mountpoint"
# model = "stabilityai/sd-vae-ft-mse"   # hub id[@revision], diffusers folder or weights file
device = "auto"                          # auto, cpu or cuda[:N]
# decoder = "tiny"                       # TAESD for reads: much faster on a CPU
# quality = "compact"
# fidelity-floor = "23:0.65"
# cache-size = 512                       # MB of decoded images
# allow-other = true                     # let other users in (kernel permission checks)
EOF
    chmod 0644 "$config"
    echo "wrote $config"
fi

if [[ -z $root && -d /run/systemd/system ]]; then
    systemctl daemon-reload
fi
echo
echo "start it now and at every boot with:"
echo "    systemctl enable --now sdfs@$name"
echo "then: systemctl status sdfs@$name; journalctl -u sdfs@$name -p info"
