"""`sdfs import`, `sdfs stats` and `sdfs sync`, run as commands."""

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdfs.codec import container
from sdfs import importer
from sdfs.cli import main
from sdfs.store import CHUNK, LATENT, ROOT, SPECIAL, VERBATIM, Store, StoreError
from sdfs.store.lock import StoreLock
from tests.conftest import KODAK, KODAK_INDICES, kodak_image
from tests.mounting import assert_sizes_honest, mounted

pytestmark = pytest.mark.timeout(900)
ENCODE = ("--device", "cpu", "--quality", "high", "--fidelity-floor", "0:-1")


def sdfs(*args, check_rc=None, **kwargs):
    proc = subprocess.run([sys.executable, "-m", "sdfs", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, **kwargs)
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stdout + proc.stderr
    return proc


def stats_json(target):
    return json.loads(sdfs("stats", target, "--json", check_rc=0).stdout)


def _crops(folder, count, size=96):
    folder.mkdir(parents=True, exist_ok=True)
    photo = kodak_image()
    for i in range(count):
        Image.fromarray(photo[i * 8 : i * 8 + size, i * 16 : i * 16 + size]).save(folder / f"crop{i}.png")


def _walk_store(store_path):
    """{path: inode} of every file, read straight from LMDB."""
    store = Store(store_path, readonly=True)
    found = {}

    def visit(ino, prefix):
        for name, child in store.listdir(ino):
            inode = store.inode(child)
            path = f"{prefix}/{name.decode()}"
            found[path] = inode
            if inode.is_dir:
                visit(child, path)

    visit(ROOT, "")
    records = {path: store.record(inode.ino) for path, inode in found.items() if inode.kind == LATENT}
    store.close()
    return found, records


@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse")
def test_kodak_import_twice_stats_agree_then_mount_sync_and_cache(tmp_path, factor8_vae_dir):
    src = tmp_path / "photos"
    shutil.copytree(KODAK, src / "kodak", ignore=shutil.ignore_patterns("*.md"))  # the images, not their README
    (src / "notes.txt").write_bytes(b"a text file stays byte-exact\n" * 50)
    (src / "broken.png").write_bytes((KODAK / "kodim05.png").read_bytes()[:3000])
    os.symlink("kodak/kodim01.png", src / "cover.png")
    os.utime(src / "notes.txt", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    regular = [p for p in src.rglob("*") if p.is_file() and not p.is_symlink()]
    store = tmp_path / "store"

    kodak = len(KODAK_INDICES)  # the crops the repository carries; batches of 3 leave a partial one
    assert kodak >= 8 and kodak % 3
    first = sdfs("-v", "import", src, store, "--model", factor8_vae_dir, "--batch-size", 3, *ENCODE, check_rc=0)
    assert f"imported {kodak + 2} files" in first.stdout and f"{kodak} as latents" in first.stdout, first.stdout
    assert "broken.png" in first.stderr and "WARNING" in first.stderr  # one line per bad input
    assert "Traceback" not in first.stderr

    files, records = _walk_store(store)
    assert len(records) == kodak
    for path, record in records.items():
        unpacked = container.unpack(record)
        assert files[path].size == unpacked.output_length and files[path].stored == len(record)
    assert files["/photos/notes.txt"].kind == VERBATIM and files["/photos/broken.png"].kind == VERBATIM
    assert files["/photos/notes.txt"].mtime_ns == 1_600_000_000_123_456_789

    stats = stats_json(store)
    assert stats["files"]["latent"] == kodak and stats["files"]["verbatim"] == 2
    assert stats["verdicts"] == {"latent": kodak, "kept_original_below_floor": 0, "kept_original_not_smaller": 0,
                                 "verbatim_not_a_candidate": 2}
    assert stats["bytes"]["written"] == sum(p.stat().st_size for p in regular)
    assert stats["bytes"]["stored"] == sum(i.stored for i in files.values() if not i.is_dir and i.kind != 5)
    assert stats["bytes"]["savings_ratio"] == pytest.approx(stats["bytes"]["written"] / stats["bytes"]["stored"], rel=1e-3)
    assert stats["fidelity"]["full"]["psnr"]["count"] == kodak
    assert stats["mount"] is None

    second = sdfs("-v", "import", src, store, "--model", factor8_vae_dir, *ENCODE, check_rc=0)
    assert f"nothing to import: all {kodak + 3}" in second.stdout, second.stdout
    assert "loading VAE" not in second.stderr  # a run with nothing to do does not even load the model
    assert stats_json(store) == stats

    mnt = tmp_path / "mnt"
    with mounted(store, mnt, factor8_vae_dir):
        busy = sdfs("import", src, store, "--model", factor8_vae_dir, *ENCODE, check_rc=1)
        assert "in use by" in busy.stderr and len(busy.stderr.strip().splitlines()) == 1
        # what was imported reads back as the mount serves it: honest sizes, kept metadata
        assert assert_sizes_honest(mnt / "photos") == kodak + 2
        assert (mnt / "photos/notes.txt").read_bytes() == (src / "notes.txt").read_bytes()
        assert (mnt / "photos/notes.txt").stat().st_mtime_ns == 1_600_000_000_123_456_789
        assert os.readlink(mnt / "photos/cover.png") == "kodak/kodim01.png"
        assert os.getxattr(mnt / "photos/kodak/kodim07.png", "user.sdfs.kind") == b"latent"
        # a second read of a file the size check decoded: the kernel's page cache would serve it
        # without asking the daemon (auto_cache), so it goes first, and the decode cache answers: a hit
        Path("/proc/sys/vm/drop_caches").write_text("1")
        (mnt / "photos/kodak/kodim07.png").read_bytes()

        (mnt / "new").mkdir()
        for index in KODAK_INDICES:  # a queue of 8: over 10 s of encoding at ~1.5 s a file
            shutil.copyfile(KODAK / f"kodim{index:02d}.png", mnt / "new" / f"k{index}.png")
        syncing = subprocess.Popen([sys.executable, "-m", "sdfs", "sync", str(mnt), "--timeout", "600"],
                                   stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        time.sleep(3)
        assert syncing.poll() is None, syncing.communicate()[1]  # still waiting
        synced_err = syncing.communicate(timeout=600)[1]
        assert syncing.returncode == 0 and "encoded" in synced_err, synced_err
        kinds = [os.getxattr(p, "user.sdfs.kind") for p in sorted((mnt / "new").iterdir())]
        assert kinds == [b"latent"] * len(KODAK_INDICES)

        live = stats_json(mnt)
        assert live["files"]["latent"] == kodak + len(KODAK_INDICES) and live["mount"]["pending"] == 0
        cache = live["mount"]["cache"]
        assert (cache["misses"], cache["hits"]) == (kodak, 1) and cache["hit_ratio"] == pytest.approx(1 / (kodak + 1), abs=1e-4)
        assert stats_json(store)["mount"]["mountpoint"] == str(mnt)  # found from the store too
        human = sdfs("stats", mnt, check_rc=0).stdout
        assert f"hit ratio {1 / (kodak + 1):.1%}" in human and str(kodak + len(KODAK_INDICES)) in human


def _records_so_far(store_path) -> int:
    try:
        return len(_walk_store(store_path)[1])
    except StoreError as error:  # the import is still creating the store
        assert "is not an sdfs store" in str(error) or "is incomplete" in str(error), error
        return 0


def test_interrupted_import_resumes_and_changed_files_are_refreshed(tmp_path, tiny_vae_dir):
    src = tmp_path / "src"
    _crops(src, 10)
    store = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-m", "sdfs", "import", str(src), str(store), "--model", str(tiny_vae_dir),
                             "--batch-size", "1", *ENCODE], env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if _records_so_far(store) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    files, records = _walk_store(store)
    assert 2 <= len(records) < 10, "the kill came too late to interrupt anything"
    for record in records.values():  # what is there is whole
        container.unpack(record)
    assert all(inode.kind in (LATENT,) for path, inode in files.items() if path.endswith(".png"))

    (src / "crop0.png").write_bytes(b"no longer a png")  # changed since: imported again, now verbatim
    resumed = sdfs("import", src, store, "--model", tiny_vae_dir, *ENCODE, check_rc=0)
    assert f"{len(records) - 1} already in" in resumed.stdout, resumed.stdout
    files, records = _walk_store(store)
    assert len(records) == 9 and files["/src/crop0.png"].kind == VERBATIM
    store_ = Store(store, readonly=True)
    assert store_.read_raw(files["/src/crop0.png"].ino) == b"no longer a png"
    store_.close()
    assert "nothing to import" in sdfs("import", src, store, "--model", tiny_vae_dir, *ENCODE, check_rc=0).stdout


def test_import_into_a_folder_and_one_line_errors(tmp_path, tiny_vae_dir):
    src = tmp_path / "a.png"
    Image.fromarray(kodak_image()[:64, :64]).save(src)
    store = tmp_path / "store"
    sdfs("import", src, store, "--into", "/albums/2026", "--model", tiny_vae_dir, *ENCODE, check_rc=0)
    files, _ = _walk_store(store)
    assert files["/albums/2026/a.png"].kind == LATENT
    sdfs("stats", store, "--plot", tmp_path / "fidelity.png", check_rc=0)
    with Image.open(tmp_path / "fidelity.png") as plot:
        assert plot.format == "PNG" and plot.width > 500

    escaping = sdfs("import", src, store, "--into", "../outside", "--model", tiny_vae_dir, check_rc=1)
    assert "without . or .. parts" in escaping.stderr and len(escaping.stderr.splitlines()) == 1
    missing = sdfs("import", tmp_path / "nope", store, "--model", tiny_vae_dir, check_rc=1)
    assert missing.stderr.startswith("sdfs: error: cannot read") and len(missing.stderr.splitlines()) == 1
    with StoreLock(store, "a test"):
        locked = sdfs("import", src, store, "--model", tiny_vae_dir, check_rc=1)
    assert "in use by pid" in locked.stderr and "a test" in locked.stderr
    again = sdfs("import", src, store, "--into", "albums/2026/", "--model", tiny_vae_dir, check_rc=0)
    assert "nothing to import" in again.stdout


def test_stats_and_sync_refuse_what_is_not_sdfs(tmp_path):
    not_store = sdfs("stats", tmp_path, check_rc=1)
    assert "is not an sdfs store" in not_store.stderr and len(not_store.stderr.splitlines()) == 1
    not_mount = sdfs("sync", tmp_path, check_rc=1)
    assert "is not an sdfs mount" in not_mount.stderr and len(not_mount.stderr.splitlines()) == 1


def test_stats_distribution_percentiles():
    from sdfs.stats import distribution

    values = list(np.random.default_rng(1).normal(30, 3, 101))
    d = distribution(values)
    for q in (0, 5, 25, 50, 75, 95, 100):
        assert d[f"p{q}"] == pytest.approx(np.percentile(values, q))
    assert d["count"] == 101 and distribution([]) is None


# -- special files, hard links, bounded memory (as `cp -a` copies them)

DEVICE_TIMES = (1_500_000_000_111_222_333, 1_600_000_000_444_555_666)


def _special_tree(src):
    """A FIFO, a socket, char and block devices, and one file of three names."""
    (src / "sub").mkdir(parents=True)
    os.mkfifo(src / "fifo", 0o640)
    os.mknod(src / "null", stat.S_IFCHR | 0o620, os.makedev(1, 3))
    os.mknod(src / "loop", stat.S_IFBLK | 0o600, os.makedev(7, 0))
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(src / "sock"))  # the socket file stays when the socket closes
    os.chown(src / "fifo", 1234, 5678, follow_symlinks=False)
    os.utime(src / "fifo", ns=DEVICE_TIMES)
    (src / "a").write_bytes(b"one file, three names\n" * 1000)
    os.link(src / "a", src / "b")
    os.link(src / "a", src / "sub" / "c")


def test_import_makes_special_files_again_and_keeps_hard_links(tmp_path, tiny_vae_dir):
    src, store = tmp_path / "src", tmp_path / "store"
    _special_tree(src)
    first = sdfs("import", src, store, "--model", tiny_vae_dir, check_rc=0)
    assert "4 special files, 2 more names of hard-linked files; 0 skipped" in first.stdout, first.stdout
    assert "imported 1 files" in first.stdout and "Traceback" not in first.stderr

    files, _ = _walk_store(store)
    for name, device in (("fifo", 0), ("null", os.makedev(1, 3)), ("loop", os.makedev(7, 0)), ("sock", 0)):
        inode, st = files[f"/src/{name}"], os.lstat(src / name)
        assert (inode.kind, inode.mode, inode.rdev) == (SPECIAL, st.st_mode, device), name
        assert (inode.uid, inode.gid) == (st.st_uid, st.st_gid)
    assert stat.S_ISSOCK(files["/src/sock"].mode) and stat.S_ISFIFO(files["/src/fifo"].mode)
    assert (files["/src/fifo"].uid, files["/src/fifo"].gid) == (1234, 5678)
    assert (files["/src/fifo"].atime_ns, files["/src/fifo"].mtime_ns) == DEVICE_TIMES

    names = [files[p] for p in ("/src/a", "/src/b", "/src/sub/c")]
    assert len({inode.ino for inode in names}) == 1 and names[0].nlink == 3
    assert len({i.ino for i in files.values() if i.kind == VERBATIM}) == 1  # the content is there once
    assert names[0].stored == (src / "a").stat().st_size

    again = sdfs("import", src, store, "--model", tiny_vae_dir, check_rc=0)
    assert "nothing to import: all 7 files" in again.stdout, again.stdout

    (src / "a").write_bytes(b"changed through one name")  # all three names see it; so must the store
    os.utime(src / "a", ns=(1, 2))
    sdfs("import", src, store, "--model", tiny_vae_dir, check_rc=0)
    files, _ = _walk_store(store)
    names = [files[p] for p in ("/src/a", "/src/b", "/src/sub/c")]
    assert len({inode.ino for inode in names}) == 1 and names[0].nlink == 3 and names[0].mtime_ns == 2
    reader = Store(store, readonly=True)
    assert reader.read_raw(names[0].ino) == b"changed through one name"
    assert reader.orphans() == []  # the old content went with its last name
    reader.close()


@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse")
def test_imported_special_files_and_hard_links_through_the_mount(tmp_path, tiny_vae_dir):
    src, store, mnt = tmp_path / "src", tmp_path / "store", tmp_path / "mnt"
    _special_tree(src)
    sdfs("import", src, store, "--model", tiny_vae_dir, check_rc=0)
    with mounted(store, mnt, tiny_vae_dir):
        for name in ("fifo", "null", "loop", "sock"):
            theirs, ours = os.lstat(src / name), os.lstat(mnt / "src" / name)
            assert (ours.st_mode, ours.st_rdev, ours.st_uid) == (theirs.st_mode, theirs.st_rdev, theirs.st_uid), name
        a, c = os.lstat(mnt / "src/a"), os.lstat(mnt / "src/sub/c")
        assert a.st_ino == c.st_ino and a.st_nlink == 3
        assert (mnt / "src/sub/c").read_bytes() == (src / "a").read_bytes()


def _spy_uploads(monkeypatch):
    uploads = []
    upload = Store.upload
    monkeypatch.setattr(Store, "upload", lambda self, ino, version, pieces: uploads.append(
        sum(map(len, pieces.values()))) or upload(self, ino, version, pieces))
    return uploads


def _spy_reads(monkeypatch):
    reads = []
    pread = importer._pread
    monkeypatch.setattr(importer, "_pread", lambda fd, n, offset: reads.append(n) or pread(fd, n, offset))
    return reads


def test_a_large_file_that_is_no_image_is_streamed_in_bounded_pieces(tmp_path, tiny_vae_dir, monkeypatch, capsys):
    monkeypatch.setattr(importer, "STREAM_OVER", 256 << 10)
    monkeypatch.setattr(importer, "UPLOAD_BYTES", CHUNK)
    src, store = tmp_path / "src", tmp_path / "store"
    src.mkdir()
    data = np.random.default_rng(3).bytes(3 * CHUNK + 12345)
    (src / "data.bin").write_bytes(data)
    # a PNG by its first bytes, but its header says 5000x5000: judged by the head, never read whole
    fake = b"\x89PNG\r\n\x1a\n" + bytes.fromhex("0000000d49484452") + (5000).to_bytes(4, "big") * 2 + data[:CHUNK]
    (src / "huge.png").write_bytes(fake)
    uploads, reads = _spy_uploads(monkeypatch), _spy_reads(monkeypatch)
    assert main(["import", str(src), str(store), "--model", str(tiny_vae_dir), "--max-pixels", "1000"]) == 0
    assert "2 verbatim" in capsys.readouterr().out
    assert sorted(uploads) == [24, 12345] + [CHUNK] * 4  # a chunk a transaction, as patched
    assert max(reads) <= CHUNK  # never the whole file (a head of 64 KiB, then chunks)

    files, _ = _walk_store(store)
    reader = Store(store, readonly=True)
    assert reader.read_raw(files["/src/data.bin"].ino) == data
    assert reader.read_raw(files["/src/huge.png"].ino) == fake
    assert b"5000x5000, over the 1000-pixel limit" in reader.get_xattr(files["/src/huge.png"].ino, b"sdfs.verdict")
    reader.close()


def test_a_sparse_file_is_imported_without_reading_or_storing_its_holes(tmp_path, tiny_vae_dir, monkeypatch):
    src, store = tmp_path / "src", tmp_path / "store"
    src.mkdir()
    with open(src / "sparse", "wb") as f:
        f.seek(64 << 20)
        f.write(b"x")
    reads = _spy_reads(monkeypatch)
    assert main(["import", str(src), str(store), "--model", str(tiny_vae_dir)]) == 0
    assert len(reads) <= 3  # the head, and the one chunk with data in it (SEEK_DATA skips the hole)
    files, _ = _walk_store(store)
    inode = files["/src/sparse"]
    assert (inode.size, inode.stored) == ((64 << 20) + 1, 1)
    reader = Store(store, readonly=True)
    assert reader.read_raw(inode.ino, 64 << 20, 10) == b"x" and reader.read_raw(inode.ino, 0, 4) == bytes(4)
    reader.close()


def test_a_stream_cut_short_leaves_nothing_behind(tmp_path):
    store = Store(tmp_path / "store")

    def failing():
        yield 0, b"a" * CHUNK
        raise OSError(5, "Input/output error")

    with pytest.raises(OSError):
        store.put_content(failing(), batch_bytes=1)
    assert store.orphans() == []
    with store.reading() as txn:
        assert txn.stat(store.db["chunks"])["entries"] == 0
    store.put_content(iter([(0, b"left by a process killed before it named the file")]))  # an orphan now
    store.close()
    (tmp_path / "note.txt").write_text("x")
    assert main(["import", str(tmp_path / "note.txt"), str(tmp_path / "store"), "--model", "unused"]) == 0
    store = Store(tmp_path / "store", readonly=True)
    assert store.orphans() == []
    with store.reading() as txn:
        assert txn.stat(store.db["chunks"])["entries"] == 1  # note.txt's
    store.close()


def test_an_unreadable_source_fails_alone_and_a_full_store_ends_the_import_in_one_line(tmp_path, monkeypatch,
                                                                                      capsys):
    monkeypatch.setattr(importer, "STREAM_OVER", 0)  # every file streamed
    src, store = tmp_path / "src", tmp_path / "store"
    src.mkdir()
    (src / "bad").write_bytes(b"unlucky sector" * 100)
    (src / "good").write_bytes(b"fine" * 100)
    pread, reads_of_bad = os.pread, []

    def failing(fd, n, offset):  # the head reads, then the disk fails
        if os.readlink(f"/proc/self/fd/{fd}").endswith("/bad"):
            reads_of_bad.append(n)
            if len(reads_of_bad) > 1:
                raise OSError(5, "Input/output error")
        return pread(fd, n, offset)

    monkeypatch.setattr(os, "pread", failing)
    assert main(["import", str(src), str(store), "--model", "unused"]) == 1
    out, err = capsys.readouterr()
    assert "bad: cannot read: Input/output error" in err and "imported 1 files" in out
    reader = Store(store, readonly=True)
    assert reader.orphans() == [] and reader.lookup(reader.lookup(ROOT, b"src"), b"bad") is None
    reader.close()
    assert len(reads_of_bad) == 2  # streaming had begun: what it stored is gone

    monkeypatch.setattr(os, "pread", pread)  # the disk is well again; the store's is full
    monkeypatch.setattr(Store, "upload", lambda *args: (_ for _ in ()).throw(
        OSError(28, f"no space left on the disk of store {store}")))
    assert main(["import", str(src), str(store), "--model", "unused"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"sdfs: error: no space left on the disk of store {store}; what was imported before is in the "
                   "store: fix that, then run the same import again to finish"), err
