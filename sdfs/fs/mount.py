"""`sdfs mount` / `sdfs umount`: stale-mount clearing, the store and model
opened after any fork, clean shutdown.

What can refuse a mount is checked before anything is created or loaded
(libfuse present, mountpoint an empty folder and not mounted, store not in
use), so a refused mount prints one line and leaves nothing behind. A mount
that fails later (the model, libfuse) removes the folders it made and leaves
the store's lock empty."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..errors import SdfsError
from ..service import notify
from ..store.lock import StoreLock, wait_until_free
from .binding import require_libfuse

log = logging.getLogger(__name__)

# what libfuse 3 (3.12 to 3.14) prints at every start because mfusepy leaves
# its loop configuration at the defaults: noise, not a problem, so kept out of the log
_LIBFUSE_NOISE = ("Ignoring invalid max threads value",)
UMOUNT_WAIT_S = 30  # `sdfs umount` waits this long for the daemon to let go of the store
STOP_WAIT_S = 3  # a stop waits this long for the encoder to end by itself (a commit in progress), then leaves it


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


def umount_command(mountpoint: Path) -> None:
    """`sdfs umount`: what is not an sdfs mount is refused in sdfs's words
    (fusermount only says "Invalid argument")."""
    from .control import FSTYPE, mount_type, store_of

    try:
        os.stat(mountpoint)
    except FileNotFoundError:
        raise SdfsError(f"cannot unmount {mountpoint}: no such folder") from None
    except OSError as error:
        if error.errno != errno.ENOTCONN:
            raise SdfsError(f"cannot unmount {mountpoint}: {error.strerror}") from None
        unmount(mountpoint, lazy=True)  # a dead daemon's mount: clear it
        log.warning("cleared the stale mount left at %s by a daemon that died", mountpoint)
        return
    kind = mount_type(mountpoint)
    if kind is None:
        raise SdfsError(f"{mountpoint} is not mounted; nothing to unmount (`findmnt -t {FSTYPE}` lists sdfs mounts)")
    if kind != FSTYPE:
        raise SdfsError(f"{mountpoint} is a {kind} mount, not an sdfs one; unmount it with umount")
    store = store_of(mountpoint)
    unmount(mountpoint)
    # the daemon stops after the unmount: done once it lets go of the store,
    # so `sdfs umount X && sdfs fsck --repair STORE` finds the store free
    if store is not None and not wait_until_free(store, UMOUNT_WAIT_S):
        log.warning("%s is unmounted, but its daemon is still stopping after %d s and holds the store %s",
                    mountpoint, UMOUNT_WAIT_S, store)


def clear_stale(mountpoint: Path) -> None:
    """Clear a dead daemon's mount, then refuse a mountpoint still in use."""
    clear_stale_only(mountpoint)
    if os.path.ismount(mountpoint):
        raise SdfsError(f"{mountpoint} is already mounted; `sdfs umount {mountpoint}` first")


def check_mountpoint(mountpoint: Path, store: Path) -> None:
    """Refuse, before anything is created or loaded, what libfuse would refuse
    later (fusermount mounts only on an empty folder) or what makes no sense."""
    if mountpoint.exists() or mountpoint.is_symlink():
        if not mountpoint.is_dir():
            raise SdfsError(f"cannot mount on {mountpoint}: not a folder; give an empty folder (or a new path)")
        try:
            entries = sorted(os.listdir(mountpoint))
        except OSError as error:
            raise SdfsError(f"cannot mount on {mountpoint}: {error.strerror}") from None
        if entries:
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise SdfsError(
                f"cannot mount on {mountpoint}: the folder is not empty ({len(entries)} "
                f"{'entry' if len(entries) == 1 else 'entries'}: {shown}); mount on an empty folder, "
                f"as fusermount requires, or move those out first"
            )
    real_store, real_point = Path(os.path.realpath(store)), Path(os.path.realpath(mountpoint))
    if real_point == real_store or real_store in real_point.parents or real_point in real_store.parents:
        raise SdfsError(f"cannot mount {store} on {mountpoint}: the store and the mountpoint must not contain each other")
    if store.exists() and not store.is_dir():
        raise SdfsError(f"store {store} is not a folder; give the store folder first: sdfs mount STORE MOUNTPOINT")


def _make_folder(path: Path) -> Path | None:
    """mkdir -p; the top-most folder it created (to remove on failure), or None."""
    missing = None
    for candidate in [path, *path.parents]:
        if candidate.exists():
            break
        missing = candidate
    path.mkdir(parents=True, exist_ok=True)
    return missing


