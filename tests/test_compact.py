"""`sdfs stats` reports LMDB's free pages honestly; `sdfs compact` gives them
back to the disk. Stores of verbatim files: no model needed."""

import json
import os
import shutil
import stat
import subprocess
import sys
from collections import namedtuple

from sdfs.cli import main
from sdfs.fs.filesystem import Filesystem
from sdfs.store import Store
from sdfs.store.lock import StoreLock

BIG = 4 << 20
KEPT = b"kept bytes\n" * 100


def _store_with_a_deleted_file(path):
    """/keep (with a second name /keep-too) and a FIFO stay; a 4 MB file was
    written and deleted, leaving its pages free in data.mdb."""
    store = Store(path)
    try:
        fs = Filesystem(store, None, None)
        for name, data in (("/big", os.urandom(BIG)), ("/keep", KEPT)):  # random: no holes to skip
            fh = fs.create(name, 0o644)
            fs.write(name, data, 0, fh)
            fs.release(name, fh)
        fs.link("/keep-too", "/keep")
        fs.mknod("/fifo", stat.S_IFIFO | 0o600, 0)
        fs.unlink("/big")
        return fs.resolve("/keep")
    finally:
        store.close()


def _stats(capsys, path, *args):
    assert main(["stats", str(path), *args]) == 0
    return capsys.readouterr().out


def test_stats_shows_free_space_and_compact_reclaims_it(tmp_path, capsys):
    path = tmp_path / "store"
    keep = _store_with_a_deleted_file(path)
    report = json.loads(_stats(capsys, path, "--json"))
    space = report["space"]
    assert space["free"] >= BIG and space["used"] < BIG and space["file"] == space["used"] + space["free"]
    assert space["file"] == (path / "data.mdb").stat().st_size
    assert report["special"]["fifo"] == 1 and report["hard_links"] == {"files": 1, "extra_names": 1}
    human = _stats(capsys, path)
    assert "free for reuse (`sdfs compact` reclaims it)" in human
    assert "1 FIFO" in human and "1 extra name;" in human

    assert main(["compact", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"compacted {path}: data.mdb ") and "returned to the disk" in out
    assert (path / "data.mdb").stat().st_size < space["file"] - BIG
    assert not list(path.glob(".compact-*")) and (path / "sdfs.lock").exists()
    after = json.loads(_stats(capsys, path, "--json"))["space"]
    assert after["free"] < 1 << 20 and "reclaims it" not in _stats(capsys, path)

    assert main(["fsck", str(path)]) == 0
    store = Store(path)  # opens for writing too: the swapped file is a working store
    try:
        assert store.read_raw(keep) == KEPT and store.inode(keep).nlink == 2
        assert store.lookup(1, b"keep-too") == keep and store.lookup(1, b"big") is None
    finally:
        store.close()


def _refused(capsys, path, why):
    size = (path / "data.mdb").stat().st_size
    assert main(["compact", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sdfs: error: ") and why in err, err
    assert (path / "data.mdb").stat().st_size == size and not list(path.glob(".compact-*"))


def test_compact_refuses_in_one_line(tmp_path, capsys, monkeypatch):
    nowhere = tmp_path / "nowhere"
    assert main(["compact", str(nowhere)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not an sdfs store" in err and not nowhere.exists()

    path = tmp_path / "store"
    _store_with_a_deleted_file(path)
    with StoreLock(path, "the mount at /mnt/test"):
        _refused(capsys, path, "unmount it first: sdfs umount /mnt/test")

    # a reader (sdfs stats, fsck) in another process has the environment open
    reader = subprocess.Popen([sys.executable, "-c", "import lmdb, sys; env = lmdb.open(sys.argv[1], readonly=True, "
                               "max_dbs=16); print('open', flush=True); sys.stdin.read()", str(path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline() == "open\n"
        _refused(capsys, path, "is open in another process")
    finally:
        reader.communicate("", timeout=30)

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(1 << 30, (1 << 30) - (1 << 20), 1 << 20))
    _refused(capsys, path, "not enough free disk space")
