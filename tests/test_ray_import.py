"""`sdfs import --ray`: a local Ray instance (this machine's CPUs), the tiny
test VAEs, and the same store a plain import makes, also when an encoder
actor or the driver is killed."""

import dataclasses
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from sdfs.cli import main, parse_args
from sdfs.cluster import BLOCK_FILES, INSTALL_HINT, Encoded, blocks
from sdfs.codec import guard
from sdfs.codec.codec import Codec
from sdfs.codec.guard import Floor
from sdfs.errors import ModelMismatch
from sdfs.importer import Entry, Summary
from sdfs.ingest import SOURCE, VERDICT, judge, model_for_store
from sdfs.progress import Progress
from sdfs.ray_import import _Commits
from sdfs.reaper import descendants
from sdfs.store import LATENT, VERBATIM, Store
from tests.conftest import KODAK, kodak_image
from tests.test_import import ENCODE, _records_so_far, _walk_store, sdfs

pytestmark = pytest.mark.timeout(600)


def _catalog(store_path) -> dict:
    """{path: (kind, size, stored, mode, mtime, verdict, source mark, bytes)} of every file. A latent's
    record is left out: batches group other files on Ray (only images go there), and a batch of
    another size may round a latent's last bits otherwise on a CPU (its length and verdict stay)."""
    files, _ = _walk_store(store_path)
    store = Store(store_path, readonly=True)
    try:
        return {path: (i.kind, i.size, i.stored, i.mode, i.mtime_ns, store.get_xattr(i.ino, VERDICT),
                       store.get_xattr(i.ino, SOURCE), store.read_raw(i.ino) if i.kind == VERBATIM else None)
                for path, i in files.items() if not i.is_dir}
    finally:
        store.close()


def _kodak_copies(folder, copies: int):
    folder.mkdir(parents=True)
    for n in range(copies):
        for image in sorted(KODAK.glob("*.png")):
            shutil.copyfile(image, folder / f"{image.stem}_{n}.png")
    return copies * len(list(KODAK.glob("*.png")))


def _fsck_clean(store, model):
    check = sdfs("fsck", store, "--decode", "--model", model)
    assert check.returncode == 0 and "no problems" in check.stdout, check.stdout + check.stderr


def test_a_ray_import_stores_what_a_plain_import_stores(tmp_path, factor8_vae_dir, tiny_vae_dir):
    src = tmp_path / "photos"
    shutil.copytree(KODAK, src / "kodak", ignore=shutil.ignore_patterns("*.md"))
    (src / "notes.txt").write_bytes(b"a text file stays byte-exact\n" * 50)
    (src / "broken.png").write_bytes((KODAK / "kodim05.png").read_bytes()[:3000])  # an image's head, then nothing
    (src / "empty.png").write_bytes(b"")
    Image.new("RGB", (16, 16), (200, 30, 30)).save(src / "tiny.png")  # its latent would not be smaller: kept
    photo = io.BytesIO()
    Image.open(KODAK / "kodim07.png").save(photo, "JPEG", quality=90)
    (src / "photo.jpg").write_bytes(photo.getvalue())
    plain, on_ray = tmp_path / "plain", tmp_path / "ray"
    common = ("--model", factor8_vae_dir, "--batch-size", 3, *ENCODE)

    sdfs("import", src, plain, *common, check_rc=0)
    done = sdfs("import", src, on_ray, *common, "--ray", "--ray-actors", 2, check_rc=0)
    assert "Traceback" not in done.stderr, done.stderr
    expected = _catalog(plain)
    assert _catalog(on_ray) == expected
    kinds = {path: entry[0] for path, entry in expected.items()}
    assert list(kinds.values()).count(LATENT) == len(list(KODAK.glob("*.png"))) + 1  # the crops and the JPEG: latents
    assert expected["/photos/tiny.png"][5].startswith(b"keep original") and kinds["/photos/tiny.png"] == VERBATIM
    assert expected["/photos/broken.png"][5].startswith(b"stored verbatim")
    _fsck_clean(on_ray, factor8_vae_dir)  # every record decodes to its recorded length

    # workers whose VAE is not the store's (a wrong --model): nothing is committed, the first one is named
    other = tmp_path / "more"
    other.mkdir()
    shutil.copyfile(KODAK / "kodim01.png", other / "k1.png")
    refused = sdfs("import", other, on_ray, "--model", tiny_vae_dir, *ENCODE, "--ray", check_rc=5)
    assert "encodes with another VAE" in refused.stderr and " pid " in refused.stderr, refused.stderr
    ours = [line for line in refused.stderr.splitlines() if line.startswith("sdfs:")]
    assert len(ours) == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert "/more/k1.png" not in _catalog(on_ray)


