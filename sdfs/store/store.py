"""The LMDB store: inodes, directory entries, staged and verbatim bytes,
latent records, the pending-encode queue, xattrs. No torch here.

One write transaction per operation; no read transaction outlives a call.
The environment is opened by whoever uses it, after any fork.
Layouts of keys and values are in docs/FORMAT.md ("Store").
"""

from __future__ import annotations

import errno
import json
import logging
import os
import struct
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator

import lmdb

from ..errors import ModelMismatch, SdfsError
from .gate import ResizeGate
from .mapped import MappedPages

log = logging.getLogger(__name__)

STORE_VERSION = 3
# older stores are read as they are, and marked 3 when opened for writing (docs/FORMAT.md):
# 3 only says that records may be of record format 2, which an sdfs reading format 1 cannot decode
READABLE_VERSIONS = (1, 2, 3)
ROOT = 1
CHUNK = 1 << 20  # verbatim and staged bytes are stored in chunks of at most 1 MiB
# chunk indexes are u32: the largest file a store can hold (a larger truncate answers EFBIG)
MAX_FILE_SIZE = CHUNK << 32
NAME_MAX = 255  # bytes in one name, as on ext4
LINK_MAX = 65000  # names of one file, as on ext4
# LMDB reports a commit that ran out of disk as EIO (a short write); with less
# than this left on the store's disk, that EIO is taken for what it is: ENOSPC
DISK_FULL_BELOW = 8 << 20

DIR, PENDING, VERBATIM, LATENT, SYMLINK, SPECIAL = 1, 2, 3, 4, 5, 6
KIND_NAMES = {DIR: "directory", PENDING: "pending", VERBATIM: "verbatim", LATENT: "latent", SYMLINK: "symlink",
              SPECIAL: "special"}
CONTENT_KINDS = (PENDING, VERBATIM, SYMLINK)  # kinds whose bytes live in chunks

# kind mode uid gid nlink size atime mtime ctime stored generation rdev
_INODE = struct.Struct("<BIIIIQqqqQQQ")
_INODE_V1 = struct.Struct("<BIIIIQqqqQQ")  # version-1 stores: no rdev (read as 0)
INODE_SIZES = (_INODE.size, _INODE_V1.size)
_INODE_MODE = struct.Struct("<I")  # at offset 1 in both versions
_DBS = ("meta", "inodes", "dirents", "dirparents", "chunks", "records", "pending", "orphans", "xattrs", "uploads")
_ADDED_IN_V2 = ("uploads",)


class StoreError(SdfsError):
    """The store cannot be opened or used as asked."""


def _key(ino: int) -> bytes:
    return ino.to_bytes(8, "big")


def _chunk_prefix(ino: int, index: int) -> bytes:
    return _key(ino) + index.to_bytes(4, "big")


def _chunk_key(ino: int, index: int, version: int) -> bytes:
    return _chunk_prefix(ino, index) + version.to_bytes(8, "big")


def chunk_key_parts(key: bytes) -> tuple[int, int, int]:
    """(ino, index, version) of a chunks key; version-1 keys (12 bytes) are version 0."""
    return int.from_bytes(key[:8], "big"), int.from_bytes(key[8:12], "big"), int.from_bytes(key[12:20], "big")


def _latent_space(model: dict) -> dict:
    """What must match to read a store's latents: everything but the name
    (the same weights may live in another folder or come from the hub)."""
    return {k: v for k, v in model.items() if k != "name"}


def now_ns() -> int:
    return time.time_ns()


def _pieces(data: bytes) -> Iterator[bytes]:
    """Content as CHUNK-sized pieces."""
    for start in range(0, len(data), CHUNK):
        yield bytes(data[start : start + CHUNK])


_ZEROS = bytes(CHUNK)


def _all_zeros(piece) -> bool:
    """A memcmp with zeros, which stops at the first byte that is not one
    (bytes.count reads them all: half a millisecond a chunk)."""
    n = len(piece)
    return bytes(piece) == (_ZEROS if n == CHUNK else bytes(n))  # bytes(): no copy of a bytes object


@dataclass(frozen=True)
class Inode:
    ino: int
    kind: int
    mode: int
    uid: int
    gid: int
    nlink: int
    size: int  # st_size: staged/verbatim byte count, or a latent's fixed output length
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    stored: int  # bytes this file occupies in the store
    generation: int  # bumped whenever content changes; stale encodes are dropped; chunks carry it as their version
    rdev: int = 0  # a device node's device number

    def pack(self) -> bytes:
        return _INODE.pack(
            self.kind, self.mode, self.uid, self.gid, self.nlink, self.size,
            self.atime_ns, self.mtime_ns, self.ctime_ns, self.stored, self.generation, self.rdev,
        )

    @classmethod
    def unpack(cls, ino: int, data: bytes) -> "Inode":
        if len(data) == _INODE_V1.size:
            return cls(ino, *_INODE_V1.unpack(data))
        return cls(ino, *_INODE.unpack(data))

    @property
    def is_dir(self) -> bool:
        return self.kind == DIR


@dataclass(frozen=True)
class Streamed:
    """Content Store.put_content stored for a file that has no name yet."""

    ino: int
    size: int  # the caller may raise it (a file that ends in a hole)
    stored: int


@dataclass(frozen=True)
class NewFile:
    """A finished file for Store.put_files: raw bytes, a latent record when
    ``latent_length`` (its fixed output length) is given, or content stored
    beforehand by put_content (``content``; ``data`` is then empty)."""

    parent: int
    name: bytes
    mode: int
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    data: bytes
    latent_length: int | None = None
    xattrs: dict = field(default_factory=dict)
    content: Streamed | None = None


