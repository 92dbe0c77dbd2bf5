"""`sdfs mount` / `sdfs umount`: stale-mount clearing, the store and model
opened after any fork, clean shutdown."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
from pathlib import Path

from ..errors import SdfsError

log = logging.getLogger(__name__)


def _fusermount() -> str:
    for name in ("fusermount3", "fusermount"):
        found = shutil.which(name)
        if found:
            return found
    raise SdfsError("neither fusermount3 nor fusermount is installed; install the fuse3 package")


def unmount(mountpoint: str | os.PathLike, lazy: bool = False) -> None:
    args = [_fusermount(), "-u"] + (["-z"] if lazy else []) + [str(mountpoint)]
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SdfsError(f"cannot unmount {mountpoint}: {proc.stderr.strip() or 'fusermount failed'}")


def clear_stale(mountpoint: Path) -> None:
    """A daemon killed hard leaves 'Transport endpoint is not connected'."""
    try:
        os.stat(mountpoint)
    except OSError as error:
        if error.errno == errno.ENOTCONN:
            log.warning("clearing the stale mount left at %s", mountpoint)
            unmount(mountpoint, lazy=True)
        else:
            raise SdfsError(f"mountpoint {mountpoint}: {error.strerror}") from None
    if os.path.ismount(mountpoint):
        raise SdfsError(f"{mountpoint} is already mounted; `sdfs umount {mountpoint}` first")


def mount(args) -> int:
    from fuse import FUSE

    from ..store import Store
    from .encoder import Encoder
    from .filesystem import Filesystem
    from .operations import SdfsOperations

    mountpoint = Path(args.mountpoint)
    mountpoint.mkdir(parents=True, exist_ok=True)
    clear_stale(mountpoint)
    if not args.foreground and os.fork():  # parent returns; the child opens everything
        return 0
    if not args.foreground:
        os.setsid()
    state = {}

    def make_filesystem() -> Filesystem:
        from ..cli import _load_codec

        codec = _load_codec(args)
        identity = codec.vae.identity
        model = {
            "name": identity.name,
            "weights_sha256": identity.weights_sha256.hex(),
            "scaling_factor": round(identity.scaling_factor, 6),
            "latent_channels": identity.latent_channels,
            "spatial_factor": identity.spatial_factor,
        }
        store = Store(args.store, model)
        encoder = Encoder(store, codec)
        fs = Filesystem(store, codec, encoder, cache_bytes=args.cache_size << 20)
        encoder.start()
        state.update(store=store, encoder=encoder)
        return fs

    def on_destroy(fs) -> None:
        state["encoder"].stop(timeout=600)  # finish the batch in hand; the rest stays queued durably
        state["store"].close()

    options = dict(foreground=True, nothreads=False, big_writes=True, max_read=1 << 17,
                   max_write=1 << 17, fsname=f"sdfs:{Path(args.store).resolve()}", subtype="sdfs")
    if args.allow_other:
        options.update(allow_other=True, default_permissions=True)
    try:
        FUSE(SdfsOperations(make_filesystem, on_destroy=on_destroy), str(mountpoint), **options)
    except RuntimeError as error:
        raise SdfsError(f"cannot mount {mountpoint}: {error}") from None
    return 0
