"""The FUSE binding: mfusepy (the maintained fork of fusepy, same API) over
libfuse 3.

Why not fusepy over libfuse 2: libfuse 2's high-level API calls utimens only
when both times change, so `touch -a` and `touch -m` (utimensat with one time
UTIME_OMIT) returned 0 and changed nothing; libfuse 3 passes UTIME_OMIT and
UTIME_NOW on. libfuse 3 also sends rename flags, which mfusepy drops: they are
passed on here, so RENAME_NOREPLACE is never taken for a plain rename.
"""

from __future__ import annotations

import ctypes.util
import os

from ..errors import SdfsError

LIBRARY = "fuse3"


def require_libfuse() -> None:
    """mfusepy loads libfuse through ctypes when it is first imported; without
    it that import fails with a bare "Unable to find libfuse". Say which
    package to install instead, before anything else."""
    if ctypes.util.find_library(LIBRARY) is None:
        raise SdfsError(
            "libfuse 3 (libfuse.so.3, which sdfs mount needs) is not installed; install the fuse3 package "
            "(Debian, Ubuntu: fuse3; Fedora: fuse3-libs), or run scripts/setup.sh"
        )


def load():
    """The mfusepy module, bound to libfuse 3 (it would take libfuse 2 first when both are installed)."""
    require_libfuse()
    os.environ["FUSE_LIBRARY_NAME"] = LIBRARY
    import mfusepy

    if mfusepy.fuse_version_major != 3:  # imported earlier with another library
        raise SdfsError(f"mfusepy is bound to libfuse {mfusepy.fuse_version_major}; sdfs needs libfuse 3")
    return mfusepy


def fuse_class():
    mfusepy = load()

    class Fuse(mfusepy.FUSE):
        def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
            return self.operations.rename(old.decode(self.encoding, self.errors),
                                          new.decode(self.encoding, self.errors), flags)

    return Fuse
