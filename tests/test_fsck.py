"""`sdfs fsck`: a real store (built through the filesystem and encoder), then
damage planted with the lmdb API, then check, repair and check again."""

import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from sdfs.cli import main
from sdfs.codec import container
from sdfs.codec.codec import Codec
from sdfs.codec.guard import Floor
from sdfs.fs.encoder import Encoder
from sdfs.fs.filesystem import Filesystem
from sdfs.ingest import model_for_store
from sdfs.progress import Progress
from sdfs.store import LATENT, PENDING, ROOT, Inode, Store
from sdfs.store.lock import StoreLock
from sdfs.store.store import INODE_SIZES, _chunk_key, _key
from tests.conftest import kodak_image

TEXT = b"a verbatim text file\n" * 500
LINK_TARGET = "docs/note.txt"


def _model_of(vae) -> dict:
    return model_for_store(vae.identity)


def _codec(vae) -> Codec:
    return Codec(vae, quality="high", floor=Floor(0, -1))


def _write(fs, path, data):
    fh = fs.create(path, 0o644)
    fs.write(path, data, 0, fh)
    fs.release(path, fh)
    return fs.resolve(path)


def _read(fs, path) -> bytes:
    fh = fs.open(path, os.O_RDONLY)
    try:
        return fs.read(path, 1 << 30, 0, fh)
    finally:
        fs.release(path, fh)


@pytest.fixture(scope="module")
def template(tmp_path_factory, tiny_vae):
    """A store holding a directory, a latent Kodak crop, a verbatim text file
    and a symlink, with what each path reads back as (built once)."""
    crop = Image.fromarray(kodak_image(23)[200:296, 300:396])
    png = io.BytesIO()
    crop.save(png, format="PNG")
    path = tmp_path_factory.mktemp("template") / "store"
    store = Store(path, _model_of(tiny_vae))
    encoder = Encoder(store, _codec(tiny_vae))
    fs = Filesystem(store, _codec(tiny_vae), encoder, cache_bytes=1 << 20)
    encoder.start()
    try:
        fs.mkdir("/docs", 0o755)
        fs.mkdir("/docs/deeper", 0o755)
        photo = _write(fs, "/photo.png", png.getvalue())
        _write(fs, "/docs/note.txt", TEXT)
        _write(fs, "/docs/deeper/small.bin", b"\x00\x01\x02")
        fs.symlink("/link", LINK_TARGET)
        fs.setxattr("/docs/note.txt", "user.comment", b"kept")
        assert encoder.wait_idle(timeout=120)
        assert store.inode(photo).kind == LATENT, "the tiny VAE's record must win for this test's latent"
        contents = {p: _read(fs, p) for p in ("/photo.png", "/docs/note.txt", "/docs/deeper/small.bin")}
    finally:
        encoder.stop()
        store.close()
    return path, contents


@pytest.fixture
def built(template, tmp_path):
    path, contents = template
    copy = tmp_path / "store"
    shutil.copytree(path, copy)
    return copy, dict(contents)


def fsck(*args):
    return main(["fsck", *map(str, args)])


def run_cli(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "sdfs", "fsck", *map(str, args)],
                          capture_output=True, text=True, timeout=300, env=env)


def _json(capsys, *args):
    rc = fsck(*args, "--json")
    return rc, json.loads(capsys.readouterr().out)


def _lookup(store, path):
    ino = ROOT
    for part in path.strip("/").split("/"):
        value = store.lookup(ino, part.encode())
        if value is None:
            return None
        ino = value
    return ino


def _assert_reads_back(path, tiny_vae, contents):
    store = Store(path)
    try:
        fs = Filesystem(store, _codec(tiny_vae), None, cache_bytes=1 << 20)
        for name, data in contents.items():
            assert _read(fs, name) == data, name
        assert fs.readlink("/link") == LINK_TARGET
        assert fs.getxattr("/docs/note.txt", "user.comment") == b"kept"
    finally:
        store.close()


def _with_env(path, fn):
    store = Store(path)
    try:
        return store.write(lambda txn: fn(store, txn))
    finally:
        store.close()


