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
from ..store.lock import StoreLock

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


def clear_stale_only(mountpoint: Path) -> None:
    """For a service's ExecStartPre: clear a dead daemon's mount, touch nothing else."""
    try:
        os.stat(mountpoint)
    except OSError as error:
        if error.errno == errno.ENOTCONN:
            log.warning("clearing the stale mount left at %s", mountpoint)
            unmount(mountpoint, lazy=True)


def _detach_output(store: Path) -> None:
    """A daemon must not hold its caller's terminal or pipes: log to the store."""
    store.mkdir(parents=True, exist_ok=True)
    log_fd = os.open(store / "sdfs.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    null_fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_fd, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(null_fd)
    os.close(log_fd)


def mount(args) -> int:
    from fuse import FUSE

    mountpoint = Path(args.mountpoint)
    mountpoint.mkdir(parents=True, exist_ok=True)
    clear_stale(mountpoint)
    status_fd = None
    if not args.foreground:
        # fork before the store, the model or any thread exists; the parent
        # returns once the child says the mount is up, or with its error
        read_fd, status_fd = os.pipe()
        if os.fork():
            os.close(status_fd)
            with os.fdopen(read_fd, "rb") as status:
                message = status.read().decode(errors="replace")
            if message == "ready":
                return 0
            raise SdfsError(message or "the mount daemon exited before the mount was ready")
        os.close(read_fd)
        os.setsid()
        _detach_output(Path(args.store))

    def report(message: str) -> None:
        nonlocal status_fd
        if status_fd is not None:
            os.write(status_fd, message.encode())
            os.close(status_fd)
            status_fd = None

    try:
        lock = StoreLock(args.store, f"the mount at {mountpoint.resolve()}").acquire()
        fs, encoder = _open_filesystem(args)
    except SdfsError as error:
        report(str(error))
        raise

    def on_ready() -> None:
        encoder.start()
        report("ready")

    def on_destroy() -> None:
        encoder.stop(timeout=600)  # finish the batch in hand; the rest stays queued, durably
        fs.store.close()
        lock.release()

    # attr_timeout=0: a file's size changes when the encoder swaps in the
    # reconstruction, and the kernel must not serve a cached st_size then
    options = dict(foreground=True, nothreads=False, big_writes=True, max_read=1 << 17, attr_timeout=0,
                   max_write=1 << 17, fsname=f"sdfs:{Path(args.store).resolve()}", subtype="sdfs")
    if args.allow_other:
        options.update(allow_other=True, default_permissions=True)
    from .operations import SdfsOperations

    try:
        FUSE(SdfsOperations(fs, on_ready=on_ready, on_destroy=on_destroy), str(mountpoint), **options)
    except RuntimeError as error:
        report(f"cannot mount {mountpoint}: libfuse failed ({error})")
        raise SdfsError(f"cannot mount {mountpoint}: libfuse failed ({error})") from None
    return 0


def _open_filesystem(args):
    from ..cli import _load_codec
    from ..store import Store
    from .encoder import Encoder
    from .filesystem import Filesystem

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
    return Filesystem(store, codec, encoder, cache_bytes=args.cache_size << 20), encoder