class Store:
    def __init__(self, path: str | os.PathLike, model: dict | None = None, map_size: int = 1 << 30,
                 readonly: bool = False):
        """Open (creating if absent, unless ``readonly``) the store at ``path``.
        ``model`` is the VAE identity (JSON-able); a store made with another VAE
        refuses to open. Read-only opens work beside a running mount."""
        self.path = Path(path)
        self.readonly = readonly
        self._gate = ResizeGate()
        if readonly:
            if not (self.path / "data.mdb").is_file():
                raise StoreError(f"{self.path} is not an sdfs store (no data.mdb); give the folder passed to `sdfs mount`")
        else:
            self.path.mkdir(parents=True, exist_ok=True)
        try:
            # metasync=False (MDB_NOMETASYNC): a commit fdatasyncs its data
            # pages but not the meta page that points at them, which the next
            # commit's flush, sync() or the kernel's writeback carries to disk.
            # LMDB documents that this keeps the store's integrity: a power loss
            # can only undo the last commit (docs/FORMAT.md, "Durability")
            self.env = lmdb.open(str(self.path), map_size=map_size, max_dbs=len(_DBS), subdir=True, lock=True,
                                 readonly=readonly, create=not readonly, metasync=False)
        except lmdb.Error as error:
            raise StoreError(f"cannot open store {self.path}: {error}") from None
        try:
            self.db = {name: self._open_db(name) for name in _DBS}
        except lmdb.NotFoundError:  # read-only, and a sub-database is not there (yet)
            self.env.close()
            raise StoreError(f"store {self.path} is incomplete: still being created, or not an sdfs store") from None
        except lmdb.Error as error:
            self.env.close()
            raise StoreError(f"cannot open store {self.path}: {error}") from None
        self._mapped = MappedPages(self.env, self.path / "data.mdb")
        if readonly:
            self._check_version()
        else:
            self._initialise(model)

    def _open_db(self, name: str):
        try:
            return self.env.open_db(name.encode(), create=not self.readonly)
        except lmdb.NotFoundError:
            if name in _ADDED_IN_V2:  # a version-1 store, read-only: an empty table reads the same
                return None
            raise

    def close(self) -> None:
        if not self.readonly:
            self.sync()
        self.env.close()

    def sync(self) -> None:
        """Make every commit so far durable (the last one's meta page included)."""
        with self._lmdb_errors():
            self.env.sync(True)

    # -- transactions

    @contextmanager
    def reading(self) -> Iterator[lmdb.Transaction]:
        with self._transaction(write=False) as txn:
            yield txn

    def read(self, fn, buffers: bool = False):
        """``fn(txn)`` in one read transaction: reading() without its layers of
        context managers, for what runs at every stat and lookup."""
        gate = self._gate
        while True:
            depth = gate.acquire_shared()
            try:
                try:
                    txn = self.env.begin(buffers=buffers)
                except lmdb.MapResizedError:
                    txn = None  # another process (the mount) grew the map: adopt its size below
                if txn is not None:
                    try:
                        return fn(txn)
                    except (lmdb.MapFullError, lmdb.MapResizedError):
                        raise
                    except lmdb.Error as error:
                        raise self._as_os_error(error) from None
                    finally:
                        txn.abort()  # a read transaction has nothing to commit
            finally:
                gate.release_shared(depth)
            with gate.exclusive():
                self.env.set_mapsize(0)

    def write(self, fn, buffers: bool = False):
        """Run ``fn(txn)`` in one write transaction, growing the map when full.
        A full disk raises OSError(ENOSPC), other LMDB failures OSError(EIO).
        ``buffers``: gets return memoryviews valid only inside ``fn``."""
        while True:
            size = self.env.info()["map_size"]
            try:
                with self._transaction(write=True, buffers=buffers) as txn:
                    return fn(txn)
            except lmdb.MapFullError:
                with self._gate.exclusive():  # no transaction of this process is open now
                    if self.env.info()["map_size"] == size:  # not grown by another thread meanwhile
                        self.env.set_mapsize(size * 2)
                        log.info("store %s: map grown to %d MiB", self.path, size * 2 >> 20)

    @contextmanager
    def _transaction(self, write: bool, buffers: bool = False) -> Iterator[lmdb.Transaction]:
        while True:
            with self._gate.shared():
                try:
                    txn = self.env.begin(write=write, buffers=buffers)
                except lmdb.MapResizedError:
                    txn = None  # another process (the mount) grew the map: adopt its size below
                if txn is not None:
                    with self._lmdb_errors(), txn:
                        yield txn
                    return
            with self._gate.exclusive():
                self.env.set_mapsize(0)

    @contextmanager
    def _lmdb_errors(self):
        try:
            yield
        except (lmdb.MapFullError, lmdb.MapResizedError):
            raise
        except lmdb.Error as error:
            raise self._as_os_error(error) from None

    def _as_os_error(self, error: lmdb.Error) -> OSError:
        try:
            disk = os.statvfs(self.path)
            full = disk.f_bfree * disk.f_frsize < DISK_FULL_BELOW
        except OSError:
            full = False
        if full:
            return OSError(errno.ENOSPC, f"no space left on the disk of store {self.path}")
        log.error("store %s: %s", self.path, error)
        return OSError(errno.EIO, f"store {self.path}: {error}")

    # -- meta

    def format_version(self) -> int:
        with self.reading() as txn:
            version = txn.get(b"format", db=self.db["meta"])
        return int(version) if version else 0

    def _check_version(self) -> None:
        version = self.format_version()
        if version == 0:
            self.env.close()
            raise StoreError(f"store {self.path} is incomplete: still being created, or not an sdfs store")
        if version not in READABLE_VERSIONS:
            raise StoreError(f"store {self.path} has format version {version}; this sdfs reads versions "
                             f"{', '.join(map(str, READABLE_VERSIONS))}: upgrade sdfs")

    def check_model(self, model: dict) -> None:
        """Refuse (ModelMismatch) a VAE other than the store's; adopt it if the store has none yet."""
        self._initialise(model)

    def _initialise(self, model: dict | None) -> None:
        def setup(txn):
            meta = self.db["meta"]
            version = txn.get(b"format", db=meta)
            if version is None:
                txn.put(b"format", str(STORE_VERSION).encode(), db=meta)
                txn.put(b"next_ino", _key(ROOT + 1), db=meta)
                if model is not None:
                    txn.put(b"model", json.dumps(model, sort_keys=True).encode(), db=meta)
                t = now_ns()
                root = Inode(ROOT, DIR, 0o40755, os.getuid(), os.getgid(), 2, 0, t, t, t, 0, 0)
                txn.put(_key(ROOT), root.pack(), db=self.db["inodes"])
                return
            if int(version) not in READABLE_VERSIONS:
                raise StoreError(f"store {self.path} has format version {int(version)}; this sdfs reads versions "
                                 f"{', '.join(map(str, READABLE_VERSIONS))}: upgrade sdfs")
            if int(version) != STORE_VERSION:  # older data reads as it is (docs/FORMAT.md): only the mark changes
                txn.put(b"format", str(STORE_VERSION).encode(), db=meta)
                log.info("store %s: format version %d marked %d", self.path, int(version), STORE_VERSION)
            stored = txn.get(b"model", db=meta)
            if model is not None and stored is None:
                txn.put(b"model", json.dumps(model, sort_keys=True).encode(), db=meta)
            elif model is not None and _latent_space(json.loads(stored)) != _latent_space(model):
                theirs = json.loads(stored)
                raise ModelMismatch(
                    f"store {self.path} holds latents of VAE {theirs.get('name')} (weights {theirs.get('weights_sha256', '')[:12]}); "
                    f"it cannot be opened with {model.get('name')} (weights {model.get('weights_sha256', '')[:12]}): pass --model with the store's VAE"
                )

        self.write(setup)

    def model(self) -> dict | None:
        with self.reading() as txn:
            value = txn.get(b"model", db=self.db["meta"])
        return json.loads(value) if value else None

    def _next_ino(self, txn) -> int:
        ino = int.from_bytes(txn.get(b"next_ino", db=self.db["meta"]), "big")
        txn.put(b"next_ino", _key(ino + 1), db=self.db["meta"])
        return ino

    # -- inodes and names

    def _inode(self, txn, ino: int) -> Inode | None:
        data = txn.get(_key(ino), db=self.db["inodes"])
        return Inode.unpack(ino, data) if data else None

    def _put(self, txn, inode: Inode) -> None:
        txn.put(_key(inode.ino), inode.pack(), db=self.db["inodes"])

    def inode(self, ino: int) -> Inode | None:
        return self.read(lambda txn: self._inode(txn, ino))

    def lookup(self, parent: int, name: bytes) -> int | None:
        value = self.read(lambda txn: txn.get(_key(parent) + name, db=self.db["dirents"]))
        return int.from_bytes(value, "big") if value else None

    def walk(self, start: int, names: list[bytes]) -> tuple[int, int, Inode | None]:
        """Follow ``names`` down from directory ``start`` in one read
        transaction (a path costs one, not one per component): the inode
        reached, how many names were followed, and that inode when all were."""
        dirents = self.db["dirents"]

        def op(txn):
            ino = start
            for done, name in enumerate(names):
                value = txn.get(_key(ino) + name, db=dirents)
                if value is None:
                    return ino, done, None
                ino = int.from_bytes(value, "big")
            return ino, len(names), self._inode(txn, ino)

        return self.read(op)

    def listdir(self, parent: int) -> list[tuple[bytes, int]]:
        return [(name, ino) for name, ino, _ in self.listdir_modes(parent)]

    def listdir_modes(self, parent: int) -> list[tuple[bytes, int, int]]:
        """(name, ino, mode) of a directory's entries, from one snapshot
        (readdir gives the kernel each entry's inode number and type)."""
        prefix = _key(parent)
        entries = []
        inodes = self.db["inodes"]
        mode_of = _INODE_MODE.unpack_from  # the mode alone: a listing of 10,000 files builds no Inode
        with self.reading() as txn:
            cursor = txn.cursor(db=self.db["dirents"])
            if cursor.set_range(prefix):
                for key, value in cursor:
                    if not key.startswith(prefix):
                        break
                    record = txn.get(value, db=inodes)  # the dirent's value is the inode's key
                    entries.append((key[8:], int.from_bytes(value, "big"), mode_of(record, 1)[0] if record else 0))
        return entries

    def paths_of(self, inos) -> dict[int, str | None]:
        """A path of each of ``inos`` ("/a/b.png"; None if it has no name),
        found by reading every name once: slow (about a second a million
        names), for messages about files whose names are not known otherwise
        (the encoder's batch after a remount)."""
        wanted = {_key(ino): ino for ino in inos}
        found: dict[int, str | None] = dict.fromkeys(wanted.values())
        if not wanted:
            return found
        with self.reading() as txn:
            for key, value in txn.cursor(db=self.db["dirents"]):
                ino = wanted.pop(value, None)
                if ino is not None:
                    found[ino] = self._path_in(txn, [key[8:]], int.from_bytes(key[:8], "big"))
                    if not wanted:
                        break
        return found

    def _path_in(self, txn, parts: list[bytes], parent: int) -> str | None:
        """``parts`` (names, innermost first) under the folder ``parent``, as a path from the root."""
        while parent != ROOT:
            above = txn.get(_key(parent), db=self.db["dirparents"])
            if above is None or len(parts) > 4096:  # not linked in: no path to show
                return None
            child, name = _key(parent), None
            cursor = txn.cursor(db=self.db["dirents"])
            if cursor.set_range(above):  # a folder's name: among its parent's entries
                for key, value in cursor:
                    if not key.startswith(above):
                        break
                    if value == child:
                        name = key[8:]
                        break
            if name is None:
                return None
            parts.append(name)
            parent = int.from_bytes(above, "big")
        return "/" + "/".join(part.decode("utf-8", "surrogateescape") for part in reversed(parts))

    def parent_of(self, directory: int) -> int:
        """The directory holding ``directory`` (the root is its own parent)."""
        with self.reading() as txn:
            parent = txn.get(_key(directory), db=self.db["dirparents"])
        return int.from_bytes(parent, "big") if parent else directory

    def create(self, parent: int, name: bytes, kind: int, mode: int, uid: int, gid: int, data: bytes = b"",
               notes: dict[bytes, bytes | None] | None = None, rdev: int = 0) -> Inode:
        """A new file, directory, symlink (``data`` is its target) or special
        file (FIFO, socket, device node: the type is in ``mode``, a device's
        number in ``rdev``). ``notes``: internal xattrs written with it (see _put_notes)."""

        def op(txn):
            if txn.get(_key(parent) + name, db=self.db["dirents"]) is not None:
                raise FileExistsError(name)
            parent_inode = self._inode(txn, parent)
            if parent_inode is None or not parent_inode.is_dir:
                raise NotADirectoryError(parent)
            t = now_ns()
            inode = Inode(self._next_ino(txn), kind, mode, uid, gid, 2 if kind == DIR else 1,
                          len(data), t, t, t, len(data), 0, rdev if kind == SPECIAL else 0)
            if kind == SYMLINK:
                txn.put(_chunk_key(inode.ino, 0, 0), data, db=self.db["chunks"])
            elif kind not in (DIR, SPECIAL):
                inode = replace(inode, kind=VERBATIM)  # an empty file is verbatim until written
            self._put(txn, inode)
            self._put_notes(txn, inode.ino, notes)
            txn.put(_key(parent) + name, _key(inode.ino), db=self.db["dirents"])
            if kind == DIR:
                txn.put(_key(inode.ino), _key(parent), db=self.db["dirparents"])
            self._put(txn, replace(parent_inode, nlink=parent_inode.nlink + (kind == DIR), mtime_ns=t, ctime_ns=t))
            return inode

        return self.write(op)

    def link(self, ino: int, parent: int, name: bytes) -> Inode:
        """One more name for a file that is not a directory (a hard link)."""

        def op(txn):
            key = _key(parent) + name
            if txn.get(key, db=self.db["dirents"]) is not None:
                raise FileExistsError(name)
            parent_inode = self._inode(txn, parent)
            if parent_inode is None or not parent_inode.is_dir:
                raise NotADirectoryError(parent)
            inode = self._inode(txn, ino)
            if inode is None or inode.nlink == 0:  # its last name went meanwhile
                raise FileNotFoundError(ino)
            if inode.is_dir:
                raise PermissionError(errno.EPERM, "hard links to directories are not allowed")
            if inode.nlink >= LINK_MAX:
                raise OSError(errno.EMLINK, os.strerror(errno.EMLINK))
            t = now_ns()
            inode = replace(inode, nlink=inode.nlink + 1, ctime_ns=t)
            self._put(txn, inode)
            txn.put(key, _key(ino), db=self.db["dirents"])
            self._put(txn, replace(parent_inode, mtime_ns=t, ctime_ns=t))
            return inode

        return self.write(op)

    def unlink(self, parent: int, name: bytes, directory: bool = False,
               in_use: Callable[[int], bool] | None = None) -> Inode:
        """Remove a name. An inode left with no links goes in the same
        transaction unless ``in_use(ino)`` says it is open (no ``in_use``:
        always kept); a kept one is an orphan until purge()."""

        def op(txn):
            key = _key(parent) + name
            value = txn.get(key, db=self.db["dirents"])
            if value is None:
                raise FileNotFoundError(name)
            inode = self._inode(txn, int.from_bytes(value, "big"))
            if directory != inode.is_dir:
                raise IsADirectoryError(name) if inode.is_dir else NotADirectoryError(name)
            if inode.is_dir and self._has_children(txn, inode.ino):
                raise OSError(39, "Directory not empty")  # ENOTEMPTY
            txn.delete(key, db=self.db["dirents"])
            txn.delete(_key(inode.ino), db=self.db["dirparents"])
            inode = self._drop_link(txn, parent, inode)
            if inode.nlink == 0 and in_use is not None and not in_use(inode.ino):
                self._delete_inode(txn, inode.ino)
            return inode

        return self.write(op)

    def _has_children(self, txn, ino: int) -> bool:
        cursor = txn.cursor(db=self.db["dirents"])
        return cursor.set_range(_key(ino)) and cursor.key().startswith(_key(ino))

    def _drop_link(self, txn, parent: int, inode: Inode) -> Inode:
        t = now_ns()
        parent_inode = self._inode(txn, parent)
        self._put(txn, replace(parent_inode, nlink=parent_inode.nlink - inode.is_dir, mtime_ns=t, ctime_ns=t))
        remaining = 0 if inode.is_dir else inode.nlink - 1
        inode = replace(inode, nlink=remaining, ctime_ns=t)
        self._put(txn, inode)
        if remaining == 0:
            txn.put(_key(inode.ino), b"", db=self.db["orphans"])
        return inode

    def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes,
               no_replace: bool = False) -> None:
        """POSIX rename: atomically replaces a target of the same type
        (``no_replace``: refuses with FileExistsError if there is one)."""

        def op(txn):
            old_key, new_key = _key(old_parent) + old_name, _key(new_parent) + new_name
            value = txn.get(old_key, db=self.db["dirents"])
            if value is None:
                raise FileNotFoundError(old_name)
            moving = self._inode(txn, int.from_bytes(value, "big"))
            if moving.is_dir and self._is_ancestor(txn, moving.ino, new_parent):
                raise OSError(22, "Invalid argument")  # EINVAL: into its own subtree
            existing = txn.get(new_key, db=self.db["dirents"])
            if existing is not None and no_replace:
                raise FileExistsError(new_name)
            if existing == value:
                return  # two names of one file: POSIX says do nothing
            if existing is not None:
                target = self._inode(txn, int.from_bytes(existing, "big"))
                if target.is_dir and not moving.is_dir:
                    raise IsADirectoryError(new_name)
                if moving.is_dir and not target.is_dir:
                    raise NotADirectoryError(new_name)
                if target.is_dir and self._has_children(txn, target.ino):
                    raise OSError(39, "Directory not empty")
                self._drop_link(txn, new_parent, target)
                txn.delete(existing, db=self.db["dirparents"])
            txn.delete(old_key, db=self.db["dirents"])
            txn.put(new_key, value, db=self.db["dirents"])
            if moving.is_dir:
                txn.put(value, _key(new_parent), db=self.db["dirparents"])
            t = now_ns()
            if moving.is_dir and old_parent != new_parent:
                for ino, delta in ((old_parent, -1), (new_parent, 1)):
                    p = self._inode(txn, ino)
                    self._put(txn, replace(p, nlink=p.nlink + delta))
            for ino in {old_parent, new_parent}:
                p = self._inode(txn, ino)
                self._put(txn, replace(p, mtime_ns=t, ctime_ns=t))
            self._put(txn, replace(moving, ctime_ns=t))

        self.write(op)

    def _is_ancestor(self, txn, ancestor: int, ino: int) -> bool:
        """Is directory ``ancestor`` ``ino`` itself or above it?"""
        while True:
            if ino == ancestor:
                return True
            parent = txn.get(_key(ino), db=self.db["dirparents"])
            if parent is None:
                return False
            ino = int.from_bytes(parent, "big")

    def purge(self, ino: int) -> None:
        """Delete an orphan's data (no name and no open handle left)."""

        def op(txn):
            inode = self._inode(txn, ino)
            if inode is None or inode.nlink > 0:
                txn.delete(_key(ino), db=self.db["orphans"])
                return
            self._delete_inode(txn, ino)

        self.write(op)

    def _delete_inode(self, txn, ino: int) -> None:
        self._delete_content(txn, ino)
        txn.delete(_key(ino), db=self.db["uploads"])
        txn.delete(_key(ino), db=self.db["inodes"])
        txn.delete(_key(ino), db=self.db["orphans"])
        txn.delete(_key(ino), db=self.db["pending"])
        for name in self._xattr_names(txn, ino):
            txn.delete(_key(ino) + name, db=self.db["xattrs"])

    def orphans(self) -> list[int]:
        with self.reading() as txn:
            return [int.from_bytes(k, "big") for k, _ in txn.cursor(db=self.db["orphans"])]

    # -- attributes

    def setattr(self, ino: int, **changes) -> Inode:
        def op(txn):
            inode = self._inode(txn, ino)
            if inode is None:
                raise FileNotFoundError(ino)
            inode = replace(inode, ctime_ns=now_ns(), **changes)
            self._put(txn, inode)
            return inode

        return self.write(op)

    # -- content
    #
    # A file's bytes are chunks of at most CHUNK bytes, keyed ino | index |
    # version. The content of an inode is, for each index, its chunk whose
    # version is at most the inode's generation (a commit deletes what it
    # replaces, so there is at most one); a missing or short chunk reads as
    # zeros up to the size, so holes cost nothing. Chunks of a higher version
    # are a writer's uploads in progress (the `uploads` table names the
    # version): nobody reads them until commit_content() makes them the
    # content in one small transaction, and a mount drops what a crash left.

    def _chunks_of(self, txn, ino: int, start: int = 0, end: int | None = None,
                   step_bytes: int = CHUNK) -> list[tuple[int, int, bytes]]:
        """(index, version, key) of ``ino``'s chunks with ``start <= index < end``, in order.

        py-lmdb touches every page of the value under the cursor at each step
        (it preloads it, to fault it in without the GIL), even when only keys
        are asked for: each step maps a chunk, so each counts as read
        (``step_bytes``: what a chunk holds at most, where the caller knows less)."""
        prefix = _key(ino)
        found = []
        cursor = txn.cursor(db=self.db["chunks"])
        if cursor.set_range(_chunk_prefix(ino, start)):
            for key in cursor.iternext(values=False):
                self._mapped.touched(step_bytes)
                key = bytes(key)
                if not key.startswith(prefix):
                    break
                _, index, version = chunk_key_parts(key)
                if end is not None and index >= end:
                    break
                found.append((index, version, key))
        return found

    def _delete_chunks(self, txn, ino: int, up_to: int | None = None) -> None:
        """Delete ``ino``'s chunks (only those of versions up to ``up_to`` when given)."""
        inode = self._inode(txn, ino)
        # a small file's chunks are small: counted as a whole chunk each, deleting
        # many small files would drop the map every few dozen (reading /proc/self/maps each time)
        uploading = txn.get(_key(ino), db=self.db["uploads"]) is not None  # its chunks may be larger
        step = CHUNK if inode is None or uploading else max(1, min(CHUNK, inode.size, inode.stored))
        for _, version, key in self._chunks_of(txn, ino, step_bytes=step):
            if up_to is None or version <= up_to:
                self._delete_chunk(txn, key, step)

    def _delete_chunk(self, txn, key: bytes, step_bytes: int = CHUNK) -> None:
        txn.delete(key, db=self.db["chunks"])
        self._mapped.touched(step_bytes)  # deleting a value touches its pages too (measured: as many as it has)

    def _delete_content(self, txn, ino: int) -> None:
        self._delete_chunks(txn, ino)
        txn.delete(_key(ino), db=self.db["records"])

    def _put_chunks(self, txn, ino: int, data: bytes, version: int) -> tuple[int, int]:
        """Store content as chunks of ``version``, leaving out pieces that are
        all zeros (holes); returns (its length, the bytes stored)."""
        length = stored = 0
        for index, piece in enumerate(_pieces(data)):
            length += len(piece)
            if not _all_zeros(piece):
                txn.put(_chunk_key(ino, index, version), piece, db=self.db["chunks"])
                stored += len(piece)
        return length, stored

    def _put_notes(self, txn, ino: int, notes: dict[bytes, bytes | None] | None) -> None:
        """Internal xattrs (the verdict…): a value of None removes the note."""
        for name, value in (notes or {}).items():
            if value is None:
                txn.delete(_key(ino) + name, db=self.db["xattrs"])
            else:
                txn.put(_key(ino) + name, value, db=self.db["xattrs"])

    def _content_changed(self, txn, inode: Inode, size: int, stored: int, generation: int, queue: bool,
                         mtime_ns: int | None, notes, ctime_ns: int | None = None) -> Inode:
        """``ctime_ns``: when the content last changed (a writer's last write,
        which getattr showed while it was unsaved), else now."""
        t = now_ns()
        kind = PENDING if queue and size else VERBATIM
        inode = replace(inode, kind=kind, size=size, stored=stored, mtime_ns=mtime_ns or t,
                        ctime_ns=max(ctime_ns or t, inode.ctime_ns), generation=generation)
        self._put(txn, inode)
        self._put_notes(txn, inode.ino, notes)
        if kind == PENDING:
            txn.put(_key(inode.ino), b"", db=self.db["pending"])
        else:
            txn.delete(_key(inode.ino), db=self.db["pending"])
        return inode

    def stage(self, ino: int, data: bytes, queue: bool = True, mtime_ns: int | None = None,
              notes: dict[bytes, bytes | None] | None = None) -> Inode:
        """Durably replace a file's content with raw bytes in one transaction
        (uploads in progress go too); queue it for encoding unless it is empty. ``mtime_ns``: when the content was last written (default:
        now). ``notes``: internal xattrs changed in the same transaction.
        The mount writes large files with upload() and commit_content() instead."""

        def op(txn):
            inode = self._inode(txn, ino)
            if inode is None:
                raise FileNotFoundError(ino)
            self._delete_content(txn, ino)
            txn.delete(_key(ino), db=self.db["uploads"])
            length, stored = self._put_chunks(txn, ino, data, inode.generation + 1)
            return self._content_changed(txn, inode, length, stored, inode.generation + 1, queue, mtime_ns, notes)

        return self.write(op)

    def _writers_inode(self, txn, ino: int, version: int) -> Inode:
        """The inode a writer's new ``version`` of the content is for; that version must be new."""
        inode = self._inode(txn, ino)
        if inode is None:
            raise FileNotFoundError(ino)
        if version <= inode.generation:
            raise ValueError(f"inode {ino}: content version {version} is not above generation {inode.generation}")
        return inode

    def upload(self, ino: int, version: int, pieces: dict[int, bytes]) -> None:
        """Part of a writer's new content, stored now but read by nobody until
        commit_content(ino, version, …): chunks of ``version``, which must be
        above the inode's generation. An empty piece removes an earlier upload
        of its index. A writer uploads as it goes, so that neither its memory
        nor one transaction grows with the file."""

        def op(txn):
            self._writers_inode(txn, ino, version)
            txn.put(_key(ino), version.to_bytes(8, "big"), db=self.db["uploads"])
            for index, piece in pieces.items():
                key = _chunk_key(ino, index, version)
                if piece and not _all_zeros(piece):
                    txn.put(key, piece, db=self.db["chunks"])
                else:
                    self._delete_chunk(txn, key)

        self.write(op)

    def commit_content(self, ino: int, version: int, size: int, pieces: dict[int, bytes], uploaded: set[int],
                       keep_below: int, queue: bool = True, mtime_ns: int | None = None,
                       notes: dict[bytes, bytes | None] | None = None, ctime_ns: int | None = None) -> Inode:
        """Make a writer's content the file's, in one transaction. For each
        chunk index below ``size``: ``pieces[index]`` if given (all zeros or
        empty: a hole), else its upload of ``version`` if the index is in
        ``uploaded``, else, below ``keep_below``, the committed chunk as it
        is; anything else goes. The transaction holds only ``pieces``, never
        the whole file."""
        count = -(-size // CHUNK)

        def op(txn):
            inode = self._writers_inode(txn, ino, version)
            chunks = self.db["chunks"]
            entries = self._chunks_of(txn, ino)
            stored = 0
            for index, v, key in entries:
                if v == version:
                    keep = index < count and index not in pieces and index in uploaded
                elif v <= inode.generation:
                    keep = index < min(count, keep_below) and index not in pieces and index not in uploaded
                else:
                    keep = False  # an upload a crash left behind
                if keep:
                    stored += len(txn.get(key, db=chunks))  # a memoryview: the bytes are not copied
                    self._mapped.touched(CHUNK)  # but py-lmdb touched its pages
                else:
                    self._delete_chunk(txn, key)
            for index, piece in pieces.items():
                piece = piece[: max(0, size - index * CHUNK)]
                if index < count and not _all_zeros(piece):
                    txn.put(_chunk_key(ino, index, version), piece, db=chunks)
                    stored += len(piece)
            txn.delete(_key(ino), db=self.db["uploads"])
            txn.delete(_key(ino), db=self.db["records"])
            return self._content_changed(txn, inode, size, stored, version, queue, mtime_ns, notes, ctime_ns)

        return self.write(op, buffers=True)

    def read_upload(self, ino: int, index: int, version: int, lo: int, hi: int) -> bytes:
        """Bytes ``lo:hi`` of an upload in progress (shorter when the chunk is: the rest is zeros)."""
        with self._transaction(write=False, buffers=True) as txn:
            value = txn.get(_chunk_key(ino, index, version), db=self.db["chunks"])
            data = b"" if value is None else bytes(value[lo:hi])
            self._mapped.touched(len(data))
        return data

    def drop_abandoned_uploads(self) -> int:
        """Delete uploads no writer will commit (its mount died); returns how many files had some."""

        def op(txn):
            abandoned = [bytes(key) for key, _ in txn.cursor(db=self.db["uploads"])]
            for key in abandoned:
                ino = int.from_bytes(key, "big")
                inode = self._inode(txn, ino)
                if inode is not None:
                    for _, version, chunk in self._chunks_of(txn, ino):
                        if version > inode.generation:
                            self._delete_chunk(txn, chunk)
                txn.delete(key, db=self.db["uploads"])
            return len(abandoned)

        return self.write(op)

    def read_raw(self, ino: int, offset: int = 0, size: int | None = None) -> bytes:
        """Bytes of a pending or verbatim file (or a symlink target), as
        committed; only the chunks that overlap the range are touched, and
        only the bytes asked for are copied out of the map."""
        with self._transaction(write=False, buffers=True) as txn:
            inode = self._inode(txn, ino)
            if inode is None:
                raise FileNotFoundError(ino)
            end = inode.size if size is None else min(inode.size, offset + size)
            if end <= offset:
                return b""
            out = bytearray(end - offset)  # holes and short chunks read as zeros
            chunks = self.db["chunks"]
            current = {}  # index -> its chunk of the highest version up to the generation (keys sort by version)
            for index, version, key in self._chunks_of(txn, ino, offset // CHUNK, -(-end // CHUNK)):
                if version <= inode.generation:  # above it: an upload in progress
                    current[index] = key
            for index, key in current.items():
                base = index * CHUNK
                value = txn.get(key, db=chunks)
                lo, hi = max(offset - base, 0), min(end - base, len(value))
                if hi > lo:
                    out[base + lo - offset : base + hi - offset] = value[lo:hi]
            self._mapped.touched(end - offset)
        return bytes(out)

    def record(self, ino: int) -> bytes | None:
        with self.reading() as txn:
            return txn.get(_key(ino), db=self.db["records"])

    def pending(self, limit: int | None = None, skip: Callable[[int], bool] | None = None) -> list[int]:
        """Queued inodes in order, at most ``limit``, leaving out those ``skip`` names."""
        with self.reading() as txn:
            out = []
            for key, _ in txn.cursor(db=self.db["pending"]):
                ino = int.from_bytes(key, "big")
                if skip is not None and skip(ino):
                    continue
                out.append(ino)
                if limit and len(out) >= limit:
                    break
            return out

    def is_pending(self, ino: int) -> bool:
        with self.reading() as txn:
            return txn.get(_key(ino), db=self.db["pending"]) is not None

    def finish_encode(self, ino: int, generation: int, record: bytes | None, output_length: int = 0,
                      notes: dict[bytes, bytes] | None = None) -> bool:
        """Replace staged bytes by a latent record (or keep them verbatim when
        ``record`` is None), unless the file changed since it was read.
        ``notes``: internal xattrs (the verdict) written in the same transaction."""

        def op(txn):
            inode = self._inode(txn, ino)
            if inode is None or inode.generation != generation or inode.kind != PENDING:
                txn.delete(_key(ino), db=self.db["pending"]) if inode is None else None
                return False
            txn.delete(_key(ino), db=self.db["pending"])
            self._put_notes(txn, ino, notes)
            if record is None:
                self._put(txn, replace(inode, kind=VERBATIM))
                return True
            self._delete_chunks(txn, ino, up_to=generation)  # a writer's uploads in progress stay
            txn.put(_key(ino), record, db=self.db["records"])
            # the bytes served change; caches that trust (size, mtime) to tell
            # (the kernel's page cache under auto_cache, rsync) must see it even
            # when the reconstruction has the original's length
            mtime = inode.mtime_ns + 1 if output_length == inode.size else inode.mtime_ns
            self._put(txn, replace(inode, kind=LATENT, size=output_length, stored=len(record), mtime_ns=mtime))
            return True

        return self.write(op)

    def pending_count(self) -> int:
        with self.reading() as txn:
            return txn.stat(self.db["pending"])["entries"]

    # -- bulk import (the caller holds the store lock: no handle can be open)

    def put_content(self, pieces: Iterable[tuple[int, bytes]], batch_bytes: int = 16 << 20) -> Streamed:
        """Store the content of a new file without holding it: ``pieces`` are
        (chunk index, bytes at most CHUNK long) in increasing index order, read
        once (a generator reading the source is the point); indexes left out,
        short pieces' tails and all-zero pieces are holes. Pieces go to the
        store about ``batch_bytes`` at a time, each batch in a transaction of
        its own, so neither memory nor a transaction grows with the file.
        The file has no name until put_files() gives it one (NewFile.content):
        until then it is an orphan with an upload in progress, which the next
        mount (or import) drops if this process dies first."""

        def begin(txn):
            ino, t = self._next_ino(txn), now_ns()
            self._put(txn, Inode(ino, VERBATIM, 0o100600, os.getuid(), os.getgid(), 0, 0, t, t, t, 0, 0))
            txn.put(_key(ino), b"", db=self.db["orphans"])
            return ino

        ino = self.write(begin)
        batch: dict[int, bytes] = {}
        held = end = stored = 0
        last = -1
        try:
            for index, piece in pieces:
                if index <= last or len(piece) > CHUNK or index >= 1 << 32:
                    raise ValueError(f"put_content: piece {index} of {len(piece)} bytes after piece {last}")
                last, end = index, index * CHUNK + len(piece)
                if _all_zeros(piece):
                    continue  # a hole: never stored, nothing held
                batch[index] = piece
                held += len(piece)
                if held >= batch_bytes:
                    self.upload(ino, 1, batch)
                    stored += held
                    batch, held = {}, 0
            if batch:
                self.upload(ino, 1, batch)
                stored += held
        except BaseException:  # reading the source failed, say: what was stored of it goes
            self.purge(ino)
            raise
        return Streamed(ino, end, stored)

    def put_files(self, files: list["NewFile"]) -> list[Inode]:
        """Add finished files in one transaction, each replacing a non-directory
        of the same name. Import writes final forms directly: a crash leaves
        each file either absent (the rerun imports it) or complete."""

        def op(txn):
            return [self._put_file(txn, f) for f in files]

        return self.write(op)

    def _put_file(self, txn, f: "NewFile") -> Inode:
        key = _key(f.parent) + f.name
        existing = txn.get(key, db=self.db["dirents"])
        if existing is not None:
            old = self._inode(txn, int.from_bytes(existing, "big"))
            if old.is_dir:
                raise IsADirectoryError(f.name)
            txn.delete(key, db=self.db["dirents"])
            if self._drop_link(txn, f.parent, old).nlink == 0:  # its other names (hard links) keep it
                self._delete_inode(txn, old.ino)
        parent = self._inode(txn, f.parent)
        if parent is None or not parent.is_dir:
            raise NotADirectoryError(f.parent)
        t = now_ns()
        if f.content is not None:  # stored by put_content, as the upload of version 1 of an orphan
            ino = f.content.ino
            orphan = self._inode(txn, ino)
            if orphan is None or orphan.nlink or txn.get(_key(ino), db=self.db["orphans"]) is None:
                raise FileNotFoundError(f"inode {ino} is not content waiting for a name")
            txn.delete(_key(ino), db=self.db["orphans"])
            txn.delete(_key(ino), db=self.db["uploads"])
            inode = Inode(ino, VERBATIM, f.mode, f.uid, f.gid, 1, f.content.size, f.atime_ns, f.mtime_ns, t,
                          f.content.stored, 1)
        elif f.latent_length is not None:
            inode = Inode(self._next_ino(txn), LATENT, f.mode, f.uid, f.gid, 1, f.latent_length, f.atime_ns,
                          f.mtime_ns, t, len(f.data), 1)
            txn.put(_key(inode.ino), f.data, db=self.db["records"])
        else:
            inode = Inode(self._next_ino(txn), VERBATIM, f.mode, f.uid, f.gid, 1, len(f.data), f.atime_ns,
                          f.mtime_ns, t, 0, 1)
            inode = replace(inode, stored=self._put_chunks(txn, inode.ino, f.data, inode.generation)[1])
        for name, value in f.xattrs.items():
            txn.put(_key(inode.ino) + name, value, db=self.db["xattrs"])
        self._put(txn, inode)
        txn.put(key, _key(inode.ino), db=self.db["dirents"])
        self._put(txn, replace(parent, mtime_ns=t, ctime_ns=t))
        return inode

    # -- extended attributes

    def _xattr_names(self, txn, ino: int) -> list[bytes]:
        prefix = _key(ino)
        names = []
        cursor = txn.cursor(db=self.db["xattrs"])
        if cursor.set_range(prefix):
            for key, _ in cursor:
                if not key.startswith(prefix):
                    break
                names.append(key[8:])
        return names

    def xattrs(self, ino: int) -> list[bytes]:
        with self.reading() as txn:
            return self._xattr_names(txn, ino)

    def get_xattr(self, ino: int, name: bytes) -> bytes | None:
        with self.reading() as txn:
            return txn.get(_key(ino) + name, db=self.db["xattrs"])

    def set_xattr(self, ino: int, name: bytes, value: bytes) -> None:
        def op(txn):
            txn.put(_key(ino) + name, value, db=self.db["xattrs"])
            self._touch_ctime(txn, ino)

        self.write(op)

    def remove_xattr(self, ino: int, name: bytes) -> bool:
        def op(txn):
            removed = txn.delete(_key(ino) + name, db=self.db["xattrs"])
            if removed:
                self._touch_ctime(txn, ino)
            return removed

        return self.write(op)

    def _touch_ctime(self, txn, ino: int) -> None:
        """A metadata change: the inode's ctime is now (POSIX)."""
        inode = self._inode(txn, ino)
        if inode is not None:
            self._put(txn, replace(inode, ctime_ns=now_ns()))
