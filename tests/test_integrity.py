"""Data integrity under concurrency and faults, driven without mounting.
Each test reproduces one finding of a stress run against the mount."""

import errno
import os
import threading

import pytest

from sdfs.codec.codec import Codec
from sdfs.codec.guard import Floor
from sdfs.codec.priority import PriorityLock
from sdfs.fs.encoder import Encoder
from sdfs.fs.filesystem import Filesystem
from sdfs.store import CHUNK, Store
from tests.images_factory import CANDIDATES
from tests.mounting import wait_for

READ = 128 << 10  # what the kernel asks per read call


def _filesystem(tmp_path, vae, start=True, cache_bytes=1 << 20, map_size=1 << 30):
    codec = Codec(vae, quality="high", floor=Floor(0, -1))
    store = Store(tmp_path / "store", {"name": "tiny"}, map_size=map_size)
    encoder = Encoder(store, codec)
    fs = Filesystem(store, codec, encoder, cache_bytes=cache_bytes)
    if start:
        encoder.start()
    return fs


@pytest.fixture
def fs(tmp_path, tiny_vae):
    fs = _filesystem(tmp_path, tiny_vae)
    yield fs
    fs.encoder.stop()
    fs.store.close()


def _put(fs, path, data, sync=False):
    fh = fs.create(path, 0o644)
    fs.write(path, data, 0, fh)
    fs.flush(path, fh)
    if sync:
        fs.fsync(path, False, fh)
    fs.release(path, fh)


def _read_all(fs, path, fh=None):
    own = fh is None
    fh = fs.open(path, os.O_RDONLY) if own else fh
    parts, offset = [], 0
    while True:
        part = fs.read(path, READ, offset, fh)
        if not part:
            break
        parts.append(part)
        offset += len(part)
    if own:
        fs.release(path, fh)
    return b"".join(parts)


def test_rewrite_with_o_trunc_before_the_previous_release(fs):
    """Item 1: FUSE sends RELEASE after close() returned, and the kernel turns
    O_TRUNC into OPEN + a truncate without a handle. The truncate must reach the
    file, not the previous (flushed, not yet released) handle's leftovers."""
    old, new = b"old content, longer than the new one\n" * 3, b"new\n"
    first = fs.create("/f.txt", 0o644)
    fs.write("/f.txt", old, 0, first)
    fs.flush("/f.txt", first)  # close() returns; RELEASE is still on its way
    second = fs.open("/f.txt", os.O_WRONLY)  # the kernel strips O_TRUNC ...
    fs.truncate("/f.txt", 0)  # ... and sends it as a truncate by name
    fs.write("/f.txt", new, 0, second)
    fs.flush("/f.txt", second)
    fs.release("/f.txt", first)  # the late RELEASE of the first handle
    fs.release("/f.txt", second)
    assert _read_all(fs, "/f.txt") == new and fs.getattr("/f.txt")["st_size"] == len(new)
    assert fs.store.read_raw(fs.resolve("/f.txt")) == new  # what a remount sees


