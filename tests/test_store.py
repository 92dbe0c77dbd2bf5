import subprocess
import sys

import pytest

from sdfs.errors import ModelMismatch
from sdfs.store import CHUNK, DIR, LATENT, PENDING, ROOT, SYMLINK, VERBATIM, Store

from tests.conftest import STORE_MODEL as MODEL


def test_store_module_does_not_import_torch():
    code = "import sys, sdfs.store; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_create_lookup_listdir_and_nlink(store):
    d = store.create(ROOT, b"photos", DIR, 0o40755, 0, 0)
    f = store.create(d.ino, b"a.png", VERBATIM, 0o100644, 0, 0)
    link = store.create(d.ino, b"link", SYMLINK, 0o120777, 0, 0, b"a.png")
    assert store.lookup(ROOT, b"photos") == d.ino
    assert sorted(store.listdir(d.ino)) == [(b"a.png", f.ino), (b"link", link.ino)]
    assert store.inode(ROOT).nlink == 3 and store.inode(d.ino).nlink == 2
    assert store.read_raw(link.ino) == b"a.png"
    with pytest.raises(FileExistsError):
        store.create(d.ino, b"a.png", VERBATIM, 0o100644, 0, 0)


def test_stage_read_ranges_across_chunks_and_encode(store):
    f = store.create(ROOT, b"big.bin", VERBATIM, 0o100644, 0, 0)
    data = bytes(range(256)) * (3 * CHUNK // 256 + 17)
    staged = store.stage(f.ino, data)
    assert staged.kind == PENDING and staged.size == len(data) and store.pending() == [f.ino]
    assert store.read_raw(f.ino) == data
    assert store.read_raw(f.ino, CHUNK - 5, 10) == data[CHUNK - 5 : CHUNK + 5]
    assert store.read_raw(f.ino, len(data) - 3, 100) == data[-3:]
    assert store.read_raw(f.ino, len(data) + 10, 5) == b""
    # a stale encode (file rewritten meanwhile) is dropped
    store.stage(f.ino, b"new")
    assert not store.finish_encode(f.ino, staged.generation, b"record", 1234)
    current = store.inode(f.ino)
    assert store.finish_encode(f.ino, current.generation, b"record", 1234)
    latent = store.inode(f.ino)
    assert latent.kind == LATENT and latent.size == 1234 and latent.stored == 6
    assert store.record(f.ino) == b"record" and store.pending() == []


def test_rename_replaces_and_refuses_loops(store):
    a = store.create(ROOT, b"a", DIR, 0o40755, 0, 0)
    b = store.create(a.ino, b"b", DIR, 0o40755, 0, 0)
    with pytest.raises(OSError):
        store.rename(ROOT, b"a", b.ino, b"inside")
    f1 = store.create(ROOT, b"f1", VERBATIM, 0o100644, 0, 0)
    f2 = store.create(ROOT, b"f2", VERBATIM, 0o100644, 0, 0)
    store.rename(ROOT, b"f1", ROOT, b"f2")
    assert store.lookup(ROOT, b"f2") == f1.ino and store.lookup(ROOT, b"f1") is None
    assert store.orphans() == [f2.ino]  # replaced target: no name left
    store.purge(f2.ino)
    assert store.inode(f2.ino) is None and store.orphans() == []
    store.rename(a.ino, b"b", ROOT, b"b")
    assert store.inode(a.ino).nlink == 2 and store.inode(ROOT).nlink == 4


def test_rmdir_refuses_non_empty(store):
    d = store.create(ROOT, b"d", DIR, 0o40755, 0, 0)
    store.create(d.ino, b"x", VERBATIM, 0o100644, 0, 0)
    with pytest.raises(OSError, match="not empty"):
        store.unlink(ROOT, b"d", directory=True)


def test_xattrs(store):
    f = store.create(ROOT, b"f", VERBATIM, 0o100644, 0, 0)
    store.set_xattr(f.ino, b"user.tag", b"holiday")
    assert store.get_xattr(f.ino, b"user.tag") == b"holiday" and store.xattrs(f.ino) == [b"user.tag"]
    assert store.remove_xattr(f.ino, b"user.tag") and store.get_xattr(f.ino, b"user.tag") is None


def test_other_model_refused_and_map_grows(tmp_path):
    path = tmp_path / "s"
    small = Store(path, MODEL, map_size=1 << 20)  # 1 MiB map: staging 3 MiB must grow it
    f = small.create(ROOT, b"f", VERBATIM, 0o100644, 0, 0)
    small.stage(f.ino, b"x" * (3 << 20))
    assert small.read_raw(f.ino, 0, 4) == b"xxxx"
    small.close()
    with pytest.raises(ModelMismatch, match="pass --model"):
        Store(path, {**MODEL, "weights_sha256": "cd" * 32})
    reopened = Store(path, MODEL)
    assert reopened.inode(f.ino).size == 3 << 20
    reopened.close()


def test_same_weights_under_another_name_open_the_store(tmp_path):
    Store(tmp_path / "s", MODEL).close()
    Store(tmp_path / "s", {**MODEL, "name": "/elsewhere/same-weights"}).close()


def test_read_only_open_of_a_store_still_being_created(tmp_path):
    import lmdb

    from sdfs.store import StoreError

    lmdb.open(str(tmp_path / "half"), max_dbs=2).close()  # the environment exists, its databases not yet
    with pytest.raises(StoreError, match="is incomplete"):
        Store(tmp_path / "half", readonly=True)
    with pytest.raises(StoreError, match="is not an sdfs store"):
        Store(tmp_path / "absent", readonly=True)


def test_a_swap_to_a_reconstruction_of_the_same_length_moves_mtime(store):
    """Caches keyed on (size, mtime) must see that the served bytes changed."""
    f = store.create(ROOT, b"same.png", VERBATIM, 0o100644, 0, 0)
    staged = store.stage(f.ino, b"x" * 1000)
    assert store.finish_encode(f.ino, staged.generation, b"record", 1000)
    assert store.inode(f.ino).mtime_ns == staged.mtime_ns + 1
    g = store.create(ROOT, b"other.png", VERBATIM, 0o100644, 0, 0)
    staged = store.stage(g.ino, b"x" * 1000)
    assert store.finish_encode(g.ino, staged.generation, b"record", 1234)
    assert store.inode(g.ino).mtime_ns == staged.mtime_ns  # the size tells already: the user's mtime stays


def test_paths_of_finds_files_names_from_their_inodes(store):
    albums = store.create(ROOT, b"albums", DIR, 0o40755, 0, 0).ino
    summer = store.create(albums, b"summer \xe9t\xe9", DIR, 0o40755, 0, 0).ino
    photo = store.create(summer, b"a.png", VERBATIM, 0o100644, 0, 0, b"x").ino
    top = store.create(ROOT, b"top.txt", VERBATIM, 0o100644, 0, 0, b"y").ino
    found = store.paths_of([photo, top, summer, 9999])
    assert found == {photo: "/albums/summer \udce9t\udce9/a.png",  # bytes that are no UTF-8 kept (surrogateescape)
                     top: "/top.txt", summer: "/albums/summer \udce9t\udce9", 9999: None}


def test_wait_until_free_sees_a_held_lock_without_taking_it(tmp_path):
    from sdfs.store.lock import LOCK_NAME, StoreLock, wait_until_free

    held = StoreLock(tmp_path, "the mount at /mnt").acquire()
    assert wait_until_free(tmp_path, 0.2) is False
    assert (tmp_path / LOCK_NAME).read_text().endswith("(the mount at /mnt)\n")  # untouched by the look
    held.release()
    assert wait_until_free(tmp_path, 0) is True
    assert wait_until_free(tmp_path / "no-store", 0) is True
