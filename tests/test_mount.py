"""The filesystem mounted for real, used with ordinary copy tools."""

import errno
import filecmp
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import KODAK, KODAK_INDICES
from tests.images_factory import CANDIDATES
from tests.mounting import assert_sizes_honest, mounted, wait_encoded, wait_for

pytestmark = [
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse"),
    pytest.mark.timeout(900),
]


def _sources(tmp_path, kodak=(1, 7, 23)):
    """Kodak photos and files that must come back byte-exact."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for index in kodak:
        shutil.copyfile(KODAK / f"kodim{index:02d}.png", src / f"k{index}.png")
    (src / "sub" / "photo.jpg").write_bytes(CANDIDATES["exif-icc.jpg"]())
    (src / "notes.txt").write_bytes(b"not an image\n" * 100)
    (src / "truncated.png").write_bytes((src / "k1.png").read_bytes()[:5000])
    sixteen = io.BytesIO()
    Image.fromarray((np.arange(64 * 64, dtype=np.uint16) * 16).reshape(64, 64)).save(sixteen, "PNG")
    (src / "deep.png").write_bytes(sixteen.getvalue())
    (src / "random.jpg").write_bytes(np.random.default_rng(0).bytes(20000))
    return src


VERBATIM = ("notes.txt", "truncated.png", "deep.png", "random.jpg")


def test_copy_tools_sizes_and_remount(tmp_path, factor8_vae_dir):
    """Every Kodak crop the repository carries (eight, one at 512x512) with
    the byte-exact files, through five copy tools (a factor-8 test VAE keeps
    the CPU encode to about a second a file)."""
    src = _sources(tmp_path, kodak=KODAK_INDICES)
    store, mnt = tmp_path / "store", tmp_path / "mnt"
    with mounted(store, mnt, factor8_vae_dir):
        subprocess.run(["cp", "-r", str(src), str(mnt / "cp")], check=True)
        subprocess.run(["cp", "-a", str(src), str(mnt / "cpa")], check=True)
        subprocess.run(["rsync", "-a", f"{src}/", str(mnt / "rsync")], check=True)
        shutil.copytree(src, mnt / "copytree")
        if shutil.which("gio"):
            (mnt / "gio").mkdir()
            subprocess.run(["gio", "copy", str(src / "k7.png"), str(mnt / "gio" / "k7.png")], check=True)
        per_tree = sum(1 for p in src.rglob("*") if p.is_file())
        assert per_tree == len(KODAK_INDICES) + 5 >= 13
        copies = 4 * per_tree + (1 if shutil.which("gio") else 0)
        assert assert_sizes_honest(mnt) == copies  # before encoding: staged originals
        wait_encoded(mnt, timeout=1200)
        assert assert_sizes_honest(mnt) == copies  # after encoding: reconstructions
        for tree in ("cp", "cpa", "rsync", "copytree"):
            for name in VERBATIM:
                assert filecmp.cmp(src / name, mnt / tree / name, shallow=False), (tree, name)
                assert os.getxattr(mnt / tree / name, "user.sdfs.kind") == b"verbatim"
            assert os.getxattr(mnt / tree / "k1.png", "user.sdfs.kind") == b"latent"
        assert (mnt / "cpa" / "k1.png").stat().st_mtime_ns == (src / "k1.png").stat().st_mtime_ns
        subprocess.run(["mv", str(mnt / "cp"), str(mnt / "moved")], check=True)
        subprocess.run(["rm", "-r", str(mnt / "copytree")], check=True)
        assert not (mnt / "copytree").exists() and (mnt / "moved" / "sub" / "photo.jpg").exists()
        sizes = {p.relative_to(mnt): p.stat().st_size for p in mnt.rglob("*") if p.is_file()}
    with mounted(store, mnt, factor8_vae_dir):
        assert {p.relative_to(mnt): p.stat().st_size for p in mnt.rglob("*") if p.is_file()} == sizes
        assert_sizes_honest(mnt)
        assert filecmp.cmp(src / "notes.txt", mnt / "moved" / "notes.txt", shallow=False)


def test_kill_9_loses_no_closed_file(tmp_path, factor8_vae_dir):
    """SIGKILL while a copy is still running: every file whose close() had
    returned is there after the next mount, and the pending ones get encoded."""
    import threading

    src = _sources(tmp_path)
    store, mnt = tmp_path / "store", tmp_path / "mnt"
    closed, ten_closed = [], threading.Event()

    def copy_until_it_breaks():
        try:
            for round_ in range(1000):
                for path in sorted(src.glob("*.*")):
                    target = mnt / f"r{round_}-{path.name}"
                    shutil.copyfile(path, target)  # returns after close()
                    closed.append((target.name, path))
                    if len(closed) >= 10:
                        ten_closed.set()
        except OSError:
            pass  # the daemon is gone: the copy in flight fails, as it would for a user
        finally:
            ten_closed.set()

    with mounted(store, mnt, factor8_vae_dir, leave_stale=True) as daemon:
        copier = threading.Thread(target=copy_until_it_breaks)
        copier.start()
        ten_closed.wait(timeout=120)
        os.kill(daemon.pid, signal.SIGKILL)
        daemon.wait()
        copier.join(timeout=60)
        assert not copier.is_alive() and len(closed) >= 10
    with pytest.raises(OSError) as stale:  # as a user finds it after a crash
        os.stat(mnt)
    assert stale.value.errno == errno.ENOTCONN
    with mounted(store, mnt, factor8_vae_dir) as daemon:  # the first try clears the stale mount itself
        assert "clearing the stale mount" in daemon.log.read_text()
        for name, source in closed:
            assert (mnt / name).exists(), name
        wait_encoded(mnt)
        assert_sizes_honest(mnt)
        for name, source in closed:
            if source.name in VERBATIM:
                assert filecmp.cmp(source, mnt / name, shallow=False)
            else:
                assert os.getxattr(mnt / name, "user.sdfs.kind") == b"latent"


def test_metadata_operations(tmp_path, tiny_vae_dir):
    store, mnt = tmp_path / "store", tmp_path / "mnt"
    with mounted(store, mnt, tiny_vae_dir):
        path = mnt / "f.txt"
        path.write_bytes(b"abc")
        os.chmod(path, 0o600)
        assert (path.stat().st_mode & 0o777) == 0o600
        os.utime(path, ns=(1_000_000_123, 2_000_000_456))
        assert path.stat().st_mtime_ns == 2_000_000_456
        os.setxattr(path, "user.tag", b"holiday")
        assert os.getxattr(path, "user.tag") == b"holiday"
        assert "user.tag" in os.listxattr(path)
        with pytest.raises(OSError):
            os.setxattr(path, "user.sdfs.kind", b"latent")
        os.symlink("f.txt", mnt / "link")
        assert os.readlink(mnt / "link") == "f.txt" and (mnt / "link").read_bytes() == b"abc"
        with open(path, "r+b") as f:
            f.truncate(1)
        assert path.read_bytes() == b"a" and path.stat().st_size == 1
        statvfs = os.statvfs(mnt)
        assert statvfs.f_bsize > 0 and statvfs.f_blocks > 0


def test_allow_other_turns_on_kernel_permission_checks(tmp_path, tiny_vae_dir):
    store, mnt = tmp_path / "store", tmp_path / "mnt"
    with mounted(store, mnt, tiny_vae_dir, "--allow-other"):
        options = next(line.split()[3] for line in open("/proc/mounts") if line.split()[1] == str(mnt))
        assert "allow_other" in options and "default_permissions" in options


def test_background_mount_reports_ready_or_its_error(tmp_path, tiny_vae_dir):
    import sys

    store, mnt = tmp_path / "store", tmp_path / "mnt"
    command = [sys.executable, "-m", "sdfs", "mount", str(store), str(mnt), "--device", "cpu"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    try:
        started = subprocess.run(command + ["--model", str(tiny_vae_dir)], capture_output=True, text=True,
                                 timeout=180, env=env)
        assert started.returncode == 0, started.stderr
        assert os.path.ismount(mnt)  # the command returns once the mount answers
        (mnt / "x.txt").write_bytes(b"x")
        stopped = subprocess.run([sys.executable, "-m", "sdfs", "umount", str(mnt)], capture_output=True, text=True)
        assert stopped.returncode == 0, stopped.stderr
        wait_for(lambda: not os.path.ismount(mnt), 60, "the unmount")
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)])
    failed = subprocess.run(command + ["--model", str(tmp_path / "missing")], capture_output=True, text=True,
                            timeout=180, env=env)
    assert failed.returncode != 0 and not os.path.ismount(mnt)
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing" in lines[0] and "Traceback" not in failed.stderr


def test_eight_readers_of_an_uncached_file_cause_one_decode(tmp_path, tiny_vae_dir):
    from concurrent.futures import ThreadPoolExecutor

    store, mnt = tmp_path / "store", tmp_path / "mnt"
    with mounted(store, mnt, tiny_vae_dir, "--cache-size", "64") as daemon:
        (mnt / "a.png").write_bytes(CANDIDATES["rgb.png"]())
        wait_encoded(mnt)  # reads only xattrs: the reconstruction is not cached yet
        ino = (mnt / "a.png").stat().st_ino
        size = (mnt / "a.png").stat().st_size
        with ThreadPoolExecutor(8) as pool:
            contents = list(pool.map(lambda _: (mnt / "a.png").read_bytes(), range(8)))
        assert len(set(contents)) == 1 and len(contents[0]) == size
        decodes = [line for line in daemon.log.read_text().splitlines() if f"decoded inode {ino} " in line]
        assert len(decodes) == 1, decodes


def test_a_full_disk_gives_enospc_and_loses_no_closed_file(tmp_path, tiny_vae_dir):
    """The store on a 48 MiB tmpfs: writes and closes fail with ENOSPC (not
    EIO), every file whose close() returned reads back whole, also after a
    remount, and the mount goes on working once space is freed."""
    disk = tmp_path / "small-disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(disk)]).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        store, mnt = disk / "store", tmp_path / "mnt"
        closed, failures = {}, []
        rng = np.random.default_rng(4)
        with mounted(store, mnt, tiny_vae_dir) as daemon:
            for i in range(30):  # 3 MiB files, and every third past the 8 MiB write buffer (it spills)
                data = rng.bytes((10 if i % 3 == 2 else 3) << 20)
                try:
                    with open(mnt / f"f{i}.bin", "wb") as f:
                        f.write(data)
                    closed[f"f{i}.bin"] = data
                except OSError as error:
                    failures.append(error.errno)
                    if len(failures) >= 3:
                        break
            assert failures and set(failures) == {errno.ENOSPC}, failures
            assert len(closed) >= 2
            for name, data in closed.items():
                assert (mnt / name).stat().st_size == len(data) and (mnt / name).read_bytes() == data, name
            for name in closed:  # space again: the mount works on
                os.unlink(mnt / name)
            (mnt / "after.txt").write_bytes(b"fine")
            assert (mnt / "after.txt").read_bytes() == b"fine"
            assert "Traceback" not in daemon.log.read_text()
        with mounted(store, mnt, tiny_vae_dir):
            assert (mnt / "after.txt").read_bytes() == b"fine"
    finally:
        subprocess.run(["umount", "-l", str(disk)])


@pytest.mark.timeout(900)
def test_the_page_cache_never_serves_bytes_the_encoder_replaced(tmp_path, tiny_vae_dir):
    """Re-reads come from the kernel's page cache (auto_cache), yet the moment
    the encoder swaps a file, another process sees the new size and bytes
    through every name of it: no stale st_size, no stale pages."""
    store, mnt = tmp_path / "store", tmp_path / "mnt"
    original = (KODAK / "kodim01.png").read_bytes()
    check = ("import os, sys; st = os.stat(sys.argv[1]); data = open(sys.argv[1], 'rb').read(); "
             "print(st.st_size, len(data), data == open(sys.argv[2], 'rb').read())")
    with mounted(store, mnt, tiny_vae_dir):
        (mnt / "a.png").write_bytes(original)
        os.link(mnt / "a.png", mnt / "b.png")
        # until the swap, both names' attributes and pages are kept fresh in the
        # kernel's caches (each lasts a second): so the checks below run while
        # what the kernel cached before the swap would still be served, unless dropped
        deadline = time.monotonic() + 120
        while os.getxattr(mnt / "a.png", "user.sdfs.kind") != b"latent":
            for name in ("a.png", "b.png"):  # the swap may come between any two of these: nothing to assert yet
                os.stat(mnt / name)
                (mnt / name).read_bytes()
            assert time.monotonic() < deadline, "not encoded in 120 s"
            time.sleep(0.05)
        assert {os.stat(mnt / name).st_size for name in ("a.png", "b.png")} != {len(original)}
        for name in ("a.png", "b.png"):
            seen = subprocess.run([sys.executable, "-c", check, str(mnt / name), str(KODAK / "kodim01.png")],
                                  capture_output=True, text=True, check=True).stdout.split()
            assert seen[0] == seen[1] and seen[2] == "False", (name, seen)  # the reconstruction, whole
        served = (mnt / "a.png").read_bytes()
        assert served == (mnt / "b.png").read_bytes() and len(served) == os.stat(mnt / "a.png").st_size


def _meta_pages_dirty(data_file: Path) -> list[bool]:
    """Whether LMDB's two meta pages are still only in memory: after
    drop_caches, a page still resident (and mapped by nobody) is dirty."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
    libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    Path("/proc/sys/vm/drop_caches").write_text("1")
    fd = os.open(data_file, os.O_RDONLY)
    try:
        size = 2 * mmap.PAGESIZE
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        resident = (ctypes.c_ubyte * 2)()
        assert libc.mincore(address, size, resident) == 0, ctypes.get_errno()
        libc.munmap(address, size)
        return [bool(page & 1) for page in resident]
    finally:
        os.close(fd)


@pytest.mark.skipif(os.geteuid() != 0, reason="drop_caches needs root")
def test_fsync_returns_once_the_store_on_disk_holds_the_file(tmp_path, tiny_vae_dir):
    """Commits leave LMDB's last meta page to the page cache (MDB_NOMETASYNC,
    docs/FORMAT.md "Durability"); fsync() writes it. Observed with the daemon
    killed at once: no meta page is left dirty, so the disk holds the commit
    that made the file, and the next mount finds it."""
    store, mnt = tmp_path / "store", tmp_path / "mnt"
    with mounted(store, mnt, tiny_vae_dir, leave_stale=True) as daemon:
        with open(mnt / "kept.txt", "wb") as f:
            f.write(b"durable once fsync returns")
            f.flush()
            os.fsync(f.fileno())
        os.kill(daemon.pid, signal.SIGKILL)  # close() after fsync commits nothing more
        daemon.wait()
        assert _meta_pages_dirty(store / "data.mdb") == [False, False]
    with mounted(store, mnt, tiny_vae_dir):
        assert (mnt / "kept.txt").read_bytes() == b"durable once fsync returns"
