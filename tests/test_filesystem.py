"""The filesystem's logic driven directly, without mounting."""

import errno
import io
import os
import threading

import numpy as np
import pytest
from PIL import Image

from sdfs.codec import container
from sdfs.codec.codec import Codec
from sdfs.codec.guard import Floor
from sdfs.codec.vae import Vae
from sdfs.fs.encoder import Encoder
from sdfs.fs.filesystem import Filesystem
from sdfs.store import Store
from tests.conftest import kodak_image
from tests.images_factory import CANDIDATES


@pytest.fixture
def fs(tmp_path, tiny_vae):
    codec = Codec(tiny_vae, quality="high", floor=Floor(0, -1))
    store = Store(tmp_path / "store", {"name": "tiny"})
    encoder = Encoder(store, codec)
    filesystem = Filesystem(store, codec, encoder, cache_bytes=1 << 20)
    encoder.start()
    yield filesystem
    encoder.stop()
    store.close()


def _write(fs, path, data):
    fh = fs.create(path, 0o644)
    fs.write(path, data, 0, fh)
    return fh


def test_size_is_honest_while_writing_and_after_encoding(fs):
    image = CANDIDATES["rgb.png"]()
    fh = _write(fs, "/a.png", image[:1000])
    assert fs.getattr("/a.png")["st_size"] == 1000  # buffered bytes count
    fs.write("/a.png", image[1000:], 1000, fh)
    fs.flush("/a.png", fh)
    assert fs.getattr("/a.png")["st_size"] == len(image)
    assert fs.read("/a.png", 1 << 20, 0, fh) == image  # before encoding: the original bytes
    fs.fsync("/a.png", False, fh)  # returns once the final form is durable
    fs.release("/a.png", fh)
    size = fs.getattr("/a.png")["st_size"]
    reader = fs.open("/a.png", os.O_RDONLY)
    content = fs.read("/a.png", size + 100, 0, reader)
    assert len(content) == size and content[:8] == b"\x89PNG\r\n\x1a\n"
    assert fs.getxattr("/a.png", "user.sdfs.kind") == b"latent"


def test_non_images_are_byte_exact(fs):
    for name, data in (("/t.txt", b"hello\n" * 1000), ("/bad.png", CANDIDATES["rgb.png"]()[:300])):
        fh = _write(fs, name, data)
        fs.fsync(name, False, fh)
        fs.release(name, fh)
        assert fs.getxattr(name, "user.sdfs.kind") == b"verbatim"
        reader = fs.open(name, os.O_RDONLY)
        assert fs.read(name, 1 << 20, 0, reader) == data


def test_eight_threads_share_one_decode_and_cache_stays_in_budget(fs):
    fh = _write(fs, "/a.png", CANDIDATES["rgba.png"]())
    fs.fsync("/a.png", False, fh)
    fs.release("/a.png", fh)
    size = fs.getattr("/a.png")["st_size"]
    barrier = threading.Barrier(8)
    results = []

    def reader():
        handle = fs.open("/a.png", os.O_RDONLY)
        barrier.wait()
        results.append(fs.read("/a.png", size, 0, handle))

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fs.decodes == 1 and len(set(results)) == 1 and len(results[0]) == size
    assert fs.cache.currsize <= fs.cache.maxsize


def test_close_gives_a_file_that_cannot_be_an_image_its_verdict_in_the_same_commit(fs):
    """Judged by its head and size at close(), as the encoder would judge it:
    never queued, final at once; an image candidate still waits for the VAE."""
    fs.encoder.stop()  # nothing may settle it behind the commit's back
    fh = _write(fs, "/notes.txt", b"not an image\n" * 100)
    fs.release("/notes.txt", fh)
    ino = fs.resolve("/notes.txt")
    assert not fs.store.is_pending(ino) and fs.getxattr("/notes.txt", "user.sdfs.kind") == b"verbatim"
    assert fs.getxattr("/notes.txt", "user.sdfs.verdict").startswith(b"stored verbatim: not a PNG or JPEG")
    assert fs.encoder.finished["stored verbatim"] == 1
    fh = _write(fs, "/a.png", CANDIDATES["rgb.png"]())
    fs.release("/a.png", fh)
    assert fs.store.is_pending(fs.resolve("/a.png"))