def test_a_clean_store_has_no_problems(built, capsys):
    path, _ = built
    assert fsck(path) == 0
    out = capsys.readouterr().out
    assert "no problems" in out and "checked 7 inodes, 1 record:" in out
    rc, report = _json(capsys, path)
    assert rc == 0 and report["problems"] == [] and report["repaired"] is False


def test_corrupt_record_and_dangling_entry_are_reported_repaired_and_kept(built, tiny_vae):
    path, contents = built
    store = Store(path)
    photo = _lookup(store, "/photo.png")

    def damage(txn):
        record = bytearray(txn.get(_key(photo), db=store.db["records"]))
        for i in range(40, 48):  # bit rot in the middle of the record
            record[i] ^= 0xFF
        txn.put(_key(photo), bytes(record), db=store.db["records"])
        txn.put(_key(ROOT) + b"ghost.txt", _key(999), db=store.db["dirents"])
        return bytes(record)

    corrupt = store.write(damage)
    store.close()

    checked = run_cli(path)
    assert checked.returncode == 4, checked.stderr
    lines = checked.stdout.splitlines()
    ghost = next(line for line in lines if line.startswith("/ghost.txt"))
    assert "missing inode 999" in ghost and "remove the entry" in ghost
    bad = next(line for line in lines if line.startswith("/photo.png"))
    assert "corrupt" in bad and "checksum" in bad and f"/lost+found/#{photo}.corrupt-record" in bad
    assert "would:" in lines[-1] and "2 problems" in lines[-1]

    repaired = run_cli(path, "--repair")
    assert repaired.returncode == 1, repaired.stdout + repaired.stderr
    assert "all repaired" in repaired.stdout
    again = run_cli(path)
    assert again.returncode == 0, again.stdout
    assert "no problems" in again.stdout

    store = Store(path, readonly=True)
    try:
        assert _lookup(store, "/ghost.txt") is None and _lookup(store, "/photo.png") is None
        kept = _lookup(store, f"/lost+found/#{photo}.corrupt-record")
        assert kept == photo and store.read_raw(kept) == corrupt
        assert store.inode(_lookup(store, "/lost+found")).mode & 0o777 == 0o700
    finally:
        store.close()
    del contents["/photo.png"]
    _assert_reads_back(path, tiny_vae, contents)


def test_a_lost_directory_goes_to_lost_and_found_with_its_subtree(built, tiny_vae, capsys):
    path, contents = built
    docs = _with_env(path, lambda store, txn: (
        int.from_bytes(txn.pop(_key(ROOT) + b"docs", db=store.db["dirents"]), "big")))
    rc, report = _json(capsys, path)
    assert rc == 4
    kinds = {(p["kind"], p["ino"]) for p in report["problems"]}
    assert ("lost", docs) in kinds
    assert ("nlink", ROOT) in kinds  # root still counts the lost subdirectory
    assert fsck(path, "--repair") == 1
    assert fsck(path) == 0
    moved = {f"/lost+found/#{docs}" + name[len("/docs"):]: data for name, data in contents.items() if name.startswith("/docs")}
    store = Store(path, readonly=True)
    try:
        assert _lookup(store, f"/lost+found/#{docs}") == docs
        found = store.inode(_lookup(store, "/lost+found"))
        assert found.nlink == 3  # itself, its entry, the moved directory's ..
        assert store.inode(ROOT).nlink == 3  # root: ., .., lost+found
    finally:
        store.close()
    store = Store(path)
    try:
        fs = Filesystem(store, _codec(tiny_vae), None)
        for name, data in moved.items():
            assert _read(fs, name) == data
        assert _read(fs, "/photo.png") == contents["/photo.png"]
    finally:
        store.close()