class _Undo:
    """What a mount made before it was up: removed again if it fails, so a
    failed mount leaves no new store folder, mountpoint or lock behind."""

    def __init__(self):
        self.lock: StoreLock | None = None
        self.made: list[tuple[Path, Path, bool]] = []  # (folder asked for, top-most created, is the store)

    def __call__(self) -> None:
        if self.lock is not None:
            self.lock.release()  # an empty lock file: it names no process
            self.lock = None
        for folder, top, is_store in reversed(self.made):
            try:
                if os.path.ismount(folder):
                    continue
                if is_store:
                    shutil.rmtree(folder)  # made by this mount: only its lock, log or an empty store
                else:
                    os.rmdir(folder)  # a mountpoint: only while empty
                while folder != top:  # and the parents mkdir -p made, while empty
                    folder = folder.parent
                    os.rmdir(folder)
            except OSError as error:
                log.debug("could not remove %s: %s", folder, error)
        self.made.clear()

    def make(self, folder: Path, is_store: bool) -> None:
        top = _make_folder(folder)
        if top is not None:
            self.made.append((folder, top, is_store))


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
        log.info("already unmounting")

    try:
        signal.signal(signal.SIGTERM, already_stopping)
    except ValueError:  # not the main thread (libfuse calls destroy from the loop's thread)
        pass


def mount(args) -> int:
    require_libfuse()  # before mfusepy is imported: it fails on import without the library

    mountpoint, store = Path(args.mountpoint), Path(args.store)
    clear_stale(mountpoint)  # first: a stale mount fails every other call on the path (ENOTCONN)
    check_mountpoint(mountpoint, store)
    undo = _Undo()
    try:
        undo.make(store, is_store=True)
        # one writer per store; taken before the fork (the child inherits the
        # flock), so a refused mount writes nothing to the running one's log
        undo.lock = StoreLock(store, f"the mount at {mountpoint.resolve()}").acquire()
        undo.make(mountpoint, is_store=False)
    except BaseException:
        undo()
        raise
    lock = undo.lock
    status_fd = None
    if not args.foreground:
        # fork before the store, the model or any thread exists; the parent
        # returns once the child says the mount is up, or with its error
        read_fd, status_fd = os.pipe()
        child = os.fork()
        if child:
            os.close(status_fd)
            with os.fdopen(read_fd, "rb") as status:
                message = status.read().decode(errors="replace")
            if message == "ready":
                return 0
            _wait_for_exit(child)
            undo()  # the child has gone: the folders it was given are unused
            raise _reported_error(message)
        os.close(read_fd)
        os.setsid()
        lock.taken_over()  # the lock now names the daemon, not the parent about to exit
        undo.made.clear()  # the parent undoes a failed mount once this process has gone
        _detach_output(store)
        from ..cli import configure_logging

        configure_logging(getattr(args, "verbose", 0), "file")  # timestamps: a log file has no other clock

    def report(message: str) -> None:
        nonlocal status_fd
        if status_fd is not None:
            os.write(status_fd, message.encode())
            os.close(status_fd)
            status_fd = None

    def fail(error: SdfsError) -> SdfsError:
        if status_fd is None:
            undo()  # foreground: nobody else will
        report(f"{error.exit_code} {error}")
        return error

    try:
        notify(f"STATUS=opening the store {args.store}")
        fs, encoder = _open_filesystem(args)
    except SdfsError as error:
        raise fail(error) from None
    except Exception as error:  # e.g. out of memory while loading: still one line for the parent
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise fail(SdfsError(f"cannot start the mount: {type(error).__name__}: {first_line}")) from error

    # resolved: a mountpoint given as a symlink is never itself the mount
    readiness = _Readiness(mountpoint.resolve(), store, encoder.start, report)
    libfuse_stderr = _Captured()

    def on_ready() -> None:
        libfuse_stderr.restore()
        readiness.begin()

    destroyed = threading.Event()

    def on_destroy() -> None:
        # libfuse calls this after the unmount, for `sdfs umount` and SIGTERM alike
        destroyed.set()
        notify("STOPPING=1", f"STATUS=unmounted {mountpoint}; stopping")
        _finish_quietly_on_sigterm()
        log.info("unmounted %s; stopping", mountpoint)
        readiness.stop()
        ended = encoder.stop(timeout=STOP_WAIT_S)  # nothing is committed after this
        in_hand = encoder.in_hand()
        fs.close()
        queued = fs.store.pending_count()
        if ended:
            fs.store.close()
        else:
            fs.store.sync()  # what close() would have made durable (the last commits' meta page)
        lock.release()
        left = f"{queued} files stay queued for the next mount" if queued else "nothing left to encode"
        if ended:
            log.info("stopped; %s", left)
            return
        # the encoder is inside the model, which cannot be interrupted: the
        # process ends around it (the store is crash-safe and nothing is being
        # committed), rather than wait for an encode that can simply be redone,
        # or exit with a thread in torch's C++ (which aborts the process)
        log.info("stopped; abandoned the encode of %d file(s) in hand; %s", in_hand, left)
        logging.shutdown()
        os._exit(0)

    # attr_timeout=0: attributes always come from here, so st_size always equals
    # what a read returns. (Cached for a second, with the encoder's swaps and
    # writes through other names invalidated, stat of 10,000 files took 0.9 s, not 1.4 s; but a file
    # rewritten at once (open O_TRUNC, write, close) while other threads opened
    # it showed st_size 0 now and then, for up to the timeout: 5 to 15 rewrites
    # in 2,000 in bench-like runs, never with attr_timeout=0.)
    # auto_cache + no_auto_inval_data: an open keeps the kernel's page cache of
    # the file unless its size or mtime changed (libfuse asks at each open; the
    # swap changes one of them, see Store.finish_encode), and reads of an open
    # file use those pages without asking: unchanged files are re-read from
    # memory. What reaches an open file's pages without the kernel's knowing is
    # invalidated (fs/kernel_cache.py). entry_timeout=1: names, for a second
    # (libfuse's default).
    # use_ino: st_ino is the store's inode number, so hard links show as one
    # file (cp -a, rsync -H, find -samefile, du count it once); no hard_remove:
    # libfuse then keeps a path for an unlinked open file (fstat(), fchmod()…
    # reach us by path only; with hard_remove they fail with ENOENT/ESTALE).
    # Filesystem.rename removes the name for real and only remembers that
    # path, so no .fuse_hidden* file is ever listed or kept
    # libfuse 3 reads and writes up to 1 MiB a request by itself (max_write is no option there)
    from .binding import fuse_class
    from .operations import SdfsOperations

    options = dict(foreground=True, nothreads=False, use_ino=True, auto_cache=True,
                   attr_timeout=0, entry_timeout=1, fsname=f"sdfs:{store.resolve()}", subtype="sdfs")
    if args.allow_other:
        options.update(allow_other=True, default_permissions=True)
    notify(f"STATUS=mounting {args.store} at {mountpoint}")
    try:
        with libfuse_stderr:  # libfuse and fusermount say why they refuse on stderr only
            fuse_class()(SdfsOperations(fs, on_ready=on_ready, on_destroy=on_destroy), str(mountpoint), **options)
    except RuntimeError as error:
        if destroyed.is_set():  # libfuse 3 returns the signal that ended the loop (SIGTERM): a clean stop
            return 0
        fs.store.close()
        why = libfuse_stderr.reason() or f"libfuse failed ({error})"
        raise fail(SdfsError(f"cannot mount {mountpoint}: {why}")) from None
    return 0


