"""`sdfs import`, `sdfs stats` and `sdfs sync`, run as commands."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from sdfs.codec import container
from sdfs.store import LATENT, ROOT, VERBATIM, Store, StoreError
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
        (mnt / "photos/kodak/kodim07.png").read_bytes()  # a second open of a file the size check decoded: a hit

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