def test_a_lost_file_and_an_unlinked_inode(built, capsys):
    path, contents = built

    def damage(store, txn):
        note = int.from_bytes(txn.pop(_key(_lookup_txn(store, txn, "docs")) + b"note.txt", db=store.db["dirents"]), "big")
        small = Inode(5000, 3, 0o100644, 0, 0, 0, 2, 0, 0, 0, 2, 0)  # nlink 0, not in orphans
        txn.put(_key(5000), small.pack(), db=store.db["inodes"])
        txn.put(_chunk_key(5000, 0, 0), b"hi", db=store.db["chunks"])
        gone = Inode(5001, 1, 0o40755, 0, 0, 0, 0, 0, 0, 0, 0, 0)  # an rmdir'd directory still open: fine
        txn.put(_key(5001), gone.pack(), db=store.db["inodes"])
        txn.put(_key(5001), b"", db=store.db["orphans"])
        txn.put(b"next_ino", _key(5002), db=store.db["meta"])
        return note

    note = _with_env(path, damage)
    rc, report = _json(capsys, path)
    assert rc == 4
    kinds = {(p["kind"], p["ino"]) for p in report["problems"]}
    assert kinds == {("lost", note), ("unlinked", 5000)}
    assert fsck(path, "--repair") == 1
    capsys.readouterr()
    assert fsck(path) == 0
    store = Store(path, readonly=True)
    try:
        assert store.read_raw(_lookup(store, f"/lost+found/#{note}")) == TEXT
        assert store.get_xattr(note, b"user.comment") == b"kept"
        assert store.inode(5000) is None and store.read_raw  # purged with its chunks
        with store.reading() as txn:
            assert txn.get(_chunk_key(5000, 0, 0), db=store.db["chunks"]) is None
    finally:
        store.close()


def _lookup_txn(store, txn, path):
    ino = ROOT
    for part in path.split("/"):
        ino = int.from_bytes(txn.get(_key(ino) + part.encode(), db=store.db["dirents"]), "big")
    return ino


def test_orphaned_data_is_deleted(built, capsys):
    path, _ = built

    def plant(store, txn):
        txn.put(_chunk_key(7001, 0, 0), b"x" * 100, db=store.db["chunks"])
        txn.put(_chunk_key(7001, 1, 0), b"y" * 100, db=store.db["chunks"])
        txn.put(_key(7002), b"SDFS not really a record", db=store.db["records"])
        txn.put(_key(7003) + b"user.x", b"v", db=store.db["xattrs"])
        txn.put(_key(7004), b"", db=store.db["pending"])
        txn.put(_key(7005), b"", db=store.db["orphans"])
        text = _lookup_txn(store, txn, "docs/note.txt")
        txn.put(_key(text), b"RECORD", db=store.db["records"])  # a record for a verbatim file

    _with_env(path, plant)
    rc, report = _json(capsys, path)
    assert rc == 4
    orphaned = sorted(p["ino"] for p in report["problems"] if p["kind"] == "orphaned-data")
    assert len(orphaned) == 6 and orphaned[1:] == [7001, 7002, 7003, 7004, 7005]
    assert all(p["repair"].startswith("delete") for p in report["problems"])
    assert fsck(path, "--repair") == 1
    assert fsck(path) == 0
    store = Store(path, readonly=True)
    try:
        with store.reading() as txn:
            for db, key in (("chunks", _chunk_key(7001, 0, 0)), ("records", _key(7002)), ("xattrs", _key(7003) + b"user.x"),
                            ("pending", _key(7004)), ("orphans", _key(7005))):
                assert txn.get(key, db=store.db[db]) is None, db
        assert store.record(_lookup(store, "/docs/note.txt")) is None
    finally:
        store.close()