def _reported_error(message: str) -> SdfsError:
    """The child's "EXIT_CODE message" as an error with that exit code, so a
    background mount exits as a foreground one would (4: the VAE cannot be loaded)."""
    code, _, text = message.partition(" ")
    if not code.isdigit() or not text:
        code, text = "1", message or "the mount daemon exited before the mount was ready"
    error = SdfsError(text)
    error.exit_code = int(code)
    return error


def _wait_for_exit(pid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done:
            return
        time.sleep(0.05)


class _Captured:
    """fd 2 into a temporary file while libfuse mounts: libfuse and fusermount
    print why they refuse (e.g. "fuse: device not found") on stderr, which a
    background mount has pointed at its log. Restored, with what was caught
    passed on, once the mount answers (init) or fails."""

    def __init__(self):
        self._file = None
        self._saved = None
        self._text = ""
        self._lock = threading.Lock()

    def __enter__(self) -> "_Captured":
        sys.stderr.flush()
        self._file = tempfile.TemporaryFile()
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        return self

    def restore(self, pass_on: bool = True) -> None:
        with self._lock:
            if self._saved is None:
                return
            sys.stderr.flush()
            os.dup2(self._saved, 2)
            os.close(self._saved)
            self._saved = None
            self._file.seek(0)
            text = self._file.read().decode(errors="replace")
            self._text = "".join(line for line in text.splitlines(keepends=True) if not line.startswith(_LIBFUSE_NOISE))
            self._file.close()
            if pass_on and self._text:
                os.write(2, self._text.encode())

    def __exit__(self, kind, error, tb) -> None:
        self.restore(pass_on=kind is None)

    def reason(self) -> str:
        """What was printed, as one line (libfuse often adds a hint line)."""
        lines = list(dict.fromkeys(line.strip() for line in self._text.splitlines() if line.strip()))
        text = "; ".join(lines)
        return text if len(text) <= 400 else text[:397] + "..."


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