def test_four_threads_rewriting_never_mix_contents(fs):
    """Item 1 as the stress run found it: rewrites racing with late releases."""
    errors = []

    def rewriter(n):
        path = f"/t{n}.txt"
        pending_release = None
        for round_ in range(60):
            data = f"thread {n} round {round_} ".encode() * (1 + (round_ * 7) % 13)
            fh = fs.open(path, os.O_WRONLY) if pending_release else fs.create(path, 0o644)
            fs.truncate(path, 0)
            fs.write(path, data, 0, fh)
            fs.flush(path, fh)
            if pending_release:
                fs.release(path, pending_release)
            pending_release = fh
            got = _read_all(fs, path)
            if got != data:
                errors.append((path, round_, len(got), len(data)))
        fs.release(path, pending_release)

    threads = [threading.Thread(target=rewriter, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_map_growth_under_three_writers_and_three_readers(tmp_path, tiny_vae):
    """Item 3: a 1 MiB map grown many times over while six threads use the store."""
    fs = _filesystem(tmp_path, tiny_vae, map_size=1 << 20)
    contents = {f"/w{w}-{i}.bin": bytes([w * 16 + i]) * ((1 + i % 3) * CHUNK + 12345) for w in range(3) for i in range(6)}
    written, errors, done = [], [], threading.Event()

    def writer(w):
        try:
            for i in range(6):
                path = f"/w{w}-{i}.bin"
                _put(fs, path, contents[path])
                written.append(path)
        except Exception as error:  # noqa: BLE001 - the test counts every failure
            errors.append(("write", error))

    def reader():
        try:
            while not done.is_set():
                for path in list(written):
                    if _read_all(fs, path) != contents[path]:
                        errors.append(("mismatch", path))
        except Exception as error:  # noqa: BLE001
            errors.append(("read", error))

    writers = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    readers = [threading.Thread(target=reader) for _ in range(3)]
    try:
        for t in writers + readers:
            t.start()
        for t in writers:
            t.join()
        done.set()
        for t in readers:
            t.join()
        assert errors == [] and len(written) == 18
        assert fs.store.env.info()["map_size"] >= 32 << 20  # it really grew, five times or more
        assert fs.encoder.wait_idle(timeout=60) and fs.encoder.state()["running"]  # the encoder lives on
        for path, data in contents.items():
            assert _read_all(fs, path) == data
    finally:
        fs.encoder.stop()
        fs.store.close()


def test_encoder_survives_a_failing_store_call(fs, monkeypatch):
    """Item 3, second half: an exception where the encoder reads its queue
    must not end the thread."""
    calls = {"n": 0}
    real = fs.store.pending

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(errno.EIO, "injected")
        return real(*args, **kwargs)

    monkeypatch.setattr(fs.store, "pending", flaky)
    monkeypatch.setattr("sdfs.fs.encoder.RETRY_AFTER_S", 0.1)
    fs.encoder.notify()
    _put(fs, "/a.png", CANDIDATES["rgb.png"](), sync=True)
    assert fs.getxattr("/a.png", "user.sdfs.kind") == b"latent"
    # the fsync'd file may have been taken without asking the queue: the next look does
    wait_for(lambda: calls["n"] >= 2, 30, "the encoder to read its queue again")
    assert fs.encoder.state()["running"]


def test_fsync_waits_for_its_own_file_not_the_queue(tmp_path, tiny_vae):
    """Item 5: with a queue ahead of it, fsync of a new file returns once that
    file is final, long before the queue is done."""
    fs = _filesystem(tmp_path, tiny_vae, start=False)
    try:
        image = CANDIDATES["rgb.png"]()
        for i in range(20):
            _put(fs, f"/q{i}.png", image)
        fh = fs.create("/mine.txt", 0o644)
        fs.write("/mine.txt", b"important\n", 0, fh)
        fs.encoder.start()
        fs.fsync("/mine.txt", False, fh)
        assert fs.getxattr("/mine.txt", "user.sdfs.kind") == b"verbatim"
        assert fs.store.pending_count() >= 20 - 2  # at most the file in hand went first
        fs.release("/mine.txt", fh)
    finally:
        fs.encoder.stop()
        fs.store.close()


def test_files_held_open_do_not_starve_the_queue(tmp_path, tiny_vae):
    """Item 6, second half: readers holding the first pending files open must
    not make the encoder redo them forever while later files wait."""
    fs = _filesystem(tmp_path, tiny_vae, start=False)
    image = CANDIDATES["rgb.png"]()
    for i in range(10):
        _put(fs, f"/p{i}.png", image)
    readers = {i: fs.open(f"/p{i}.png", os.O_RDONLY) for i in range(8)}
    fs.encoder.start()
    try:
        assert fs.encoder.wait_idle(timeout=120)
        assert fs.encoder.finished["keep latent"] == 10  # each encoded once, open or not
        for i, fh in readers.items():  # open handles still read what they opened
            assert _read_all(fs, f"/p{i}.png", fh) == image
            fs.release(f"/p{i}.png", fh)
        assert fs.getattr("/p0.png")["st_size"] == len(_read_all(fs, "/p0.png")) != len(image)
    finally:
        fs.encoder.stop()
        fs.store.close()


def test_a_readers_decode_goes_before_the_encoders_queue(fs):
    """Item 6: one lock for all VAE work let the encoder's batches go before
    readers; now a reader waits at most for the forward pass in progress, and
    on a CPU a pass is one image (a batch of 8 took minutes with the real VAE)."""
    image = CANDIDATES["rgb.png"]()
    _put(fs, "/latent.png", image, sync=True)
    fs.cache.clear()
    passes, lock, queued, encoder_in_a_pass = [], threading.Lock(), threading.Event(), threading.Event()
    batches = []
    encode_many = fs.codec.encode_many

    def gated(blobs):  # the first batch waits until the whole queue is in
        queued.wait()
        batches.append(len(blobs))
        return encode_many(blobs)

    fs.codec.encode_many = gated
    vae = fs.codec.vae
    for name in ("encode", "decode"):
        real = getattr(vae, name)

        def counted(items, *args, _real=real, _name=name, **kwargs):
            if threading.current_thread().name.startswith("sdfs-encoder") and len(batches) >= 2:
                encoder_in_a_pass.set()
            out = _real(items, *args, **kwargs)
            with lock:
                passes.append((threading.current_thread().name, _name, len(items)))
            return out

        setattr(vae, name, counted)
    for i in range(12):
        _put(fs, f"/q{i}.png", image)
    queued.set()
    assert encoder_in_a_pass.wait(timeout=60)  # the encoder is at work: ask while it is mid-pass
    with lock:
        before = len(passes)
    content = _read_all(fs, "/latent.png")
    mine = next(i for i, (thread, *_) in enumerate(passes) if thread == threading.current_thread().name)
    assert len(content) == fs.getattr("/latent.png")["st_size"]
    assert mine - before <= 1 and sum(n for *_, n in passes[before:mine]) <= 1, passes[before:]
    assert fs.store.pending_count() >= 12 - 3


def test_priority_lock_serves_foreground_first():
    lock, order = PriorityLock(), []
    holding, waiting = threading.Event(), threading.Barrier(3)

    def background(name):
        with lock.background():
            waiting.wait()
            with lock:
                order.append(name)

    with lock:  # held while both kinds queue up
        bg = threading.Thread(target=background, args=("background",))
        bg.start()

        def foreground():
            waiting.wait()
            holding.wait()
            with lock:
                order.append("foreground")

        fg = threading.Thread(target=foreground)
        fg.start()
        waiting.wait()
        holding.set()
        threading.Event().wait(0.2)  # both are waiting now
    bg.join()
    fg.join()
    assert order == ["foreground", "background"]


def test_a_decode_too_large_for_the_cache_is_decoded_once_per_open(tmp_path, tiny_vae):
    """Item 7: with the reconstruction larger than the cache, each 128 KiB read
    decoded the whole image again."""
    fs = _filesystem(tmp_path, tiny_vae, cache_bytes=1)
    try:
        _put(fs, "/a.png", CANDIDATES["rgb.png"](), sync=True)
        size = fs.getattr("/a.png")["st_size"]
        step = 4096
        assert size > 3 * step  # several read calls below
        fh = fs.open("/a.png", os.O_RDONLY)
        parts = [fs.read("/a.png", step, offset, fh) for offset in range(0, size, step)]
        fs.release("/a.png", fh)
        assert len(b"".join(parts)) == size and fs.decodes == 1 and len(fs.cache) == 0
    finally:
        fs.encoder.stop()
        fs.store.close()


def test_a_reader_sees_the_bytes_its_size_promises_while_another_handle_writes(fs):
    """Item 8: getattr through a reader's handle reported a writer's buffered
    size while the reader read the store's older, shorter bytes."""
    _put(fs, "/f.bin", b"a" * 100, sync=True)
    writer = fs.open("/f.bin", os.O_WRONLY)
    fs.write("/f.bin", b"b" * 300, 0, writer)  # not closed yet
    reader = fs.open("/f.bin", os.O_RDONLY)
    size = fs.getattr("/f.bin", reader)["st_size"]
    assert len(_read_all(fs, "/f.bin", reader)) == size == 300
    fs.release("/f.bin", writer)
    assert _read_all(fs, "/f.bin", reader) == b"b" * 300
    fs.release("/f.bin", reader)


def test_empty_files_have_a_verdict(fs):
    """Item 9."""
    fh = fs.create("/empty", 0o644)
    fs.release("/empty", fh)
    _put(fs, "/emptied.txt", b"something", sync=True)
    fs.truncate("/emptied.txt", 0)
    for path in ("/empty", "/emptied.txt"):
        assert fs.getxattr(path, "user.sdfs.verdict") == b"stored verbatim: empty file"
        assert fs.getxattr(path, "user.sdfs.kind") == b"verbatim"


def test_a_failed_spill_keeps_every_accepted_byte(tmp_path, monkeypatch):
    """Item 4, the buffer's half: the roll-over to disk fails (ENOSPC) and the
    bytes already accepted stay; the failed write reports ENOSPC."""
    from sdfs.fs import buffer as buffer_module

    buf = buffer_module.WriteBuffer(tmp_path, in_memory=1000)
    buf.write(0, b"x" * 900)

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(buffer_module.os, "write", no_space)
    with pytest.raises(OSError) as caught:
        buf.write(900, b"y" * 200)
    assert caught.value.errno == errno.ENOSPC
    assert buf.size == 900 and buf.read(0, 2000) == b"x" * 900
    monkeypatch.undo()
    buf.write(900, b"y" * 200)  # space again: it spills and goes on
    assert buf.read(0, 2000) == b"x" * 900 + b"y" * 200
    buf.close()


def test_a_latent_rewritten_between_inode_and_record_is_looked_at_again(fs, monkeypatch):
    """Found by the soak: getxattr (and a read's decode) fetched the inode,
    then the record, and a rewrite in between left no record: EIO."""
    _put(fs, "/a.png", CANDIDATES["rgb.png"](), sync=True)
    fs.cache.clear()
    real, gone = fs.store.record, {"xattr": True, "read": True}

    def vanishing_once(ino, _real=real):
        for what in gone:
            if gone[what]:
                gone[what] = False
                return None  # as if the file had just been re-staged
        return _real(ino)

    monkeypatch.setattr(fs.store, "record", vanishing_once)
    assert fs.getxattr("/a.png", "user.sdfs.kind") == b"latent"
    content = _read_all(fs, "/a.png")
    assert not any(gone.values()) and len(content) == fs.getattr("/a.png")["st_size"]


def test_priority_lock_takes_turns_among_background_threads():
    """Two encoder lanes share the model: one that gives it back and asks
    again at once (a big image between tiles) queues behind the other."""
    import time

    lock, order = PriorityLock(), []

    def lane(name):
        with lock.background():
            for _ in range(4):
                with lock:
                    order.append(name)
                    time.sleep(0.01)

    lanes = [threading.Thread(target=lane, args=(name,)) for name in "ab"]
    with lock:  # held until both lanes wait
        for thread in lanes:
            thread.start()
        threading.Event().wait(0.2)
    for thread in lanes:
        thread.join()
    assert len(order) == 8 and all(first != second for first, second in zip(order, order[1:])), order