def test_wrong_link_counts_and_sizes_are_fixed(built, tiny_vae, capsys):
    path, contents = built

    def damage(store, txn):
        store_inodes = store.db["inodes"]
        changed = {}
        for name, changes in (("/docs/note.txt", dict(nlink=3)), ("/docs", dict(nlink=7)),
                              ("/link", dict(stored=99)), ("/photo.png", dict(size=12))):
            ino = _lookup_txn(store, txn, name.lstrip("/"))
            inode = Inode.unpack(ino, txn.get(_key(ino), db=store_inodes))
            txn.put(_key(ino), dataclasses.replace(inode, **changes).pack(), db=store_inodes)
            changed[name] = ino
        txn.put(_key(changed["/docs"]), _key(12345), db=store.db["dirparents"])
        return changed

    changed = _with_env(path, damage)
    rc, report = _json(capsys, path)
    assert rc == 4
    kinds = sorted((p["kind"], p["path"]) for p in report["problems"])
    assert kinds == [("content", "/link"), ("content", "/photo.png"), ("dirparent", "/docs"),
                     ("nlink", "/docs"), ("nlink", "/docs/note.txt")]
    nlink = next(p for p in report["problems"] if p["path"] == "/docs/note.txt")
    assert "3" in nlink["detail"] and nlink["repair"] == "set it to 1"
    assert fsck(path, "--repair") == 1
    assert fsck(path) == 0
    store = Store(path, readonly=True)
    try:
        assert store.inode(changed["/docs/note.txt"]).nlink == 1
        assert store.inode(changed["/docs"]).nlink == 3
        assert store.inode(changed["/photo.png"]).size == len(contents["/photo.png"])
    finally:
        store.close()
    _assert_reads_back(path, tiny_vae, contents)


def test_a_pending_file_missing_from_the_queue_is_requeued(built, capsys):
    path, _ = built
    store = Store(path)
    ino = store.create(ROOT, b"staged.png", 3, 0o100644, 0, 0).ino
    store.stage(ino, b"\x89PNG not yet encoded", queue=True)
    store.write(lambda txn: txn.delete(_key(ino), db=store.db["pending"]))
    store.close()
    rc, report = _json(capsys, path)
    assert rc == 4 and [(p["kind"], p["path"]) for p in report["problems"]] == [("queue", "/staged.png")]
    assert fsck(path, "--repair") == 1
    store = Store(path, readonly=True)
    try:
        assert store.pending() == [ino] and store.inode(ino).kind == PENDING
    finally:
        store.close()


def test_repair_refuses_while_the_store_is_locked(built, capsys):
    path, _ = built
    with StoreLock(path, "mount at /mnt/test"):
        assert fsck(path, "--repair") == 8
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("sdfs: error: ") and "mount at /mnt/test" in err
        assert fsck(path) == 0  # a plain check runs beside a mount
    assert fsck(path.parent / "nowhere") == 8
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not an sdfs store" in err
    assert not (path.parent / "nowhere").exists()  # a failed check creates nothing


def test_decode_checks_every_record(built, tiny_vae, tiny_vae_dir, capsys):
    path, contents = built
    model = ("--model", tiny_vae_dir, "--device", "cpu")
    assert fsck(path, "--decode", *model) == 0
    capsys.readouterr()

    # A record whose recorded output length is wrong yet self-consistent (its
    # checksum recomputed, the inode's size and stored matching it): only a
    # decode can tell, because the PNG it renders cannot have that length
    # (64 bytes: not even its frame and one row fit, whatever bits are cleared).
    forged_length = 64

    def tamper(store, txn):
        ino = _lookup_txn(store, txn, "photo.png")
        record = container.unpack(txn.get(_key(ino), db=store.db["records"]))
        forged = container.pack(dataclasses.replace(record, output_length=forged_length))
        txn.put(_key(ino), forged, db=store.db["records"])
        inode = Inode.unpack(ino, txn.get(_key(ino), db=store.db["inodes"]))
        txn.put(_key(ino), dataclasses.replace(inode, size=forged_length, stored=len(forged)).pack(),
                db=store.db["inodes"])
        return ino

    photo = _with_env(path, tamper)
    assert fsck(path) == 0  # structurally sound
    capsys.readouterr()
    rc, report = _json(capsys, path, "--decode", *model)
    assert rc == 4
    (problem,) = report["problems"]
    assert problem["kind"] == "decode" and problem["ino"] == photo and problem["path"] == "/photo.png"
    assert "decodes wrong" in problem["detail"] and problem["repair"] is None
    assert fsck(path, "--repair", "--decode", *model) == 4  # reported, never deleted
    assert "not repairable" in capsys.readouterr().out
    store = Store(path, readonly=True)
    try:
        assert store.inode(photo).kind == LATENT
    finally:
        store.close()


