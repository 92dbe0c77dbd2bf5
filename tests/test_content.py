"""FileContent and the store's versioned chunks, driven without a mount:
uploads past the memory budget, holes, truncation, writes into the middle of
big files, crash before commit, and store format 1 read as format 2."""

from __future__ import annotations

import errno
import os
import lmdb
import pytest

from sdfs.fs.content import FileContent
from sdfs.store import CHUNK, MAX_FILE_SIZE, ROOT, SPECIAL, VERBATIM, Store
from sdfs.store.store import _INODE, _INODE_V1, STORE_VERSION
from tests.conftest import STORE_MODEL as MODEL


def chunk_keys(store: Store, ino: int) -> list[tuple[int, int]]:
    with store.reading() as txn:
        return [(index, version) for index, version, _ in store._chunks_of(txn, ino)]


def open_content(store: Store, ino: int, budget: int = 2 * CHUNK) -> FileContent:
    inode = store.inode(ino)
    return FileContent(store, ino, inode.size, inode.generation, budget=budget)


def test_a_big_write_goes_to_the_store_in_uploads_that_nobody_sees_before_commit(store):
    f = store.create(ROOT, b"big", VERBATIM, 0o100644, 0, 0)
    content = open_content(store, f.ino)
    data = os.urandom(5 * CHUNK + 123)
    for offset in range(0, len(data), 128 << 10):
        content.write(offset, data[offset : offset + (128 << 10)])
    assert len(content.dirty) * CHUNK <= 2 * CHUNK + CHUNK  # the budget, plus the chunk in hand
    assert content.uploaded  # the rest went to the store already
    assert store.inode(f.ino).size == 0 and store.read_raw(f.ino) == b""  # invisible until commit
    assert content.read(CHUNK - 10, 20) == data[CHUNK - 10 : CHUNK + 10]  # an uploaded chunk reads back
    content.commit(queue=False, mtime_ns=None, notes=None)
    assert store.read_raw(f.ino) == data
    assert store.inode(f.ino).stored == len(data)
    with store.reading() as txn:
        assert txn.get(f.ino.to_bytes(8, "big"), db=store.db["uploads"]) is None


def test_uploads_run_beside_the_writer_and_one_that_fails_loses_nothing(store, monkeypatch):
    """With an uploader thread a batch lands while the next one fills; its
    chunks read from memory meanwhile. A failed upload (a full disk) gives its
    chunks back to memory and its error to a later write; then all goes in."""
    from concurrent.futures import ThreadPoolExecutor

    f = store.create(ROOT, b"big", VERBATIM, 0o100644, 0, 0)
    inode = store.inode(f.ino)
    real_upload, calls = store.upload, []

    def upload(ino, version, pieces):
        calls.append(sorted(pieces))
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_upload(ino, version, pieces)

    monkeypatch.setattr(store, "upload", upload)
    data = os.urandom(9 * CHUNK)
    with ThreadPoolExecutor(max_workers=1) as uploader:
        content = FileContent(store, f.ino, inode.size, inode.generation, budget=2 * CHUNK, uploader=uploader)
        failed = None
        for index in range(9):
            try:
                content.write(index * CHUNK, data[index * CHUNK : (index + 1) * CHUNK])
            except OSError as error:
                failed = failed or error
            assert content.read(0, 9 * CHUNK) == data[: (index + 1) * CHUNK]  # flying, failed or not
        assert failed is not None and failed.errno == errno.ENOSPC
        content.commit(queue=False, mtime_ns=None, notes=None)
    assert len(calls) >= 3 and store.read_raw(f.ino) == data


