"""The filesystem's logic as a plain class (no FUSE): paths, handles, the
write buffer, the read cache. fs/operations.py only translates calls.

Errors are raised as OSError(errno); the FUSE layer passes the errno on.
Open files are tracked by handle, so renames and unlinks of open files work.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import logging
import os
import stat
import tempfile
import threading
import time
from dataclasses import dataclass, field

from cachetools import LRUCache

from ..codec import container
from ..errors import SdfsError
from ..ingest import VERDICT
from ..store import DIR, KIND_NAMES, LATENT, PENDING, ROOT, SYMLINK, VERBATIM, Store
from ..store.store import now_ns

log = logging.getLogger(__name__)

SPOOL_IN_MEMORY = 8 << 20  # larger writes spill to the store's tmp/ folder
READ_ONLY_PREFIX = "user.sdfs."
DAEMON_XATTR = READ_ONLY_PREFIX + "daemon"  # on the root: JSON of daemon_state()


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


@dataclass
class Handle:
    ino: int
    writable: bool
    spool: tempfile.SpooledTemporaryFile | None = None  # present once content is being changed
    dirty: bool = False
    mtime_ns: int | None = None  # of the last write, or as set by utimens while open
    counted: bool = False  # its cache hit or miss is counted (once per open, not per read call)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def size(self) -> int:
        self.spool.seek(0, os.SEEK_END)
        return self.spool.tell()


class Filesystem:
    def __init__(self, store: Store, codec=None, encoder=None, cache_bytes: int = 512 << 20):
        self.store = store
        self.codec = codec
        self.encoder = encoder
        self.cache = LRUCache(maxsize=cache_bytes, getsizeof=len)
        self.cache_hits = self.cache_misses = 0
        self.decodes = 0
        self._cache_lock = threading.Lock()
        self._decoding: dict[tuple[int, int], threading.Lock] = {}
        self._handles: dict[int, Handle] = {}
        self._fh = itertools.count(1)
        self._lock = threading.RLock()
        self.spool_dir = store.path / "tmp"
        self.spool_dir.mkdir(exist_ok=True)
        for ino in store.orphans():  # names removed while open before a crash
            store.purge(ino)
        if encoder is not None:
            encoder.open_files = self._open_files

    @contextlib.contextmanager
    def _open_files(self):
        """Inodes that a handle reads from the store. Handles with their own
        write buffer do not care whether the store's bytes are swapped."""
        with self._lock:
            open_inos = {handle.ino for handle in self._handles.values() if handle.spool is None}
            yield open_inos.__contains__

    # -- paths

    def resolve(self, path: str) -> int:
        ino = ROOT
        for part in path.strip("/").split("/"):
            if not part:
                continue
            child = self.store.lookup(ino, part.encode("utf-8", "surrogateescape"))
            if child is None:
                raise fail(errno.ENOENT, path)
            ino = child
        return ino

    def _parent(self, path: str) -> tuple[int, bytes]:
        head, _, name = path.rstrip("/").rpartition("/")
        if not name:
            raise fail(errno.EINVAL, path)
        parent = self.resolve(head or "/")
        inode = self.store.inode(parent)
        if inode is None or not inode.is_dir:
            raise fail(errno.ENOTDIR, head)
        return parent, name.encode("utf-8", "surrogateescape")

    # -- attributes

    def _open_size(self, ino: int) -> int | None:
        """Bytes buffered by an open, changed handle: what a full read returns now."""
        with self._lock:
            for handle in self._handles.values():
                if handle.ino == ino and handle.spool is not None:
                    with handle.lock:
                        return handle.size
        return None

    def getattr(self, path: str, fh: int | None = None) -> dict:
        ino = self._handles[fh].ino if fh in self._handles else self.resolve(path)
        inode = self.store.inode(ino)
        if inode is None:
            raise fail(errno.ENOENT, path)
        size = self._open_size(ino)
        size = inode.size if size is None else size
        stored = inode.stored if size == inode.size else size
        return {
            "st_ino": ino,
            "st_mode": inode.mode,
            "st_nlink": inode.nlink,
            "st_uid": inode.uid,
            "st_gid": inode.gid,
            "st_size": size,
            "st_blocks": -(-stored // 512),  # du shows what the store really holds
            "st_blksize": 1 << 17,
            # integer nanoseconds (the FUSE layer runs fusepy with use_ns)
            "st_atime": inode.atime_ns,
            "st_mtime": inode.mtime_ns,
            "st_ctime": inode.ctime_ns,
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
        ino = self.resolve(path)
        now = self.store.inode(ino).ctime_ns if times_ns is None else None
        atime, mtime = times_ns or (now, now)
        self.store.setattr(ino, atime_ns=int(atime), mtime_ns=int(mtime))
        with self._lock:  # cp -a sets times before close(): the commit must keep them
            for handle in self._handles.values():
                if handle.ino == ino and handle.dirty:
                    handle.mtime_ns = int(mtime)

    # -- directories and names

    def readdir(self, path: str) -> list[str]:
        ino = self.resolve(path)
        if not self.store.inode(ino).is_dir:
            raise fail(errno.ENOTDIR, path)
        return [".", ".."] + [name.decode("utf-8", "surrogateescape") for name, _ in self.store.listdir(ino)]

    def _create(self, path: str, kind: int, mode: int, uid: int, gid: int, data: bytes = b"") -> int:
        parent, name = self._parent(path)
        with store_errors(path):
            return self.store.create(parent, name, kind, mode, uid, gid, data).ino

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
        parent, name = self._parent(path)
        with store_errors(path):
            inode = self.store.unlink(parent, name, directory=directory)
        self._purge_if_unused(inode.ino)

    def unlink(self, path: str) -> None:
        self._remove(path, directory=False)

    def rmdir(self, path: str) -> None:
        self._remove(path, directory=True)

    def rename(self, old: str, new: str) -> None:
        old_parent, old_name = self._parent(old)
        new_parent, new_name = self._parent(new)
        replaced = self.store.lookup(new_parent, new_name)
        with store_errors(new):
            self.store.rename(old_parent, old_name, new_parent, new_name)
        if replaced is not None:
            self._purge_if_unused(replaced)

    def _purge_if_unused(self, ino: int) -> None:
        inode = self.store.inode(ino)
        if inode is None or inode.nlink > 0:
            return
        with self._lock:
            if any(h.ino == ino for h in self._handles.values()):
                return  # purged at the last release
        self.store.purge(ino)

    # -- files

    def create(self, path: str, mode: int, uid: int = 0, gid: int = 0) -> int:
        ino = self._create(path, VERBATIM, stat.S_IFREG | (mode & 0o7777), uid, gid)
        return self._new_handle(ino, writable=True, empty=True)

    def open(self, path: str, flags: int) -> int:
        ino = self.resolve(path)
        inode = self.store.inode(ino)
        if inode.is_dir:
            raise fail(errno.EISDIR, path)
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        return self._new_handle(ino, writable, empty=bool(flags & os.O_TRUNC) and writable)

    def _new_handle(self, ino: int, writable: bool, empty: bool) -> int:
        handle = Handle(ino, writable)
        if empty:
            handle.spool = self._spool()
            handle.dirty = True
        with self._lock:
            fh = next(self._fh)
            self._handles[fh] = handle
        return fh

    def _spool(self) -> tempfile.SpooledTemporaryFile:
        return tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY, dir=self.spool_dir)

    def _content(self, ino: int) -> bytes:
        """The file's current bytes as a reader sees them."""
        inode = self.store.inode(ino)
        if inode.kind == LATENT:
            return self._decoded(inode)
        return self.store.read_raw(ino)

    def _load_for_writing(self, handle: Handle) -> None:
        if handle.spool is None:
            handle.spool = self._spool()
            handle.spool.write(self._content(handle.ino))

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        handle = self._handles.get(fh)
        if handle is None:
            raise fail(errno.EBADF, path)
        with handle.lock:
            if handle.spool is not None:
                handle.spool.seek(offset)
                return handle.spool.read(size)
        inode = self.store.inode(handle.ino)
        if inode.kind == LATENT:
            first, handle.counted = not handle.counted, True
            return self._decoded(inode, count=first)[offset : offset + size]
        return self.store.read_raw(handle.ino, offset, size)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        handle = self._handles.get(fh)
        if handle is None or not handle.writable:
            raise fail(errno.EBADF, path)
        with handle.lock:
            self._load_for_writing(handle)
            end = handle.size
            if offset > end:
                handle.spool.write(b"\0" * (offset - end))  # a hole reads as zeros
            handle.spool.seek(offset)
            handle.spool.write(data)
            handle.dirty = True
            handle.mtime_ns = now_ns()
        return len(data)

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        handle = self._handles.get(fh) if fh else None
        if handle is None:
            ino = self.resolve(path)
            with self._lock:  # a truncate by name hits an open handle's buffer too
                handle = next((h for h in self._handles.values() if h.ino == ino and h.spool is not None), None)
            if handle is None:
                content = self._content(ino)
                self._stage(ino, content[:length] + b"\0" * max(0, length - len(content)), path=path)
                return
        with handle.lock:
            self._load_for_writing(handle)
            size = handle.size
            if length > size:
                handle.spool.seek(size)
                handle.spool.write(b"\0" * (length - size))
            handle.spool.truncate(length)
            handle.dirty = True
            handle.mtime_ns = now_ns()

    def flush(self, path: str, fh: int) -> None:
        """close() of any descriptor: make its changes durable before it returns."""
        handle = self._handles.get(fh)
        if handle is not None:
            self._commit(handle, path)

    def _commit(self, handle: Handle, path: str | None = None) -> None:
        with handle.lock:
            if not handle.dirty:
                return
            handle.spool.seek(0)
            data = handle.spool.read()
            handle.dirty = False
            mtime = handle.mtime_ns
        self._stage(handle.ino, data, mtime, path)

    def _stage(self, ino: int, data: bytes, mtime_ns: int | None = None, path: str | None = None) -> None:
        self.store.stage(ino, data, queue=self.encoder is not None, mtime_ns=mtime_ns)
        if self.encoder is not None:
            if path:
                self.encoder.remember_name(ino, path)
            self.encoder.notify()

    def release(self, path: str, fh: int) -> None:
        with self._lock:
            handle = self._handles.pop(fh, None)
        if handle is None:
            return
        self._commit(handle, path)
        if handle.spool is not None:
            handle.spool.close()
        self._purge_if_unused(handle.ino)
        if self.encoder is not None:
            self.encoder.notify()  # an encode deferred for this open file can finish now

    def fsync(self, path: str, datasync: bool, fh: int) -> None:
        """Returns once the file is durable in its final form (encoded or verbatim)."""
        handle = self._handles.get(fh)
        ino = handle.ino if handle else self.resolve(path)
        if handle is not None:
            self._commit(handle, path)
        if self.encoder is not None:
            self.encoder.wait_for(ino)

    # -- latent reads

    def _decoded(self, inode, count: bool = True) -> bytes:
        """The reconstruction, from the cache or decoded once however many
        readers ask at the same time. ``count``: record a cache hit or miss
        (the first read of an open file; later reads of it are not lookups)."""
        key = (inode.ino, inode.generation)
        with self._cache_lock:
            cached = self.cache.get(key)
            if cached is not None:
                self.cache_hits += count
                return cached
            gate = self._decoding.setdefault(key, threading.Lock())
        with gate:  # concurrent readers of one file share one decode
            with self._cache_lock:
                cached = self.cache.get(key)
            if cached is None:
                cached = self._decode(inode)
                with self._cache_lock:
                    self.cache_misses += count
                    if len(cached) <= self.cache.maxsize:
                        self.cache[key] = cached
                    self._decoding.pop(key, None)
            else:
                with self._cache_lock:
                    self.cache_hits += count
        return cached

    def _decode(self, inode) -> bytes:
        record = self.store.record(inode.ino)
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
        if ino == ROOT:
            return {DAEMON_XATTR: json.dumps(self.daemon_state(), sort_keys=True).encode()}
        if inode.kind not in (PENDING, VERBATIM, LATENT):
            return {}
        values = {"kind": KIND_NAMES[inode.kind], "stored_bytes": str(inode.stored)}
        verdict = self.store.get_xattr(ino, VERDICT)
        if verdict:
            values["verdict"] = verdict.decode()
        if inode.kind == LATENT:
            record = container.unpack(self.store.record(ino))
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
        ino = self.resolve(path)
        if name.startswith(READ_ONLY_PREFIX):
            value = self._sdfs_xattrs(ino).get(name)
        elif name.startswith("user."):
            value = self.store.get_xattr(ino, name.encode())
        else:
            raise fail(errno.ENODATA, name)
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