def test_decode_with_another_model_is_an_operational_error(built, tmp_path, capsys):
    from sdfs.codec.random_models import save_random_vae

    path, _ = built
    other = save_random_vae(tmp_path / "other-vae", seed=1)
    assert fsck(path, "--decode", "--model", other, "--device", "cpu") == 8
    assert "pass --model" in capsys.readouterr().err


def test_progress_prints_plain_lines_when_not_a_terminal():
    stream = io.StringIO()
    with Progress(4, 4000, what="decoding", stream=stream, interval=0) as progress:
        for _ in range(4):
            progress.advance(files=1, nbytes=1000)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("sdfs: decoding: 1/4 files, ") and "B/s" in lines[0] and "ETA" in lines[0]
    assert "done in" in lines[-1]
    quiet = io.StringIO()
    with Progress(4, what="scanning", stream=quiet, interval=3600) as progress:
        progress.advance(files=4)
    assert quiet.getvalue() == ""  # short jobs stay silent


def test_unreadable_inodes_are_rebuilt_from_what_refers_to_them(built, capsys):
    path, contents = built

    def damage(store, txn):
        small, deeper = _lookup_txn(store, txn, "docs/deeper/small.bin"), _lookup_txn(store, txn, "docs/deeper")
        txn.put(_key(small), b"\x03" * 10, db=store.db["inodes"])  # wrong length
        txn.put(_key(deeper), b"\x09" + txn.get(_key(deeper), db=store.db["inodes"])[1:], db=store.db["inodes"])  # kind 9
        return small, deeper

    small, deeper = _with_env(path, damage)
    rc, report = _json(capsys, path)
    assert rc == 4
    rebuilt = {p["ino"]: p["repair"] for p in report["problems"] if p["kind"] == "bad-inode"}
    assert "directory" in rebuilt[deeper] and "3 stored bytes" in rebuilt[small]
    assert fsck(path, "--repair") == 1
    assert fsck(path) == 0
    store = Store(path, readonly=True)
    try:
        assert store.inode(deeper).is_dir and store.inode(small).mode & 0o777 == 0o600
        assert store.read_raw(_lookup(store, "/docs/deeper/small.bin")) == contents["/docs/deeper/small.bin"]
    finally:
        store.close()


def test_a_directory_cycle_cut_off_from_the_root_is_cut_open(built, capsys):
    path, contents = built

    def damage(store, txn):
        docs, deeper = _lookup_txn(store, txn, "docs"), _lookup_txn(store, txn, "docs/deeper")
        txn.delete(_key(ROOT) + b"docs", db=store.db["dirents"])
        txn.put(_key(deeper) + b"loop", _key(docs), db=store.db["dirents"])  # docs -> deeper -> docs
        txn.put(_key(docs), _key(deeper), db=store.db["dirparents"])
        return docs

    docs = _with_env(path, damage)
    assert fsck(path) == 4
    assert fsck(path, "--repair") == 1
    capsys.readouterr()
    assert fsck(path) == 0, capsys.readouterr().out
    store = Store(path, readonly=True)
    try:
        assert _lookup(store, f"/lost+found/#{docs}") == docs
        assert store.read_raw(_lookup(store, f"/lost+found/#{docs}/note.txt")) == TEXT
        assert _lookup(store, f"/lost+found/#{docs}/deeper/loop") is None
    finally:
        store.close()


def test_progress_draws_a_bar_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    with Progress(3, 3000, what="decoding", stream=stream) as progress:
        progress.advance(files=3, nbytes=3000)
    # tqdm redraws at most every 0.1 s and clears the bar at the end (leave=False)
    assert "sdfs: decoding" in stream.getvalue() and "/3 [" in stream.getvalue()
    assert progress.files == 3 and progress.nbytes == 3000


# -- format 2: hard links, special files, holes, uploads (no model needed)

SPARSE_TAIL_AT = 3 << 20