def test_killing_the_encoder_actors_loses_and_repeats_nothing(tmp_path, factor8_vae_dir):
    src = tmp_path / "src"
    count = _kodak_copies(src, 2)
    store = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-m", "sdfs", "import", str(src), str(store), "--model",
                             str(factor8_vae_dir), "--batch-size", "1", *ENCODE, "--ray", "--ray-actors", "2"],
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        victims = []
        deadline = time.monotonic() + 300
        while not victims and time.monotonic() < deadline and proc.poll() is None:
            if _records_so_far(store) >= 1:  # every actor, so the one at work is among them
                victims = [pid for pid in descendants(proc.pid) if b"RayEncoder" in _cmdline(pid)]
            time.sleep(0.05)
        assert victims, "no encoder actor was seen at work"
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        assert _records_so_far(store) < count, "the kill came too late to interrupt anything"
        out, err = proc.communicate(timeout=400)
    finally:
        proc.kill()
    assert proc.returncode == 0, out + err
    assert f"imported {count} files" in out and f"{count} as latents" in out, out
    names = sorted(path.rsplit("/", 1)[1] for path in _catalog(store))
    assert names == sorted(p.name for p in src.iterdir())  # each source once
    _fsck_clean(store, factor8_vae_dir)


def test_a_killed_driver_leaves_no_ray_behind_and_the_rerun_imports_only_the_rest(tmp_path, factor8_vae_dir):
    src = tmp_path / "src"
    count = _kodak_copies(src, 2)
    store = tmp_path / "store"
    command = ["import", str(src), str(store), "--model", str(factor8_vae_dir), "--batch-size", "1", *ENCODE, "--ray"]
    proc = subprocess.Popen([sys.executable, "-m", "sdfs", *command], env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None and _records_so_far(store) < 2:
            time.sleep(0.05)
        ray_processes = descendants(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
    committed = _records_so_far(store)
    assert 2 <= committed < count, "the kill came too late to interrupt anything"
    assert len(ray_processes) >= 3  # Ray's own (gcs, raylet, agents) and the actor
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _still_running(ray_processes):
        time.sleep(0.2)
    assert not _still_running(ray_processes), [_cmdline(pid)[:60] for pid in _still_running(ray_processes)]

    rerun = sdfs(*command, check_rc=0)
    assert f"imported {count - committed} files" in rerun.stdout, rerun.stdout
    assert f"{committed} already in" in rerun.stdout, rerun.stdout
    assert len(_catalog(store)) == count
    _fsck_clean(store, factor8_vae_dir)


def test_the_driver_commits_each_file_once_and_only_what_the_store_can_take(tmp_path, tiny_vae, caplog):
    """What comes back from workers, without Ray: repeats, unreadable files, a
    worker whose codec failed, one with another VAE, a file never answered."""
    names = [f"f{i}.png" for i in range(6)]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    candidates = [Entry(tmp_path / name, (name.encode(),), os.stat(tmp_path / name)) for name in names]
    image = io.BytesIO()
    Image.fromarray(kodak_image()[:32, :32]).save(image, "PNG")
    codec = Codec(tiny_vae, quality="high", floor=Floor.parse("0:-1"))
    encoded = codec.encode(image.getvalue())
    assert encoded.verdict.keep_latent
    ours = json.dumps(model_for_store(tiny_vae.identity), sort_keys=True)
    theirs = json.dumps({**json.loads(ours), "weights_sha256": "cd" * 32}, sort_keys=True)
    latent = judge(image.getvalue(), encoded)
    not_smaller = guard.decide(encoded.fidelity, Floor.parse("0:-1"), len(encoded.record), 1)  # a 1-byte original
    kept = judge(b"", dataclasses.replace(encoded, verdict=not_smaller))
    assert kept.record is None and "not smaller" in kept.verdict

    def result(key, outcome=latent, worker="w1", model=ours, error="", codec_failed=False, original=b""):
        return Encoded(key, outcome, original, 1, error, codec_failed, model, worker)

    store = Store(tmp_path / "store")
    summary = Summary()
    with Progress(len(names), enabled=False) as progress:
        commits = _Commits(store, candidates, {}, summary, progress)
        with caplog.at_level(logging.WARNING):
            commits.commit([result(0), result(1, kept), result(2, None, error="Permission denied")])
            commits.commit([result(0, kept),  # Ray ran that batch again
                            result(3, None, worker="w2", error="cannot load the codec: no such model", codec_failed=True),
                            result(4, None, worker="w2", error="cannot load the codec: no such model", codec_failed=True)])
            commits.commit([result(5, worker="w3", model=theirs)])
            commits.finish()
    files = {path: inode for path, inode in _walk_store_open(store).items()}
    assert sorted(files) == ["/f0.png", "/f1.png"]
    assert files["/f0.png"].kind == LATENT and store.record(files["/f0.png"].ino) == encoded.record
    assert files["/f1.png"].kind == VERBATIM and files["/f1.png"].size == 0  # an empty original: stored as it came
    assert (summary.latent, summary.kept_not_smaller, summary.failed) == (1, 1, 4)  # read, codec twice, VAE; none missing
    assert progress.files == 6
    said = [r.getMessage() for r in caplog.records]
    assert sum("w2" in line for line in said) == 1 and sum("w3" in line for line in said) == 1
    assert any("another VAE" in line and "cd" * 6 in line for line in said)
    assert any("f2.png" in line and "Permission denied" in line for line in said)

    # the first result another VAE's: nothing can be right, the import ends, naming the worker
    fresh = _Commits(store, candidates, {}, Summary(), progress)
    with pytest.raises(ModelMismatch, match="w9: it encodes with another VAE"):
        fresh.commit([result(5, worker="w9", model=theirs)])
    missing = _Commits(store, candidates, {}, Summary(), progress)
    missing.commit([result(5)])
    missing.finish()
    assert missing.summary.failed == 5 and "/f5.png" in _walk_store_open(store)
    store.close()


def _walk_store_open(store) -> dict:
    return {f"/{name.decode()}": store.inode(ino) for name, ino in store.listdir(1)}


def test_blocks_of_work_hold_whole_batches_and_spread_over_the_actors():
    groups = [[i, i + 1] for i in range(0, 20, 2)]  # ten batches of two
    small = blocks(groups, [1_000] * 20, actors=2)  # 20 files: about 20 / (4 x 2) a block
    assert [key for block in small for group in block for key in group] == list(range(20))
    assert all(sum(map(len, block)) <= 3 for block in small) and len(small) >= 8
    assert blocks(groups, [1_000] * 20, actors=1) == [groups[i:i + 2] for i in range(0, 10, 2)]
    huge = blocks(groups, [40 << 20] * 20, actors=1)  # a batch alone passes the bytes: a block of its own
    assert huge == [[group] for group in groups]
    many = blocks([[i] for i in range(10_000)], [1] * 10_000, actors=1)
    assert max(map(len, many)) == BLOCK_FILES


def test_without_ray_the_flag_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where Ray is not installed
    (tmp_path / "a.txt").write_text("x")
    assert main(["import", str(tmp_path / "a.txt"), str(tmp_path / "store"), "--ray"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"sdfs: error: {INSTALL_HINT}"
    assert not (tmp_path / "store").exists()  # refused before anything was touched


def test_the_config_file_takes_the_ray_keys(tmp_path):
    config = tmp_path / "import.toml"
    config.write_text('ray = "auto"\nray-actors = 4\nsources-shared = true\n')
    args = parse_args(["import", "src", "store", "--config", str(config)])
    assert (args.ray, args.ray_actors, args.sources_shared) == ("auto", 4, True)
    assert parse_args(["import", "src", "store", "--config", str(config), "--ray", "local"]).ray == "local"


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _still_running(noted: dict[int, int]) -> list[int]:
    alive = descendants(1)  # every process with its start time
    return [pid for pid, started in noted.items() if alive.get(pid) == started and _state(pid) != "Z"]


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except OSError:
        return "gone"