def test_an_fsync_waiting_for_a_queued_file_returns_when_a_close_settles_it(fs, monkeypatch):
    """The encoder is busy with another file; a writer's close() makes the
    queued file a non-image, final at once: an fsync() waiting for it returns
    then, not when the encoder is done with the other one."""
    import time

    png = CANDIDATES["rgb.png"]()
    busy, encode_many = threading.Event(), fs.codec.encode_many

    def held(datas):
        busy.wait(30)
        return encode_many(datas)

    monkeypatch.setattr(fs.codec, "encode_many", held)
    fs.release("/other.png", _write(fs, "/other.png", png))
    deadline = time.monotonic() + 30
    while "batch_seconds" not in fs.encoder.state():  # the encoder is in its batch now
        assert time.monotonic() < deadline
        time.sleep(0.01)
    fs.release("/f", _write(fs, "/f", png))  # queued behind it
    reader = fs.open("/f", os.O_RDONLY)
    waiter = threading.Thread(target=fs.fsync, args=("/f", False, reader), daemon=True)
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive()
    writer = fs.open("/f", os.O_WRONLY)
    fs.write("/f", b"plain text now", 0, writer)
    fs.flush("/f", writer)  # close(): no image any more, so verbatim in this commit
    fs.release("/f", writer)
    waiter.join(10)
    busy.set()
    assert not waiter.is_alive(), "fsync still waiting after the file was settled"
    fs.release("/f", reader)
    assert fs.getxattr("/f", "user.sdfs.kind") == b"verbatim"


def test_unlink_of_a_closed_file_deletes_it_in_the_same_transaction(fs):
    fs.release("/gone.txt", _write(fs, "/gone.txt", b"data"))
    ino = fs.resolve("/gone.txt")
    fs.unlink("/gone.txt")
    assert fs.store.inode(ino) is None and ino not in fs.store.orphans()


def test_rename_and_unlink_while_open(fs):
    fh = _write(fs, "/.goutputstream-X", b"data")
    fs.rename("/.goutputstream-X", "/final.txt")  # GIO renames while the file is open
    fs.write("/final.txt", b"more", 4, fh)
    fs.release("/final.txt", fh)
    reader = fs.open("/final.txt", os.O_RDONLY)
    assert fs.read("/final.txt", 100, 0, reader) == b"datamore"
    fs.unlink("/final.txt")
    assert fs.read("/final.txt", 100, 0, reader) == b"datamore"  # open handle still reads
    ino = fs._handles[reader].ino
    fs.release("/final.txt", reader)
    assert fs.store.inode(ino) is None  # purged at the last release


def test_a_closed_file_renamed_to_a_hidden_looking_name_is_an_ordinary_rename(fs):
    """Only an open file is hidden by libfuse: a tree copied off another FUSE
    mount may hold .fuse_hidden* files, and rsync renames onto such names."""
    fs.release("/tmp-name", _write(fs, "/tmp-name", b"kept"))
    fs.rename("/tmp-name", "/.fuse_hidden0000000100000002")
    reader = fs.open("/.fuse_hidden0000000100000002", os.O_RDONLY)
    assert fs.read("/.fuse_hidden0000000100000002", 100, 0, reader) == b"kept"
    fs.release("/.fuse_hidden0000000100000002", reader)
    assert [entry[0] for entry in fs.readdir("/") if entry[0] not in (".", "..")] == [".fuse_hidden0000000100000002"]


def test_errnos(fs):
    with pytest.raises(OSError) as caught:
        fs.getattr("/missing")
    assert caught.value.errno == errno.ENOENT
    fs.mkdir("/d", 0o755)
    _write(fs, "/d/x", b"1")
    with pytest.raises(OSError) as caught:
        fs.rmdir("/d")
    assert caught.value.errno == errno.ENOTEMPTY
    with pytest.raises(OSError) as caught:
        fs.setxattr("/d/x", "user.sdfs.kind", b"x")
    assert caught.value.errno == errno.EPERM
    with pytest.raises(OSError) as caught:
        fs.setxattr("/d/x", "trusted.x", b"x")
    assert caught.value.errno == errno.ENOTSUP
    with pytest.raises(OSError) as caught:
        fs.getxattr("/d/x", "user.none")
    assert caught.value.errno == errno.ENODATA