@pytest.fixture
def v2_store(tmp_path):
    """A store of verbatim and special files: /sparse (4 bytes, a 3 MiB hole,
    4 bytes) with a second name /sparse-too, a FIFO, a character device and a
    symlink. Returns (path, {name: ino})."""
    import stat

    path = tmp_path / "store"
    store = Store(path)
    try:
        fs = Filesystem(store, None, None)
        fh = fs.create("/sparse", 0o644)
        fs.write("/sparse", b"head", 0, fh)
        fs.write("/sparse", b"tail", SPARSE_TAIL_AT, fh)
        fs.release("/sparse", fh)
        fs.link("/sparse-too", "/sparse")
        fs.mknod("/fifo", stat.S_IFIFO | 0o644, 0)
        fs.mknod("/tty", stat.S_IFCHR | 0o620, os.makedev(4, 1))
        fs.symlink("/link", "sparse")
        inos = {name: fs.resolve("/" + name) for name in ("sparse", "fifo", "tty", "link")}
    finally:
        store.close()
    return path, inos


def _sparse_bytes(*pieces):
    out = bytearray()
    for offset, data in pieces:
        out.extend(bytes(offset - len(out)))
        out[offset:] = data
    return bytes(out)


def test_hard_links_special_files_holes_and_an_upload_in_progress_are_clean(v2_store, capsys):
    path, inos = v2_store
    store = Store(path)
    sparse = store.inode(inos["sparse"])
    assert (sparse.nlink, sparse.size, sparse.stored) == (2, SPARSE_TAIL_AT + 4, 8)
    store.upload(sparse.ino, sparse.generation + 1, {1: b"a writer's chunk"})  # a mount writing it now
    store.close()
    rc, report = _json(capsys, path)
    assert rc == 0, report["problems"]

    # the hard link counts: one name fewer in the inode is a problem
    _with_env(path, lambda store, txn: store._put(txn, dataclasses.replace(store._inode(txn, sparse.ino), nlink=1)))
    rc, report = _json(capsys, path)
    assert rc == 4
    assert [(p["kind"], p["ino"], p["repair"]) for p in report["problems"]] == [("nlink", sparse.ino, "set it to 2")]