def test_a_local_copy_goes_in_whole_when_its_last_upload_is_still_in_flight(store, tmp_path, monkeypatch):
    """A latent file's reconstruction (or the bytes kept across a swap) is a
    local copy: a commit uploads all of it, and must wait for the last batch."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from sdfs.fs.buffer import WriteBuffer

    f = store.create(ROOT, b"latent-like", VERBATIM, 0o100644, 0, 0)
    data = os.urandom(6 * CHUNK)
    local = WriteBuffer(tmp_path, 1 << 30)
    local.write(0, data)
    real_upload = store.upload

    def slow_upload(*args):
        time.sleep(0.2)  # the commit gets there first unless it waits
        return real_upload(*args)

    monkeypatch.setattr(store, "upload", slow_upload)
    with ThreadPoolExecutor(max_workers=1) as uploader:
        content = FileContent(store, f.ino, len(data), 0, local, budget=2 * CHUNK, uploader=uploader)
        content.write(10, b"!")
        content.commit(queue=False, mtime_ns=None, notes=None)
        content.close()
    assert store.read_raw(f.ino) == data[:10] + b"!" + data[11:]


def test_a_write_in_the_middle_rewrites_only_the_chunks_it_touches(store):
    f = store.create(ROOT, b"big", VERBATIM, 0o100644, 0, 0)
    data = bytearray(os.urandom(4 * CHUNK))
    store.stage(f.ino, bytes(data), queue=False)
    before = dict(chunk_keys(store, f.ino))
    content = open_content(store, f.ino)
    content.write(2 * CHUNK + 5, b"middle")
    content.commit(queue=False, mtime_ns=None, notes=None)
    data[2 * CHUNK + 5 : 2 * CHUNK + 11] = b"middle"
    after = dict(chunk_keys(store, f.ino))
    assert store.read_raw(f.ino) == bytes(data)
    assert {i for i in after if after[i] != before[i]} == {2}  # one chunk rewritten, the others kept as they were


def test_holes_are_not_stored_and_read_as_zeros(store):
    f = store.create(ROOT, b"sparse", VERBATIM, 0o100644, 0, 0)
    content = open_content(store, f.ino)
    far = (2 << 30) + 1
    content.write(far, b"x")
    content.commit(queue=False, mtime_ns=None, notes=None)
    inode = store.inode(f.ino)
    assert inode.size == far + 1 and inode.stored == far % CHUNK + 1  # one chunk, holding up to the byte
    assert [index for index, _ in chunk_keys(store, f.ino)] == [far // CHUNK]
    assert store.read_raw(f.ino, far - 3, 10) == b"\0\0\0x"
    assert store.read_raw(f.ino, CHUNK * 7, 16) == bytes(16)
    # growing by truncate allocates nothing; past what the store can hold is EFBIG
    content = open_content(store, f.ino)
    content.truncate(999_999_999_999_999)
    content.commit(queue=False, mtime_ns=None, notes=None)
    assert store.inode(f.ino).size == 999_999_999_999_999 and store.inode(f.ino).stored == far % CHUNK + 1
    with pytest.raises(OSError) as raised:
        open_content(store, f.ino).truncate(MAX_FILE_SIZE + 1)
    assert raised.value.errno == errno.EFBIG
    with pytest.raises(OSError) as raised:
        open_content(store, f.ino).write(MAX_FILE_SIZE, b"x")
    assert raised.value.errno == errno.EFBIG


def test_truncate_cuts_committed_uploaded_and_dirty_chunks(store):
    f = store.create(ROOT, b"f", VERBATIM, 0o100644, 0, 0)
    data = os.urandom(3 * CHUNK)
    store.stage(f.ino, data, queue=False)
    content = open_content(store, f.ino, budget=CHUNK)
    content.write(3 * CHUNK, os.urandom(2 * CHUNK))  # one chunk uploaded, one in memory
    content.truncate(CHUNK + 7)
    content.write(CHUNK + 7 + 10, b"after a gap")
    content.commit(queue=False, mtime_ns=None, notes=None)
    expected = data[: CHUNK + 7] + bytes(10) + b"after a gap"
    assert store.read_raw(f.ino) == expected and store.inode(f.ino).size == len(expected)
    assert max(index for index, _ in chunk_keys(store, f.ino)) == 1  # nothing left past the end


def test_an_upload_a_crash_left_behind_is_dropped_and_the_file_is_as_committed(store):
    f = store.create(ROOT, b"f", VERBATIM, 0o100644, 0, 0)
    store.stage(f.ino, b"committed", queue=False)
    content = open_content(store, f.ino, budget=CHUNK)
    content.write(0, os.urandom(4 * CHUNK))  # uploads, then the writer's mount dies: no commit
    assert any(version > store.inode(f.ino).generation for _, version in chunk_keys(store, f.ino))
    assert store.drop_abandoned_uploads() == 1
    assert store.read_raw(f.ino) == b"committed"
    assert all(version <= store.inode(f.ino).generation for _, version in chunk_keys(store, f.ino))


def test_special_files_and_hard_links(store):
    fifo = store.create(ROOT, b"fifo", SPECIAL, 0o10644, 0, 0)
    dev = store.create(ROOT, b"null", SPECIAL, 0o20666, 0, 0, rdev=os.makedev(1, 3))
    assert store.inode(dev.ino).rdev == os.makedev(1, 3) and store.inode(fifo.ino).rdev == 0
    f = store.create(ROOT, b"a", VERBATIM, 0o100644, 0, 0)
    store.stage(f.ino, b"shared", queue=False)
    store.link(f.ino, ROOT, b"b")
    assert store.lookup(ROOT, b"b") == f.ino and store.inode(f.ino).nlink == 2
    store.unlink(ROOT, b"a")
    assert store.inode(f.ino).nlink == 1 and store.read_raw(f.ino) == b"shared"
    with pytest.raises(FileExistsError):
        store.link(f.ino, ROOT, b"null")


def test_a_format_1_store_reads_as_format_2(tmp_path):
    """Format 1 inodes (no rdev) and chunk keys (no version) read with rdev 0
    and version 0; opening the store for writing marks it format 2."""
    path = tmp_path / "store"
    s = Store(path, MODEL)
    f = s.create(ROOT, b"old", VERBATIM, 0o100644, 0, 0)
    s.stage(f.ino, b"v1 bytes", queue=False)
    inode = s.inode(f.ino)
    s.close()
    env = lmdb.open(str(path), max_dbs=16)
    inodes, chunks, meta = (env.open_db(name) for name in (b"inodes", b"chunks", b"meta"))
    with env.begin(write=True) as txn:
        key = f.ino.to_bytes(8, "big")
        fields = _INODE.unpack(txn.get(key, db=inodes))
        txn.put(key, _INODE_V1.pack(*fields[:-1]), db=inodes)
        for k, v in list(txn.cursor(db=chunks)):
            if k.startswith(key):
                txn.delete(k, db=chunks)
                txn.put(k[:12], v, db=chunks)
        txn.put(b"format", b"1", db=meta)
    env.close()
    readonly = Store(path, readonly=True)
    try:
        assert readonly.format_version() == 1 and readonly.read_raw(f.ino) == b"v1 bytes"
        assert readonly.inode(f.ino).rdev == 0 and readonly.inode(f.ino).size == inode.size
    finally:
        readonly.close()
    s = Store(path, MODEL)
    try:
        assert s.format_version() == STORE_VERSION and s.read_raw(f.ino) == b"v1 bytes"
        with s.reading() as txn:
            assert [len(k) for k, _ in txn.cursor(db=s.db["chunks"])] == [12]  # read as it is, not rewritten
        content = open_content(s, f.ino)
        content.write(0, b"V2")
        content.commit(queue=False, mtime_ns=None, notes=None)
        assert s.read_raw(f.ino) == b"V2 bytes"
    finally:
        s.close()