def test_a_reader_open_before_encoding_keeps_reading_the_original(fs):
    """The encoder does not wait for readers (files held open would starve the
    queue): it swaps in the latent, and open handles keep the bytes they opened."""
    image = CANDIDATES["rgb.png"]()
    fh = _write(fs, "/a.png", image)
    fs.release("/a.png", fh)
    reader = fs.open("/a.png", os.O_RDONLY)  # before the encoder gets to it
    first = fs.read("/a.png", 100, 0, reader)
    assert fs.encoder.wait_for(fs.resolve("/a.png"), timeout=60)  # encoded while the reader has it open
    assert fs.getxattr("/a.png", "user.sdfs.kind") == b"latent"
    rest = fs.read("/a.png", 1 << 20, 100, reader)
    assert first + rest == image and fs.getattr("/a.png", reader)["st_size"] == len(image)
    fs.release("/a.png", reader)
    size = fs.getattr("/a.png")["st_size"]
    again = fs.open("/a.png", os.O_RDONLY)
    reconstruction = fs.read("/a.png", size + 100, 0, again)
    assert len(reconstruction) == size and reconstruction != image


def test_a_stopped_encoder_commits_nothing_its_files_stay_queued(tmp_path, tiny_vae):
    """stop() does not wait for an encode in progress; whatever that encode
    gives later is not committed: the file stays pending, bytes unchanged."""
    held = _HeldCodec(Codec(tiny_vae, quality="high", floor=Floor(0, -1)))
    store = Store(tmp_path / "store", {"name": "tiny"})
    encoder = Encoder(store, held)
    fs = Filesystem(store, held, encoder, cache_bytes=1 << 20)
    encoder.start()
    try:
        image = CANDIDATES["rgb.png"]()
        fs.release("/a.png", _write(fs, "/a.png", image))
        ino = fs.resolve("/a.png")
        assert held.entered.wait(60), "the encoder never took the file"
        assert encoder.in_hand() == 1 and [batch["files"] for batch in encoder.state()["encoding"]] == [["/a.png"]]
        assert encoder.stop(timeout=0.2) is False  # still inside the model
        held.release.set()  # the encode ends now: too late to be committed
        for thread in encoder._threads:
            thread.join(60)
        assert not any(thread.is_alive() for thread in encoder._threads)
        assert store.is_pending(ino) and store.read_raw(ino) == image
    finally:
        held.release.set()
        encoder.stop()
        store.close()


class _HeldCodec:
    """A codec whose encodes wait until the test lets them go."""

    def __init__(self, codec):
        self.codec, self.entered, self.release = codec, threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self.codec, name)

    def encode_many(self, blobs):
        self.entered.set()
        self.release.wait(60)
        return self.codec.encode_many(blobs)


def test_small_files_are_encoded_while_a_big_image_is_in_its_own_lane(tmp_path, tiny_vae_dir):
    """One big image written first, then 20 small ones: the big one goes to
    its own lane, and the small ones are all encoded before it is done (one
    lane would have kept them all waiting behind it, in inode order)."""
    import time

    vae = Vae.load(str(tiny_vae_dir), device="cpu", max_untiled_latent=40 * 40, tile_latent=16, overlap_latent=4)
    codec = Codec(vae, quality="high", floor=Floor(0, -1))
    store = Store(tmp_path / "store", {"name": "tiny"})
    encoder = Encoder(store, codec)
    fs = Filesystem(store, codec, encoder, cache_bytes=1 << 20)
    settled, passes, encode_many = {}, [], codec.encode_many
    original_settled = encoder.settled

    def noting(ino, outcome, path=None):
        settled[ino] = time.monotonic()
        original_settled(ino, outcome, path)

    def counting(datas):
        passes.append((time.monotonic(), [len(d) for d in datas]))
        return encode_many(datas)

    encoder.settled, codec.encode_many = noting, counting
    big = io.BytesIO()
    Image.fromarray(np.tile(kodak_image(8)[:256, :256], (2, 2, 1))).save(big, "PNG")  # 512x512: 484 tiles a pass
    try:
        fs.release("/big.png", _write(fs, "/big.png", big.getvalue()))
        small = CANDIDATES["rgb.png"]()  # 96x64: untiled
        for index in range(20):
            fs.release(f"/small{index}.png", _write(fs, f"/small{index}.png", small))
        encoder.start()
        big_ino = fs.resolve("/big.png")
        small_inos = [fs.resolve(f"/small{index}.png") for index in range(20)]
        assert encoder.wait_idle(timeout=600)
        assert set(settled) == {big_ino, *small_inos}
        assert max(settled[ino] for ino in small_inos) < settled[big_ino]
        big_started = next(at for at, sizes in passes if sizes == [len(big.getvalue())])
        assert big_started < max(settled[ino] for ino in small_inos)  # it ran beside them, not after
        assert container.unpack(store.record(big_ino)).tiling.enabled
        assert fs.getxattr("/big.png", "user.sdfs.kind") == b"latent"
    finally:
        encoder.stop()
        store.close()