def test_format_2_damage_is_found_and_repaired(v2_store, capsys):
    import stat

    from sdfs.store import CHUNK

    path, inos = v2_store
    sparse, fifo, tty = inos["sparse"], inos["fifo"], inos["tty"]
    store = Store(path)
    fs = Filesystem(store, None, None)
    fs.release("/big", fs.create("/big", 0o644))
    big = fs.resolve("/big")
    store.close()
    long_chunk = bytes(range(256)) * (CHUNK // 256) + b"0123456789"  # 10 bytes over a chunk

    def damage(store, txn):
        chunks, uploads = store.db["chunks"], store.db["uploads"]
        generation = store._inode(txn, sparse).generation
        txn.put(_chunk_key(sparse, 0, generation - 1), b"old!", db=chunks)  # superseded, not deleted
        txn.put(_chunk_key(sparse, 1, generation + 6), b"zzz", db=chunks)  # an upload nobody names
        txn.put(_chunk_key(sparse, 5, generation), b"late", db=chunks)  # past the size
        txn.put(_key(9999), (1).to_bytes(8, "big"), db=uploads)  # uploads entry of a missing inode
        txn.put(_key(fifo), (1).to_bytes(8, "big"), db=uploads)  # a FIFO is never written
        txn.put(_chunk_key(fifo, 0, 0), b"x", db=chunks)  # a FIFO holds no bytes
        store._put(txn, dataclasses.replace(store._inode(txn, fifo), rdev=5))
        tty_inode = store._inode(txn, tty)
        store._put(txn, dataclasses.replace(tty_inode, mode=stat.S_IFREG | 0o620))  # type bits lost
        # a chunk over 1 MiB, and the next chunk that a read lays over its tail
        txn.put(_chunk_key(big, 0, 0), long_chunk, db=chunks)
        txn.put(_chunk_key(big, 1, 0), b"XY", db=chunks)
        store._put(txn, dataclasses.replace(store._inode(txn, big), size=CHUNK + 10, stored=CHUNK + 12))

    _with_env(path, damage)
    store = Store(path, readonly=True)
    big_before = store.read_raw(big)
    store.close()
    assert big_before == long_chunk[:CHUNK] + b"XY" + long_chunk[CHUNK + 2 :]

    rc, report = _json(capsys, path)
    assert rc == 4
    found = {(p["kind"], p["ino"]) for p in report["problems"]}
    assert found == {("leftover", sparse), ("upload", sparse), ("content", sparse), ("orphaned-data", 9999),
                     ("upload", fifo), ("orphaned-data", fifo), ("file-type", fifo), ("file-type", tty),
                     ("content", big)}
    past = next(p for p in report["problems"] if p["kind"] == "content" and p["ino"] == sparse and "past" in p["detail"])
    assert past["repair"] == f"set its size to {5 * CHUNK + 4:,}, keeping every stored byte"
    assert fsck(path, "--repair") == 1
    capsys.readouterr()
    assert fsck(path) == 0, capsys.readouterr().out

    store = Store(path, readonly=True)
    try:
        assert store.read_raw(sparse) == _sparse_bytes((0, b"head"), (SPARSE_TAIL_AT, b"tail"), (5 * CHUNK, b"late"))
        assert store.inode(sparse).stored == 12
        assert store.read_raw(big) == big_before and store.inode(big).size == CHUNK + 10
        with store.reading() as txn:
            kept = [(bytes(k), len(v)) for k, v in txn.cursor(db=store.db["chunks"])]
            assert not any(txn.cursor(db=store.db["uploads"]))
        assert all(length <= CHUNK for _, length in kept)
        assert not any(k.startswith(_key(fifo)) for k, _ in kept)
        assert store.inode(fifo).rdev == 0
        assert stat.S_ISCHR(store.inode(tty).mode) and store.inode(tty).rdev == os.makedev(4, 1)
    finally:
        store.close()


def test_a_version_1_store_is_clean(tmp_path, capsys):
    """Format 1: 65-byte inodes, 12-byte chunk keys (ino | index), no uploads
    table, every chunk full but the last (no holes, no special files)."""
    import struct

    import lmdb

    path = tmp_path / "store"
    data = bytes(range(1, 256)) * 6200  # 1.5 MiB: a full chunk and a partial one
    store = Store(path)
    fs = Filesystem(store, None, None)
    fs.mkdir("/d", 0o755)
    ino = _write(fs, "/d/f", data)
    fs.symlink("/link", "d/f")
    store.close()

    def downgrade(store, txn):
        v1 = struct.Struct("<BIIIIQqqqQQ")  # the format-2 layout less rdev
        for key, value in list(txn.cursor(db=store.db["inodes"])):
            txn.put(key, v1.pack(*struct.unpack("<BIIIIQqqqQQQ", value)[:11]), db=store.db["inodes"])
        for key, value in list(txn.cursor(db=store.db["chunks"])):
            txn.delete(key, db=store.db["chunks"])
            txn.put(key[:12], value, db=store.db["chunks"])
        txn.put(b"format", b"1", db=store.db["meta"])
        txn.drop(store.db["uploads"], delete=True)

    _with_env(path, downgrade)
    env = lmdb.open(str(path), max_dbs=16, readonly=True)
    with env.begin() as txn:
        assert {len(v) for _, v in txn.cursor(db=env.open_db(b"inodes", txn=txn))} == {INODE_SIZES[1]}
        assert sorted(len(k) for k, _ in txn.cursor(db=env.open_db(b"chunks", txn=txn))) == [12, 12, 12]
        assert txn.get(b"uploads") is None
    env.close()
    rc, report = _json(capsys, path)
    assert rc == 0 and report["inodes"] == 4, report["problems"]
    store = Store(path, readonly=True)
    try:
        assert store.format_version() == 1 and store.read_raw(ino) == data
    finally:
        store.close()
