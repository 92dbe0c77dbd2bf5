"""FUSE Operations (mfusepy): translate calls and errnos, nothing else."""

from __future__ import annotations

import errno
import logging

from .binding import load
from .filesystem import Filesystem
from .kernel_cache import KernelCache

_mfusepy = load()
FuseOSError, Operations, fuse_get_context = _mfusepy.FuseOSError, _mfusepy.Operations, _mfusepy.fuse_get_context
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2  # renameat2(2) flags
FUSE_CAP_AUTO_INVAL_DATA = 1 << 12  # libfuse 3's fuse_common.h

log = logging.getLogger(__name__)


def _translated(method):
    def call(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except FuseOSError:
            raise
        except OSError as error:
            raise FuseOSError(error.errno or errno.EIO) from None
        except MemoryError:
            log.error("out of memory in %s %s", method.__name__, args[:1])
            raise FuseOSError(errno.ENOMEM) from None
        except Exception as error:  # a bug: the caller gets EIO, the log says where (-vv: the traceback)
            log.error("internal error in %s %s: %s: %s", method.__name__, args[:1], type(error).__name__, error)
            log.debug("traceback", exc_info=True)
            raise FuseOSError(errno.EIO) from None

    call.__name__ = method.__name__
    return call


class SdfsOperations(Operations):
    use_ns = True  # mfusepy reads this: utimens gets and getattr may give integer nanoseconds
    def __init__(self, fs: Filesystem, on_ready=None, on_destroy=None):
        """libfuse runs in the foreground (sdfs forks itself, before opening
        anything), so the filesystem is built before mounting; ``on_ready``
        runs in init(), once the kernel talks to us (threads start there)."""
        self.fs = fs
        self._on_ready = on_ready
        self._on_destroy = on_destroy

    def init_with_config(self, conn, config):
        if conn is not None:
            # reads of an open file use its cached pages without asking for its
            # attributes first (each open checks them: auto_cache); see mount.py
            conn.want &= ~FUSE_CAP_AUTO_INVAL_DATA
        if KernelCache.supported(_mfusepy._libfuse):
            self.fs.kernel.attach(_mfusepy._libfuse)
        if self._on_ready:
            self._on_ready()

    def destroy(self, path):
        self.fs.kernel.detach()
        if self._on_destroy:
            self._on_destroy()

    def _caller(self):
        uid, gid, _ = fuse_get_context()
        return uid, gid

    @_translated
    def getattr(self, path, fh=None):
        return self.fs.getattr(path, fh)

    @_translated
    def readdir(self, path, fh):
        return self.fs.readdir(path)

    @_translated
    def mkdir(self, path, mode):
        return self.fs.mkdir(path, mode, *self._caller())

    @_translated
    def rmdir(self, path):
        return self.fs.rmdir(path)

    @_translated
    def unlink(self, path):
        return self.fs.unlink(path)

    @_translated
    def rename(self, old, new, flags=0):
        if flags & ~RENAME_NOREPLACE:  # RENAME_EXCHANGE, RENAME_WHITEOUT: not supported
            raise FuseOSError(errno.EINVAL)
        return self.fs.rename(old, new, no_replace=bool(flags & RENAME_NOREPLACE))

    @_translated
    def symlink(self, target, source):
        # mfusepy passes (link path, target)
        return self.fs.symlink(target, source, *self._caller())

    @_translated
    def readlink(self, path):
        return self.fs.readlink(path)

    @_translated
    def link(self, target, source):
        # mfusepy passes (new name, existing file), as for symlink
        return self.fs.link(target, source)

    @_translated
    def mknod(self, path, mode, dev):
        return self.fs.mknod(path, mode, dev, *self._caller())

    @_translated
    def chmod(self, path, mode):
        return self.fs.chmod(path, mode)

    @_translated
    def chown(self, path, uid, gid):
        return self.fs.chown(path, uid, gid)

    @_translated
    def utimens(self, path, times=None):
        # mounted with use_ns=True: times are integer nanoseconds
        return self.fs.utimens(path, None if times is None else tuple(int(t) for t in times))

    @_translated
    def create(self, path, mode, fi=None):
        return self.fs.create(path, mode, *self._caller())

    @_translated
    def open(self, path, flags):
        return self.fs.open(path, flags)

    @_translated
    def read(self, path, size, offset, fh):
        return self.fs.read(path, size, offset, fh)

    @_translated
    def write(self, path, data, offset, fh):
        return self.fs.write(path, data, offset, fh)

    @_translated
    def truncate(self, path, length, fh=None):
        return self.fs.truncate(path, length, fh)

    @_translated
    def flush(self, path, fh):
        return self.fs.flush(path, fh)

    @_translated
    def release(self, path, fh):
        return self.fs.release(path, fh)

    @_translated
    def fsync(self, path, datasync, fh):
        return self.fs.fsync(path, datasync, fh)

    @_translated
    def fsyncdir(self, path, datasync, fh):
        return self.fs.fsyncdir(path, datasync, fh)

    @_translated
    def getxattr(self, path, name, position=0):
        return self.fs.getxattr(path, name)

    @_translated
    def listxattr(self, path):
        return self.fs.listxattr(path)

    @_translated
    def setxattr(self, path, name, value, options, position=0):
        return self.fs.setxattr(path, name, value)

    @_translated
    def removexattr(self, path, name):
        return self.fs.removexattr(path, name)

    @_translated
    def statfs(self, path):
        return self.fs.statfs()

    def access(self, path, amode):
        return 0  # permission checks are the kernel's (default_permissions) when other users see the mount
