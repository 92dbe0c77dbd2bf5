"""`sdfs mount` / `sdfs umount`: stale-mount clearing, the store and model
opened after any fork, clean shutdown."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from ..errors import SdfsError
from ..service import notify
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
    """Clear a dead daemon's mount, then refuse a mountpoint still in use."""
    clear_stale_only(mountpoint)
    if os.path.ismount(mountpoint):
        raise SdfsError(f"{mountpoint} is already mounted; `sdfs umount {mountpoint}` first")


def clear_stale_only(mountpoint: Path) -> None:
    """A daemon killed hard leaves 'Transport endpoint is not connected'; clear
    that, touch nothing else (a service's ExecStartPre runs this)."""
    try:
        os.stat(mountpoint)
    except FileNotFoundError:
        return
    except OSError as error:
        if error.errno != errno.ENOTCONN:
            raise SdfsError(f"mountpoint {mountpoint}: {error.strerror}") from None
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


def _answers(mountpoint: Path) -> bool:
    """The mount is up and the kernel gets answers: stat returns sdfs's root
    (FUSE_ROOT_ID, inode 1) on a mounted filesystem."""
    try:
        return os.path.ismount(mountpoint) and os.stat(mountpoint).st_ino == 1
    except OSError:
        return False


class _Readiness:
    """fusepy's init() runs while the kernel's FUSE_INIT is still unanswered:
    a stat from there would deadlock, and "ready" said there would come before
    the mount answers. init() starts this short-lived thread instead; it waits
    until the mountpoint answers, then starts the encoder and tells the
    forking parent and systemd (READY=1). destroy() may come first (an
    unmount right away): ``stop`` makes sure nothing starts after it."""

    def __init__(self, mountpoint: Path, store: Path, start, report):
        self.mountpoint, self.store = mountpoint, store
        self._start, self._report = start, report
        self._lock = threading.Lock()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="sdfs-ready", daemon=True)

    def begin(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        started = time.monotonic()
        while not _answers(self.mountpoint):
            if self._stopping:
                return
            time.sleep(0.02)
        with self._lock:
            if self._stopping:
                return
            self._start()
        elapsed = time.monotonic() - started
        log.info("mounted %s at %s (answering after %.2f s)", self.store, self.mountpoint, elapsed)
        self._report("ready")
        notify("READY=1", f"STATUS=mounted {self.store} at {self.mountpoint}", f"MAINPID={os.getpid()}")

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)


def _finish_quietly_on_sigterm() -> None:
    """libfuse puts SIGTERM back to its default before it calls destroy();
    under systemd, ExecStop's unmount is followed by a SIGTERM that would then
    kill the encoder mid-batch. Once unmounting, a SIGTERM only says so."""

    def already_stopping(signum, frame):
        log.info("already unmounting: finishing the encode batch in hand first")

    try:
        signal.signal(signal.SIGTERM, already_stopping)
    except ValueError:  # not the main thread (libfuse calls destroy from the loop's thread)
        pass


def mount(args) -> int:
    from fuse import FUSE

    mountpoint = Path(args.mountpoint)
    clear_stale(mountpoint)  # first: a stale mount fails every other call on the path (ENOTCONN)
    mountpoint.mkdir(parents=True, exist_ok=True)
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
        from ..cli import configure_logging

        configure_logging(getattr(args, "verbose", 0), "file")  # timestamps: a log file has no other clock

    def report(message: str) -> None:
        nonlocal status_fd
        if status_fd is not None:
            os.write(status_fd, message.encode())
            os.close(status_fd)
            status_fd = None

    try:
        notify(f"STATUS=opening the store {args.store}")
        lock = StoreLock(args.store, f"the mount at {mountpoint.resolve()}").acquire()
        fs, encoder = _open_filesystem(args)
    except SdfsError as error:
        report(str(error))
        raise

    # resolved: a mountpoint given as a symlink is never itself the mount
    readiness = _Readiness(mountpoint.resolve(), Path(args.store), encoder.start, report)

    def on_ready() -> None:
        readiness.begin()

    def on_destroy() -> None:
        # libfuse calls this after the unmount, for `sdfs umount` and SIGTERM alike
        notify("STOPPING=1", f"STATUS=unmounted {mountpoint}; finishing the encode batch in hand")
        _finish_quietly_on_sigterm()
        log.info("unmounted %s; finishing the encode batch in hand", mountpoint)
        readiness.stop()
        encoder.stop(timeout=600)  # finish the batch in hand; the rest stays queued, durably
        queued = fs.store.pending_count()
        fs.store.close()
        lock.release()
        log.info("stopped; %s", f"{queued} files stay queued for the next mount" if queued else "nothing left to encode")

    # attr_timeout=0: a file's size changes when the encoder swaps in the
    # reconstruction, and the kernel must not serve a cached st_size then
    options = dict(foreground=True, nothreads=False, big_writes=True, max_read=1 << 17, attr_timeout=0,
                   max_write=1 << 17, fsname=f"sdfs:{Path(args.store).resolve()}", subtype="sdfs")
    if args.allow_other:
        options.update(allow_other=True, default_permissions=True)
    from .operations import SdfsOperations

    notify(f"STATUS=mounting {args.store} at {mountpoint}")
    try:
        FUSE(SdfsOperations(fs, on_ready=on_ready, on_destroy=on_destroy), str(mountpoint), **options)
    except RuntimeError as error:
        report(f"cannot mount {mountpoint}: libfuse failed ({error})")
        raise SdfsError(f"cannot mount {mountpoint}: libfuse failed ({error})") from None
    return 0


def _open_filesystem(args):
    from ..cli import _load_codec
    from ..ingest import model_for_store
    from ..store import Store
    from .encoder import Encoder
    from .filesystem import Filesystem

    log.info("loading VAE %s on %s", args.model, args.device)
    notify(f"STATUS=loading VAE {args.model} on {args.device} (a first start may download it)")
    codec = _load_codec(args)
    store = Store(args.store, model_for_store(codec.vae.identity))
    encoder = Encoder(store, codec)
    return Filesystem(store, codec, encoder, cache_bytes=args.cache_size << 20), encoder
