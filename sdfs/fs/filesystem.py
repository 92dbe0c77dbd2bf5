"""The filesystem's logic as a plain class (no FUSE): paths, handles, file
types and hard links, an open file's changes, the read cache.
fs/operations.py only translates calls.

Errors are raised as OSError(errno); the FUSE layer passes the errno on.
Open files are tracked by handle, so renames and unlinks of open files work.
All handles of one inode (whatever name opened it) share one OpenFile and its
FileContent (fs/content.py), as all descriptors of a file share its pages:
what one handle writes another reads, and a truncate by name (how the kernel
sends O_TRUNC) reaches the same bytes.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import logging
import os
import re
import stat
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from cachetools import LRUCache

from .. import memory
from ..codec import container
from ..codec.images import HEAD_BYTES
from ..errors import SdfsError
from ..ingest import VERDICT, staged_notes
from ..store import CHUNK, DIR, KIND_NAMES, LATENT, NAME_MAX, PENDING, ROOT, SPECIAL, SYMLINK, VERBATIM, Store
from ..store.store import now_ns
from .buffer import WriteBuffer
from .content import FileContent
from .kernel_cache import KernelCache

log = logging.getLogger(__name__)

SPOOL_IN_MEMORY = 8 << 20  # a larger local copy of a file spills to the store's tmp/ folder
RELEASE_AFTER = 8 << 20  # a file this big leaves freed memory behind: hand it back when it is committed
# utimensat's special values, as libfuse passes them on (tv_sec 0): mfusepy with use_ns gives the nanoseconds
UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2
READ_ONLY_PREFIX = "user.sdfs."
DAEMON_XATTR = READ_ONLY_PREFIX + "daemon"  # on the root: JSON of daemon_state()
# the name libfuse moves an open file to when its last name is removed (see Filesystem.rename)
HIDDEN_NAME = re.compile(rb"\.fuse_hidden[0-9a-f]{16}")


def fail(code: int, what: str = "") -> OSError:
    return OSError(code, os.strerror(code), what)


_STORE_ERRNOS = {
    FileNotFoundError: errno.ENOENT,
    FileExistsError: errno.EEXIST,
    IsADirectoryError: errno.EISDIR,
    NotADirectoryError: errno.ENOTDIR,
}


@contextlib.contextmanager
def store_errors(path: str):
    """The store raises FileNotFoundError & co.; callers need their errnos."""
    try:
        yield
    except OSError as error:
        raise fail(error.errno or _STORE_ERRNOS.get(type(error), errno.EIO), path) from None


def _name(part: str, path: str) -> bytes:
    """One name of a path, as stored; longer than NAME_MAX bytes is ENAMETOOLONG, as on ext4."""
    name = part.encode("utf-8", "surrogateescape")
    if len(name) > NAME_MAX:
        raise fail(errno.ENAMETOOLONG, path)
    return name


class _Rewritten(Exception):
    """A latent file was rewritten between reading its inode and its record:
    look again (its new content is in the open file's FileContent or the store)."""


@dataclass(eq=False)
class OpenFile:
    """An inode while any handle has it open, shared by all of them.
    ``content`` exists once the file is being changed, or once the encoder
    replaced the stored bytes under open readers (they keep what they opened)."""

    ino: int
    refs: int = 0
    content: FileContent | None = None
    mtime_ns: int | None = None  # of the last write, or as set by utimens while open
    changed_ns: int = 0  # when it was last written or truncated (its ctime until the commit)
    lock: threading.Lock = field(default_factory=threading.Lock)  # content and commits

    @property
    def dirty(self) -> bool:
        """Holds changes the store does not have yet."""
        return self.content is not None and self.content.changed


@dataclass(eq=False)
class Handle:
    file: OpenFile
    writable: bool
    counted: bool = False  # its cache hit or miss is counted (once per open, not per read call)
    # a reconstruction too large for the cache, kept while this handle is open
    # so that it is decoded once per open, not once per read call
    decoded: tuple[int, bytes] | None = None

    @property
    def ino(self) -> int:
        return self.file.ino


class Filesystem:
    def __init__(self, store: Store, codec=None, encoder=None, cache_bytes: int = 512 << 20):
        self.store = store
        self.codec = codec
        self.encoder = encoder
        self.kernel = KernelCache()  # what the kernel may hold of each file, and what drops it
        # one entry per inode, (generation, reconstruction): a rewritten file's
        # old reconstruction goes at once instead of ageing out of the LRU
        self.cache = LRUCache(maxsize=cache_bytes, getsizeof=lambda entry: len(entry[1]))
        self.cache_hits = self.cache_misses = 0
        self.decodes = 0
        self._cache_lock = threading.Lock()
        self._decoding: dict[tuple[int, int], Future] = {}  # decodes in flight, shared by their readers
        # writers' uploads (fs/content.py), one at a time: LMDB has one writer anyway
        self._uploader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sdfs-upload")
        self._handles: dict[int, Handle] = {}
        self._open: dict[int, OpenFile] = {}  # both shrink at release: no entry outlives its last handle
        self._fh = itertools.count(1)
        # (directory, libfuse's hidden name) -> inode: open files whose name was removed (see rename)
        self._hidden: dict[tuple[int, bytes], int] = {}
        # lock order: self._lock, then an OpenFile's lock (never the other way round);
        # nobody holds self._lock across a store transaction
        self._lock = threading.Lock()
        self._swaps: set[int] = set()  # unopened files whose stored bytes the encoder is replacing
        self._swapped = threading.Condition(self._lock)
        self.spool_dir = store.path / "tmp"
        self.spool_dir.mkdir(exist_ok=True)
        for ino in store.orphans():  # names removed while open before a crash
            store.purge(ino)
        abandoned = store.drop_abandoned_uploads()  # writes in progress when a mount died: never closed
        if abandoned:
            log.info("dropped the unfinished writes of %d file(s) that were open when the last mount ended", abandoned)
        if encoder is not None:
            encoder.attach(swap_guard=self._swapping, busy=self._dirty_files)

    def close(self) -> None:
        """At unmount, once every file is released: no upload may outlive the store."""
        self._uploader.shutdown(wait=True)

    @contextlib.contextmanager
    def _swapping(self, ino: int, generation: int):
        """Held while the encoder replaces a file's stored bytes. Handles open
        on it keep reading the bytes they opened: those are copied into the
        shared buffer first. A file nobody has open cannot be opened meanwhile."""
        with self._lock:
            file = self._open.get(ino)
            if file is None:
                self._swaps.add(ino)  # an open() of it waits (see _new_handle); nothing else does
            else:
                file.refs += 1  # keeps it registered: handles opened meanwhile join it, and wait for its lock
        if file is None:
            try:
                yield  # nobody has it open, so no page of it is in use: the next open checks size and mtime
            finally:
                with self._lock:
                    self._swaps.discard(ino)
                    self._swapped.notify_all()
            return
        try:
            with file.lock:
                content = file.content
                if content is None or content.local is None:
                    inode = self.store.inode(ino)
                    if inode is not None and inode.generation == generation:  # else the commit is refused anyway
                        local = self._filled_buffer(inode)
                        if content is None:
                            file.content = FileContent(self.store, ino, inode.size, inode.generation, local, uploader=self._uploader)
                        else:  # a writer's unchanged chunks are read from the store: they are about to go
                            content.local = local
                yield
        finally:
            self._unref(file, None)  # the last close drops the pages its readers refill with the old bytes

    def _dirty_files(self) -> frozenset[int]:
        """Files whose buffers hold changes the store does not have: encoding
        their stored bytes now would be wasted work."""
        with self._lock:
            return frozenset(ino for ino, file in self._open.items() if file.dirty)

    # -- paths

    def resolve(self, path: str) -> int:
        return self._walk(path)[0]

    def _walk(self, path: str):
        """(ino, Inode or None) of ``path``: one store transaction for the
        whole path, more only past a hidden name (an unlinked open file)."""
        names = [_name(part, path) for part in path.split("/") if part]
        ino, done, inode = self.store.walk(ROOT, names)
        while done < len(names):
            child = self._hidden.get((ino, names[done]))
            if child is None:
                raise fail(errno.ENOENT, path)
            names = names[done + 1 :]
            ino, done, inode = self.store.walk(child, names)
        return ino, inode

    def _parent(self, path: str) -> tuple[int, bytes]:
        head, _, name = path.rstrip("/").rpartition("/")
        if not name:
            raise fail(errno.EINVAL, path)
        name = _name(name, path)
        parent, inode = self._walk(head or "/")
        inode = inode or self.store.inode(parent)
        if inode is None or not inode.is_dir:
            raise fail(errno.ENOTDIR, head)
        return parent, name

    # -- attributes

    def _buffered(self, ino: int) -> tuple[int | None, int | None, int]:
        """An open file's (size, mtime, ctime) as its unsaved changes make
        them: the size a full read returns now (None: as stored), the times
        of its last write (None, 0: as stored)."""
        with self._lock:
            file = self._open.get(ino)
            content = file.content if file is not None else None
            if content is None:
                return None, None, 0
            if not content.changed:
                return content.size, None, 0
            return content.size, file.mtime_ns, file.changed_ns

    def getattr(self, path: str, fh: int | None = None) -> dict:
        handle = self._handles.get(fh) if fh is not None else None
        ino, inode = (handle.ino, None) if handle is not None else self._walk(path)
        inode = inode or self.store.inode(ino)
        if inode is None:
            raise fail(errno.ENOENT, path)
        size, mtime, ctime = self._buffered(ino)
        size = inode.size if size is None else size
        # a write shows in mtime and ctime at once, as on ext4 (not only after close): another
        # name of the file is another kernel inode, whose page cache goes only when these change
        mtime, ctime = inode.mtime_ns if mtime is None else mtime, max(ctime, inode.ctime_ns)
        stored = inode.stored if size == inode.size else min(size, inode.stored + (size - inode.size))
        # libfuse takes one off the link count of a file it hid (it expects the hidden name to
        # be a link); that name is not one here (see _hide), so fstat() shows the true count
        nlink = inode.nlink + self._is_hidden(path)
        return {
            "st_ino": ino,
            "st_mode": inode.mode,
            "st_nlink": nlink,
            "st_uid": inode.uid,
            "st_gid": inode.gid,
            "st_rdev": inode.rdev,
            "st_size": size,
            "st_blocks": -(-stored // 512),  # du shows what the store really holds
            "st_blksize": 1 << 17,
            # integer nanoseconds (the FUSE layer runs mfusepy with use_ns)
            "st_atime": inode.atime_ns,
            "st_mtime": mtime,
            "st_ctime": ctime,
        }

    def chmod(self, path: str, mode: int) -> None:
        ino = self.resolve(path)
        inode = self.store.inode(ino)
        self.store.setattr(ino, mode=(inode.mode & ~0o7777) | (mode & 0o7777))

    def chown(self, path: str, uid: int, gid: int) -> None:
        ino = self.resolve(path)
        inode = self.store.inode(ino)
        self.store.setattr(ino, uid=inode.uid if uid == -1 else uid, gid=inode.gid if gid == -1 else gid)

    def utimens(self, path: str, times_ns: tuple[int, int] | None = None) -> None:
        """utimensat(2): ``None`` sets both times to now; either time may be
        UTIME_NOW or UTIME_OMIT (left as it is)."""
        ino = self.resolve(path)
        now = now_ns()
        atime, mtime = times_ns or (UTIME_NOW, UTIME_NOW)
        changes = {}
        for name, value in (("atime_ns", atime), ("mtime_ns", mtime)):
            if value != UTIME_OMIT:
                changes[name] = now if value == UTIME_NOW else int(value)
        self.store.setattr(ino, **changes)  # and the ctime
        if "mtime_ns" in changes:
            with self._lock:  # cp -a sets times before close(): the commit must keep them
                file = self._open.get(ino)
                if file is not None:
                    file.mtime_ns = changes["mtime_ns"]

    # -- directories and names

    def readdir(self, path: str) -> list[tuple[str, dict, int]]:
        """Entries with their inode numbers and types (an entry with inode 0
        is skipped by readdir(3), and the type spares find and ls a stat)."""
        ino = self.resolve(path)
        if not self.store.inode(ino).is_dir:
            raise fail(errno.ENOTDIR, path)
        entries = [(".", {"st_ino": ino, "st_mode": stat.S_IFDIR}, 0),
                   ("..", {"st_ino": self.store.parent_of(ino), "st_mode": stat.S_IFDIR}, 0)]
        for name, child, mode in self.store.listdir_modes(ino):
            entries.append((name.decode("utf-8", "surrogateescape"), {"st_ino": child, "st_mode": mode}, 0))
        return entries

    def _create(self, path: str, kind: int, mode: int, uid: int, gid: int, data: bytes = b"", notes=None,
                rdev: int = 0) -> int:
        parent, name = self._parent(path)
        with store_errors(path):
            return self.store.create(parent, name, kind, mode, uid, gid, data, notes, rdev).ino

    def mknod(self, path: str, mode: int, rdev: int, uid: int = 0, gid: int = 0) -> None:
        """FIFOs, sockets and device nodes (the kernel serves their I/O; only
        the inode lives here). A regular file made by mknod is an empty file."""
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFREG:
            self._create(path, VERBATIM, stat.S_IFREG | (mode & 0o7777), uid, gid, notes=staged_notes(0))
        elif kind in (stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
            device = rdev if kind in (stat.S_IFCHR, stat.S_IFBLK) else 0
            self._create(path, SPECIAL, kind | (mode & 0o7777), uid, gid, rdev=device)
        else:
            raise fail(errno.EINVAL, path)

    def link(self, path: str, existing: str) -> None:
        """A hard link: ``path`` becomes one more name of ``existing``."""
        ino = self.resolve(existing)
        parent, name = self._parent(path)
        with store_errors(path):
            self.store.link(ino, parent, name)

    def mkdir(self, path: str, mode: int, uid: int = 0, gid: int = 0) -> None:
        self._create(path, DIR, stat.S_IFDIR | (mode & 0o7777), uid, gid)

    def symlink(self, path: str, target: str, uid: int = 0, gid: int = 0) -> None:
        self._create(path, SYMLINK, stat.S_IFLNK | 0o777, uid, gid, target.encode("utf-8", "surrogateescape"))

    def readlink(self, path: str) -> str:
        ino = self.resolve(path)
        if self.store.inode(ino).kind != SYMLINK:
            raise fail(errno.EINVAL, path)
        return self.store.read_raw(ino).decode("utf-8", "surrogateescape")

    def _remove(self, path: str, directory: bool) -> None:
        """The name goes, and the file with it when that was its last name and
        nobody has it open: one transaction (an open file is purged at its last release)."""
        parent, name = self._parent(path)
        with store_errors(path):
            inode = self.store.unlink(parent, name, directory=directory, in_use=self._in_use)
        if inode.nlink == 0:
            self._purge_if_unused(inode.ino)  # opened while it went, and closed again since
            self._forget(inode.ino)

    def _in_use(self, ino: int) -> bool:
        """Held open now? Asked inside a store transaction, so without self._lock
        (one dict lookup is atomic); the last release purges what this keeps."""
        return ino in self._open

    def unlink(self, path: str) -> None:
        parent, name = self._parent(path)
        if (parent, name) in self._hidden and self.store.lookup(parent, name) is None:
            with self._lock:
                hidden = self._hidden.pop((parent, name), None)
            if hidden is not None:  # libfuse lets go of a hidden file after its last close
                self._purge_if_unused(hidden)
                return
        self._remove(path, directory=False)

    def rmdir(self, path: str) -> None:
        self._remove(path, directory=True)

    def rename(self, old: str, new: str, no_replace: bool = False) -> None:
        """rename(2); ``no_replace``: renameat2's RENAME_NOREPLACE (EEXIST if ``new`` exists)."""
        old_parent, old_name = self._parent(old)
        new_parent, new_name = self._parent(new)
        replaced = self.store.lookup(new_parent, new_name)
        if replaced is None and not no_replace and new_parent == old_parent and HIDDEN_NAME.fullmatch(new_name):
            moving = self.store.lookup(old_parent, old_name)
            with self._lock:
                hiding = moving in self._open  # libfuse hides open files only: any other such name is a user's
            if hiding:
                return self._hide(old, old_parent, old_name, new_name)
        with store_errors(new):
            self.store.rename(old_parent, old_name, new_parent, new_name, no_replace)
        moved = self.store.lookup(new_parent, new_name)
        inode = self.store.inode(moved) if moved is not None else None
        if inode is not None:
            self.kernel.moved(moved, old, new, directory=inode.is_dir)
            if self.encoder is not None:
                self.encoder.renamed(moved, old, new, directory=inode.is_dir)
        if replaced is not None and replaced != moved:
            self._purge_if_unused(replaced)

    def _hide(self, path: str, parent: int, name: bytes, hidden: bytes) -> None:
        """libfuse's answer to the unlink of an open file (or a rename over
        one): it renames it to .fuse_hidden<16 hex digits> in the same folder,
        goes on calling us by that path while the file is open (fstat, fchmod,
        fsetxattr: the kernel gives no handle for those), and unlinks that
        name after the last close. The name is removed here for real (the
        file's nlink drops, as on ext4; no listing shows the hidden name, a
        folder holding one can be removed, a crash leaves an orphan that the
        next mount purges); only the hidden path still finds the inode, until
        libfuse unlinks it."""
        with store_errors(path):
            inode = self.store.unlink(parent, name)
        with self._lock:
            self._hidden[(parent, hidden)] = inode.ino
        self._purge_if_unused(inode.ino)
        hidden_path = path.rpartition("/")[0] + "/" + hidden.decode("utf-8", "surrogateescape")
        self.kernel.moved(inode.ino, path, hidden_path, directory=False)

    def _is_hidden(self, path: str | None) -> bool:
        """Is ``path`` a name _hide() keeps (and no real entry)?"""
        if not path or not self._hidden or not HIDDEN_NAME.fullmatch(_name(path.rpartition("/")[2], path)):
            return False
        parent, name = self._parent(path)
        with self._lock:
            hidden = (parent, name) in self._hidden
        return hidden and self.store.lookup(parent, name) is None

    def _purge_if_unused(self, ino: int) -> None:
        inode = self.store.inode(ino)
        if inode is None or inode.nlink > 0:
            return
        with self._lock:
            if ino in self._open:
                return  # purged at the last release
        self.store.purge(ino)
        self._forget(ino)

    def _forget(self, ino: int) -> None:
        with self._cache_lock:
            self.cache.pop(ino, None)

    # -- files

    def create(self, path: str, mode: int, uid: int = 0, gid: int = 0) -> int:
        ino = self._create(path, VERBATIM, stat.S_IFREG | (mode & 0o7777), uid, gid, notes=staged_notes(0))
        fh = self._new_handle(ino, writable=True)
        self.kernel.opened(ino, path)
        return fh

    def open(self, path: str, flags: int) -> int:
        ino = self.resolve(path)
        inode = self.store.inode(ino)
        if inode.is_dir:
            raise fail(errno.EISDIR, path)
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        fh = self._new_handle(ino, writable)
        self.kernel.opened(ino, path)
        if flags & os.O_TRUNC and writable:  # the kernel sends it as a truncate unless atomic_o_trunc
            try:
                self.truncate(path, 0, fh)
            except OSError:
                self.release(path, fh)
                raise
        return fh

    def _new_handle(self, ino: int, writable: bool) -> int:
        with self._lock:
            file = self._open.get(ino)
            if file is None:
                self._swapped.wait_for(lambda: ino not in self._swaps)
                file = self._open.get(ino)  # opened by another handle meanwhile?
            if file is None:
                file = self._open[ino] = OpenFile(ino)
            file.refs += 1
            fh = next(self._fh)
            self._handles[fh] = Handle(file, writable)
        return fh

    def _handle(self, fh: int, path: str, writing: bool = False) -> Handle:
        handle = self._handles.get(fh)
        if handle is None or (writing and not handle.writable):
            raise fail(errno.EBADF, path)
        return handle

    def _filled_buffer(self, inode) -> WriteBuffer:
        """A local copy of the file's current bytes (a latent file's
        reconstruction, or an image's bytes about to be replaced by its
        latent: both bounded by the pixel limit), copied a chunk at a time."""
        buffer = WriteBuffer(self.spool_dir, SPOOL_IN_MEMORY)
        try:
            if inode.kind == LATENT:
                buffer.write(0, self._decoded(inode))
            else:
                for offset in range(0, inode.size, CHUNK):
                    buffer.write(offset, self.store.read_raw(inode.ino, offset, CHUNK))
        except BaseException:
            buffer.close()
            raise
        return buffer

    def _changing(self, file: OpenFile, emptying: bool = False) -> FileContent:
        """Under file.lock: the file's content, ready to change (``emptying``:
        its old bytes are about to be cut away, so a latent file is not decoded)."""
        if file.content is None:
            inode = self.store.inode(file.ino)
            if inode is None:
                raise fail(errno.ENOENT)
            if inode.kind == LATENT and not emptying:
                local = self._filled_buffer(inode)
                file.content = FileContent(self.store, file.ino, inode.size, inode.generation, local,
                                           uploader=self._uploader)
            else:
                size = 0 if inode.kind == LATENT else inode.size  # emptying: the record's bytes never matter
                file.content = FileContent(self.store, file.ino, size, inode.generation, uploader=self._uploader)
        return file.content

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        handle = self._handle(fh, path)
        file = handle.file
        while True:
            with file.lock:  # content changes under this lock only
                if file.content is not None:
                    return file.content.read(offset, size)
                inode = self.store.inode(file.ino)
                if inode.kind != LATENT:
                    return self.store.read_raw(file.ino, offset, size)
            try:  # decoded outside the lock: a decode takes long
                return self._latent_content(handle, inode)[offset : offset + size]
            except _Rewritten:
                continue

    def _latent_content(self, handle: Handle, inode) -> bytes:
        if handle.decoded is not None and handle.decoded[0] == inode.generation:
            return handle.decoded[1]
        first, handle.counted = not handle.counted, True
        content = self._decoded(inode, count=first)
        if len(content) > self.cache.maxsize:
            handle.decoded = (inode.generation, content)
        return content

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        file = self._handle(fh, path, writing=True).file
        with file.lock, store_errors(path):  # an upload past the memory budget can meet a full disk
            self._changing(file).write(offset, data)
            file.mtime_ns = file.changed_ns = now_ns()
        self.kernel.changed(file.ino, path)  # its other open names drop their pages
        return len(data)

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        """Durable when it returns, like any completed metadata change. By name
        (no handle: truncate(2), or O_TRUNC from the kernel), it goes through a
        handle of its own, so it reaches the bytes every open handle shares.
        Growing a file leaves a hole (nothing is stored for it); beyond what a
        store can hold it is EFBIG."""
        if fh is None or fh not in self._handles:
            fh = self._new_handle(self.resolve(path), writable=True)
            try:
                return self.truncate(path, length, fh)
            finally:
                self.release(path, fh)
        file = self._handle(fh, path, writing=True).file
        with file.lock:
            self._changing(file, emptying=length == 0).truncate(length)
            file.mtime_ns = file.changed_ns = now_ns()
            self._commit_locked(file, path)
        self.kernel.changed(file.ino, path)

    def flush(self, path: str, fh: int) -> None:
        """close() of any descriptor: make its changes durable before it returns."""
        handle = self._handles.get(fh)
        if handle is not None and handle.writable:
            self._commit(handle.file, path)

    def _commit(self, file: OpenFile, path: str | None = None) -> None:
        with file.lock:
            self._commit_locked(file, path)

    def _commit_locked(self, file: OpenFile, path: str | None) -> None:
        """Commit the file's changes to the store, then let its content go
        (reads find it in the store). On failure (ENOSPC…) the changes stay:
        the caller gets the error, and the next close tries again."""
        if not file.dirty:
            return
        content = file.content
        queue, notes = self.encoder is not None, staged_notes(content.size)
        verdict = self.encoder.screen(content.read(0, HEAD_BYTES), content.size) if queue and content.size else None
        if verdict is not None:  # no image: final now, as the encoder would have made it
            queue, notes = False, verdict.notes(content.size)
        with store_errors(path or ""):
            content.commit(queue=queue, mtime_ns=file.mtime_ns, notes=notes, ctime_ns=file.changed_ns or None)
        file.content = None
        content.close()
        if content.size >= RELEASE_AFTER:
            memory.release()
        self._forget(file.ino)
        if verdict is not None:
            self.encoder.settled(file.ino, verdict, path)
        elif queue:
            if path:
                self.encoder.remember_name(file.ino, path)
            self.encoder.notify()

    def release(self, path: str, fh: int) -> None:
        with self._lock:
            handle = self._handles.pop(fh, None)
        if handle is not None:
            self._unref(handle.file, path)

    def _unref(self, file: OpenFile, path: str | None) -> None:
        """Drop one reference; the last one commits what is left and lets the content go."""
        with self._lock:
            file.refs -= 1
            if file.refs:
                return
        try:
            self._commit(file, path)  # changes no flush() saw (written through mmap, say)
        except OSError as error:  # nobody is left to tell: say it loudly
            log.error("%s: changes made since its last close() could not be stored: %s",
                      path or f"inode {file.ino}", error.strerror)
        finally:
            with self._lock:
                closing = file.refs == 0 and self._open.get(file.ino) is file
                if closing:
                    del self._open[file.ino]
            kept_across_swap = False
            if closing:
                with file.lock:
                    if file.content is not None:
                        # readers kept the bytes they opened across a swap, and refilled
                        # the page cache with them: they must not outlive this last close
                        kept_across_swap = file.content.local is not None
                        file.content.close()
                        file.content = None
            if kept_across_swap:
                self.kernel.invalidate(file.ino)
            if closing:
                self.kernel.closed(file.ino)
            self._purge_if_unused(file.ino)
            if self.encoder is not None:
                self.encoder.notify()

    def fsync(self, path: str, datasync: bool, fh: int) -> None:
        """Returns once the file is durable in its final form (encoded or verbatim)."""
        handle = self._handles.get(fh)
        ino = handle.ino if handle else self.resolve(path)
        if handle is not None:
            self._commit(handle.file, path)
        if self.encoder is not None:
            self.encoder.wait_for(ino)
        with store_errors(path):
            self.store.sync()  # commits are durable but for their last meta page: this writes it

    def fsyncdir(self, path: str, datasync: bool, fh: int) -> None:
        """A directory's entries are durable when it returns (as after fsync of a folder on ext4)."""
        with store_errors(path):
            self.store.sync()

    # -- latent reads

    def _decoded(self, inode, count: bool = True) -> bytes:
        """The reconstruction, from the cache or decoded once however many
        readers ask at the same time (they share the decode in flight, also
        when it is too large for the cache). ``count``: record a cache hit or
        miss (the first read of an open file; later reads are not lookups)."""
        key = (inode.ino, inode.generation)
        with self._cache_lock:
            entry = self.cache.get(inode.ino)
            cached = entry[1] if entry is not None and entry[0] == inode.generation else None
            in_flight = self._decoding.get(key) if cached is None else None
            owner = cached is None and in_flight is None
            if owner:
                self.cache_misses += count
                in_flight = self._decoding[key] = Future()
            else:
                self.cache_hits += count
        if cached is not None:
            return cached
        if not owner:
            return in_flight.result()  # raises the decode's own error
        try:
            content = self._decode(inode)
        except BaseException as error:
            in_flight.set_exception(error)
            raise
        else:
            in_flight.set_result(content)
            with self._cache_lock:
                if len(content) <= self.cache.maxsize:
                    self.cache[inode.ino] = (inode.generation, content)
            return content
        finally:
            with self._cache_lock:
                self._decoding.pop(key, None)

    def _decode(self, inode) -> bytes:
        record = self.store.record(inode.ino)
        if record is None:
            raise _Rewritten(inode.ino)
        started = time.perf_counter()
        try:
            output = self.codec.decode(record)
        except SdfsError as error:
            log.error("cannot decode inode %d: %s", inode.ino, error)
            raise fail(errno.EIO) from None
        self.decodes += 1
        log.info("decoded inode %d (%d bytes) in %.2f s", inode.ino, len(output), time.perf_counter() - started)
        if len(output) != inode.size:  # never serve bytes that contradict st_size
            log.error("inode %d decoded to %d bytes, expected %d", inode.ino, len(output), inode.size)
            raise fail(errno.EIO)
        return output

    # -- extended attributes

    def daemon_state(self) -> dict:
        """Live figures of this mount, read by `sdfs stats` and `sdfs sync`
        through the root's user.sdfs.daemon xattr."""
        with self._cache_lock:
            cache = {"hits": self.cache_hits, "misses": self.cache_misses, "entries": len(self.cache),
                     "bytes": self.cache.currsize, "capacity_bytes": self.cache.maxsize}
        with self._lock:
            open_files = len(self._handles)
        state = {"pid": os.getpid(), "store": str(self.store.path.resolve()), "cache": cache,
                 "decodes": self.decodes, "open_files": open_files, "pending": self.store.pending_count()}
        if self.encoder is not None:
            state["encoder"] = self.encoder.state()
        return state

    def _sdfs_xattrs(self, ino: int) -> dict[str, bytes]:
        inode = self.store.inode(ino)
        if inode is None:  # removed since its name was looked up
            raise fail(errno.ENOENT)
        if ino == ROOT:
            return {DAEMON_XATTR: json.dumps(self.daemon_state(), sort_keys=True).encode()}
        if inode.kind not in (PENDING, VERBATIM, LATENT):
            return {}
        values = {"kind": KIND_NAMES[inode.kind], "stored_bytes": str(inode.stored)}
        verdict = self.store.get_xattr(ino, VERDICT)
        if verdict:
            values["verdict"] = verdict.decode()
        if inode.kind == LATENT:
            raw = self.store.record(ino)
            if raw is None:  # rewritten between the two reads: describe what it is now
                return self._sdfs_xattrs(ino)
            record = container.unpack(raw)
            values["model"] = f"{record.model.name} {record.model.weights_sha256.hex()}"
            values["quality"] = record.quality
            for m in record.measurements:
                values["psnr"] = f"{m.fidelity.psnr:.2f}"
                values["ssim"] = f"{m.fidelity.ssim:.4f}"
                values["decoder"] = m.decoder
        return {READ_ONLY_PREFIX + k: v.encode() for k, v in values.items()}

    def listxattr(self, path: str) -> list[str]:
        ino = self.resolve(path)
        own = [n.decode() for n in self.store.xattrs(ino) if n.startswith(b"user.")]
        return own + list(self._sdfs_xattrs(ino))

    def getxattr(self, path: str, name: str) -> bytes:
        if not name.startswith("user."):
            # never stored, so answered without a lookup: the kernel asks for
            # security.capability before every write() and for ACLs on ls -l
            raise fail(errno.ENODATA, name)
        ino = self.resolve(path)
        if name.startswith(READ_ONLY_PREFIX):
            value = self._sdfs_xattrs(ino).get(name)
        else:
            value = self.store.get_xattr(ino, name.encode())
        if value is None:
            raise fail(errno.ENODATA, name)
        return value

    def setxattr(self, path: str, name: str, value: bytes) -> None:
        ino = self.resolve(path)
        if name.startswith(READ_ONLY_PREFIX):
            raise fail(errno.EPERM, name)
        if not name.startswith("user."):
            raise fail(errno.ENOTSUP, name)
        self.store.set_xattr(ino, name.encode(), value)

    def removexattr(self, path: str, name: str) -> None:
        ino = self.resolve(path)
        if name.startswith(READ_ONLY_PREFIX):
            raise fail(errno.EPERM, name)
        if not name.startswith("user.") or not self.store.remove_xattr(ino, name.encode()):
            raise fail(errno.ENODATA, name)

    def statfs(self) -> dict:
        disk = os.statvfs(self.store.path)
        return {
            "f_bsize": disk.f_bsize,
            "f_frsize": disk.f_frsize,
            "f_blocks": disk.f_blocks,
            "f_bfree": disk.f_bfree,
            "f_bavail": disk.f_bavail,
            "f_files": disk.f_files,
            "f_ffree": disk.f_ffree,
            "f_namemax": 255,
        }
