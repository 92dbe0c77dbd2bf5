"""fs/kernel_cache.py driven without a mount: which open paths an invalidation reaches."""

import types

import pytest

from sdfs.fs.kernel_cache import KernelCache


class FakeLibfuse:
    """What attach() uses of libfuse: the calling context, and fuse_invalidate_path."""

    def __init__(self):
        self.invalidated = []
        context = types.SimpleNamespace(contents=types.SimpleNamespace(fuse=1))
        self.fuse_get_context = lambda: context

        def invalidate(fuse, path):
            self.invalidated.append(path.decode())
            return 0

        self.fuse_invalidate_path = _Callable(invalidate)
        self.fd = 5  # the session's /dev/fuse descriptor; fuse_unmount makes it -1
        self.fuse_get_session = _Callable(lambda fuse: 2)
        self.fuse_session_fd = _Callable(lambda session: self.fd)


class _Callable:  # attach() sets argtypes and restype on it, as on a ctypes function
    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args):
        return self.fn(*args)


@pytest.fixture
def attached():
    libfuse = FakeLibfuse()
    cache = KernelCache()
    cache.attach(libfuse)
    yield cache, libfuse
    cache.detach()


def test_other_open_names_are_invalidated_never_the_one_the_change_came_through(attached):
    cache, libfuse = attached
    for path in ("/a", "/dir/b", "/dir/c"):
        cache.opened(7, path)
    cache.opened(8, "/single")
    cache.changed(8, "/single")  # open by one name: nothing to tell the kernel
    cache.changed(7, "/dir/b")
    assert sorted(libfuse.invalidated) == ["/a", "/dir/c"]
    libfuse.invalidated.clear()
    cache.invalidate(7)  # the last reader across a swap closes: every name
    assert sorted(libfuse.invalidated) == ["/a", "/dir/b", "/dir/c"]


def test_a_rename_moves_the_remembered_paths_below_a_folder_too(attached):
    cache, libfuse = attached
    cache.opened(7, "/dir/b")
    cache.opened(7, "/a")
    cache.opened(9, "/dir/sub/x")
    cache.opened(9, "/dirx/y")  # shares a prefix, not the folder
    cache.moved(3, "/dir", "/new", directory=True)
    cache.moved(7, "/a", "/a2", directory=False)
    cache.invalidate(7)
    cache.invalidate(9)
    assert sorted(libfuse.invalidated) == ["/a2", "/dirx/y", "/new/b", "/new/sub/x"]


def test_a_closed_file_is_forgotten(attached):
    cache, libfuse = attached
    cache.opened(7, "/a")
    cache.opened(7, "/b")
    cache.closed(7)  # its next open checks size and mtime: nothing to drop now
    cache.changed(7, "/a")
    cache.invalidate(7)
    assert libfuse.invalidated == [] and cache._open == {}


def test_unattached_it_remembers_nothing():
    cache = KernelCache()  # no mount (backend tests, sdfs tools)
    cache.opened(7, "/a")
    cache.invalidate(7)
    assert cache._open == {}


def test_nothing_is_looked_up_once_libfuse_has_unmounted(attached):
    """libfuse frees its table of paths after unmounting and before destroy():
    an invalidation from then on (the encoder finishing a swap) must not touch it."""
    cache, libfuse = attached
    cache.opened(7, "/a")
    libfuse.fd = -1
    cache.invalidate(7)
    assert libfuse.invalidated == []
