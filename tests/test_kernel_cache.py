"""fs/kernel_cache.py driven without a mount: which paths an invalidation reaches."""

import types

from sdfs.fs import kernel_cache
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


class _Callable:  # attach() sets argtypes and restype on it, as on a ctypes function
    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args):
        return self.fn(*args)


def attached():
    libfuse = FakeLibfuse()
    cache = KernelCache()
    cache.attach(libfuse)
    return cache, libfuse


def test_other_names_are_invalidated_never_the_one_the_change_came_through():
    cache, libfuse = attached()
    try:
        for path in ("/a", "/dir/b", "/dir/c"):
            cache.served(7, path)
        cache.served(8, "/single")
        cache.changed(8, "/single")  # one name: nothing to tell the kernel
        cache.changed(7, "/dir/b")
        assert sorted(libfuse.invalidated) == ["/a", "/dir/c"]
        libfuse.invalidated.clear()
        cache.invalidate(7)  # the encoder's swap: every name
        assert sorted(libfuse.invalidated) == ["/a", "/dir/b", "/dir/c"]
    finally:
        cache.detach()


def test_a_rename_moves_the_remembered_paths_below_a_folder_too():
    cache, libfuse = attached()
    try:
        cache.served(7, "/dir/b")
        cache.served(7, "/a")
        cache.served(9, "/dir/sub/x")
        cache.served(9, "/dirx/y")  # shares a prefix, not the folder
        cache.moved(3, "/dir", "/new", directory=True)
        cache.moved(7, "/a", "/a2", directory=False)
        cache.invalidate(7)
        cache.invalidate(9)
        assert sorted(libfuse.invalidated) == ["/a2", "/dirx/y", "/new/b", "/new/sub/x"]
    finally:
        cache.detach()


def test_paths_are_forgotten_once_the_kernel_can_hold_nothing_of_them(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(kernel_cache.time, "monotonic", lambda: now[0])
    cache, libfuse = attached()
    try:
        cache.served(7, "/a")
        now[0] += kernel_cache.REMEMBER_S  # one turn: still remembered (served at most REMEMBER_S ago)
        cache.served(8, "/other")
        cache.invalidate(7)
        assert libfuse.invalidated == ["/a"]
        now[0] += kernel_cache.REMEMBER_S  # two turns: its attributes expired in the kernel long ago
        cache.served(8, "/other")
        libfuse.invalidated.clear()
        cache.invalidate(7)
        assert libfuse.invalidated == [] and 7 not in cache._recent and 7 not in cache._older
    finally:
        cache.detach()


def test_unattached_it_remembers_nothing():
    cache = KernelCache()  # no mount (backend tests, sdfs tools)
    cache.served(7, "/a")
    cache.invalidate(7)
    assert cache._recent == {}
