#!/usr/bin/env python3
"""The ceiling for bench/fs_bench.py: the smallest honest in-memory FUSE
filesystem on the binding sdfs uses (mfusepy over libfuse 3, through
sdfs.fs.binding), so what it costs is Python, the binding and libfuse, and
nothing of sdfs's own (no store, no buffers, no encoder).

Mount options: those of sdfs that change what the kernel asks (foreground,
multithreaded, use_ino); for caching libfuse's defaults (entry_timeout=1,
attr_timeout=1, negative_timeout=0) and kernel_cache: nothing here changes
behind the kernel's back, so it keeps every page it read, and a re-read runs
at the speed of FUSE's page cache: the best the binding can do.

    python3 bench/ceiling_fs.py MOUNTPOINT    (foreground; fusermount3 -u MOUNTPOINT ends it)
"""

from __future__ import annotations

import errno
import itertools
import stat
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdfs.fs.binding import fuse_class, load  # noqa: E402

mfusepy = load()
UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


def fail(code: int) -> OSError:
    return mfusepy.FuseOSError(code)


class Node:
    def __init__(self, ino: int, mode: int, uid: int = 0, gid: int = 0):
        now = time.time_ns()
        self.attrs = dict(st_ino=ino, st_mode=mode, st_nlink=2 if stat.S_ISDIR(mode) else 1, st_uid=uid,
                          st_gid=gid, st_atime=now, st_mtime=now, st_ctime=now)
        self.data = bytearray()
        self.children: dict[str, Node] = {}


class Ceiling(mfusepy.Operations):
    use_ns = True  # times as integer nanoseconds, as sdfs

    def __init__(self):
        self.mutex = threading.Lock()  # one for the whole tree: libfuse calls from several threads
        self.inos, self.fhs = itertools.count(2), itertools.count(1)
        self.root = Node(1, stat.S_IFDIR | 0o755)  # FUSE_ROOT_ID
        self.open_files: dict[int, Node] = {}  # by handle: an unlinked open file lives on (hard_remove)

    def node(self, path: str) -> Node:
        node = self.root
        for part in filter(None, path.split("/")):
            if (node := node.children.get(part)) is None:
                raise fail(errno.ENOENT)
        return node

    def entry(self, path: str, must_exist: bool = True) -> tuple[Node, str]:
        folder, _, name = path.rpartition("/")
        parent = self.node(folder)
        if must_exist and name not in parent.children:
            raise fail(errno.ENOENT)
        return parent, name

    def new(self, path: str, mode: int) -> Node:
        parent, name = self.entry(path, must_exist=False)
        if name in parent.children:
            raise fail(errno.EEXIST)
        uid, gid, _ = mfusepy.fuse_get_context()
        node = parent.children[name] = Node(next(self.inos), mode, uid, gid)
        return node

    def handle(self, node: Node) -> int:
        fh = next(self.fhs)
        self.open_files[fh] = node
        return fh

    def getattr(self, path, fh=None):
        node = self.open_files[fh] if fh in self.open_files else self.node(path)
        return dict(node.attrs, st_size=len(node.data))

    def readdir(self, path, fh):  # with each entry's type, as sdfs: find and ls need no stat for it
        return [".", ".."] + [(name, {"st_ino": child.attrs["st_ino"], "st_mode": child.attrs["st_mode"]}, 0)
                              for name, child in self.node(path).children.items()]

    def mkdir(self, path, mode):
        self.new(path, stat.S_IFDIR | mode)

    def rmdir(self, path):
        parent, name = self.entry(path)
        if parent.children[name].children:
            raise fail(errno.ENOTEMPTY)
        del parent.children[name]

    def unlink(self, path):
        parent, name = self.entry(path)
        del parent.children[name]

    def rename(self, old, new, flags=0):  # the binding passes renameat2's flags
        (old_parent, old_name), (new_parent, new_name) = self.entry(old), self.entry(new, must_exist=False)
        if flags & RENAME_EXCHANGE:
            raise fail(errno.EINVAL)
        if flags & RENAME_NOREPLACE and new_name in new_parent.children:
            raise fail(errno.EEXIST)
        new_parent.children[new_name] = old_parent.children.pop(old_name)

    def create(self, path, mode, fi=None):
        return self.handle(self.new(path, mode))

    def open(self, path, flags):
        return self.handle(self.node(path))

    def release(self, path, fh):
        self.open_files.pop(fh, None)

    def read(self, path, size, offset, fh):
        return bytes(self.open_files[fh].data[offset:offset + size])

    def write(self, path, data, offset, fh):
        file = self.open_files[fh].data
        file.extend(bytes(max(0, offset - len(file))))
        file[offset:offset + len(data)] = data
        return len(data)

    def truncate(self, path, length, fh=None):
        file = self.node(path).data
        del file[length:]
        file.extend(bytes(length - len(file)))

    def chmod(self, path, mode):
        attrs = self.node(path).attrs
        attrs["st_mode"] = (attrs["st_mode"] & ~0o7777) | (mode & 0o7777)

    def chown(self, path, uid, gid):
        attrs = self.node(path).attrs
        attrs.update({key: value for key, value in (("st_uid", uid), ("st_gid", gid)) if value != -1})

    def utimens(self, path, times=None):
        attrs, now = self.node(path).attrs, time.time_ns()
        for key, value in zip(("st_atime", "st_mtime"), times or (UTIME_NOW, UTIME_NOW)):
            if value != UTIME_OMIT:
                attrs[key] = now if value == UTIME_NOW else int(value)

    def getxattr(self, path, name, position=0):
        raise fail(errno.ENODATA)


def _locked(method):
    def call(self, *args):
        with self.mutex:
            return method(self, *args)
    return call


for _name in ("getattr readdir mkdir rmdir unlink rename create open release read write truncate chmod chown "
              "utimens").split():
    setattr(Ceiling, _name, _locked(getattr(Ceiling, _name)))


def main() -> int:
    fuse_class()(Ceiling(), sys.argv[1], foreground=True, nothreads=False, use_ino=True, hard_remove=True, kernel_cache=True,
                 fsname="ceiling", subtype="ceiling")
    return 0


if __name__ == "__main__":
    sys.exit(main())
