"""What a new user meets first (issue 12), one test per point, asserting on
what the user sees: the message, the exit code, the files left behind."""

import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from sdfs.cli import main
from sdfs.store.lock import StoreLock
from tests.conftest import KODAK, KODAK_INDICES
from tests.mounting import FUSERMOUNT, wait_for

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
needs_fuse = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse")


def sdfs(*args, env=None, timeout=180):
    return subprocess.run([sys.executable, "-m", "sdfs", *map(str, args)], capture_output=True, text=True,
                          env=env or ENV, timeout=timeout)


def one_line(proc_or_text) -> str:
    text = proc_or_text if isinstance(proc_or_text, str) else proc_or_text.stderr
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


# -- 1. the tests need nothing beside the repository


def test_1_a_copy_with_nothing_beside_it_collects_and_reads_its_images(tmp_path):
    assert KODAK.is_relative_to(REPO) and len(KODAK_INDICES) >= 8
    assert sum(p.stat().st_size for p in KODAK.glob("*.png")) < 2_000_000  # a modest addition
    outside = "/".join(("shared", "bench"))  # spelt apart so this file does not match itself
    for path in REPO.joinpath("tests").glob("*.py"):
        assert outside not in path.read_text(), path  # no test reads ../shared
    clone = tmp_path / "clone"
    for part in ("sdfs", "tests", "bench", "pyproject.toml"):
        source = REPO / part
        if source.is_dir():
            shutil.copytree(source, clone / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, clone / part)
    assert sorted(os.listdir(tmp_path)) == ["clone"]  # no ../shared beside the copy
    env = {**ENV, "PYTHONPATH": str(clone)}
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
                               cwd=clone, env=env, capture_output=True, text=True, timeout=300)
    assert collected.returncode == 0, collected.stdout + collected.stderr
    assert re.fullmatch(r"\d+ tests collected in [\d.]+s", collected.stdout.strip().splitlines()[-1])
    assert "Interrupted" not in collected.stdout and "ERROR" not in collected.stdout
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_guard.py"],
                         cwd=clone, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "skipped" not in run.stdout, run.stdout


# -- 2. a non-empty mountpoint is refused before anything loads or is created


def test_2_a_non_empty_mountpoint_is_refused_at_once_and_leaves_nothing(tmp_path):
    mnt = tmp_path / "photos"
    mnt.mkdir()
    (mnt / "holiday.jpg").write_bytes(b"x")
    store = tmp_path / "store"
    started = time.monotonic()
    # a model that cannot load: the mountpoint's problem must be the one reported
    refused = sdfs("mount", store, mnt, "--model", tmp_path / "no-such-model")
    assert refused.returncode == 1
    line = one_line(refused)
    assert line == (f"sdfs: error: cannot mount on {mnt}: the folder is not empty (1 entry: holiday.jpg); "
                    "mount on an empty folder, as fusermount requires, or move those out first")
    assert time.monotonic() - started < 60
    assert not store.exists() and os.listdir(mnt) == ["holiday.jpg"]


# -- 3. `sdfs sync`'s estimate falls, and comes early when the daemon can tell


def _sync_lines(monkeypatch, capsys, state_at):
    from sdfs.fs import control

    clock = [0.0]
    monkeypatch.setattr(control, "_clock", lambda: clock[0])
    monkeypatch.setattr(control, "_sleep", lambda seconds: clock.__setitem__(0, clock[0] + seconds))
    monkeypatch.setattr(control, "store_of", lambda mountpoint: Path("/store"))
    monkeypatch.setattr(control, "_flush", lambda mountpoint: None)  # nothing behind this pretend mount
    monkeypatch.setattr(control, "daemon_state", lambda mountpoint: state_at(clock[0]))
    assert control.sync(Path("/mnt")) == 0
    return capsys.readouterr().err.splitlines()


def _seconds(text: str) -> int:
    parts = dict((unit, int(value)) for value, unit in re.findall(r"(\d+)([hms])", text))
    return parts.get("h", 0) * 3600 + parts.get("m", 0) * 60 + parts.get("s", 0)


BATCH, BATCH_SECONDS, WATCHED_FROM = 8, 300.0, 50.0  # three batches; sync starts 50 s into the first


def _encoder_at(t: float, daemon_knows_pace: bool) -> dict:
    done_batches = min(3, int((t + WATCHED_FROM) // BATCH_SECONDS))
    encoder = {"finished": {"keep latent": BATCH * done_batches}, "deferred_open_files": 0, "running": True}
    if daemon_knows_pace:
        encoder.update(seconds_per_file=BATCH_SECONDS / BATCH, batch_seconds=(t + WATCHED_FROM) % BATCH_SECONDS)
    return {"pending": 3 * BATCH - BATCH * done_batches, "encoder": encoder}


@pytest.mark.parametrize("daemon_knows_pace", [False, True])
def test_3_sync_estimate_counts_down_instead_of_rising(monkeypatch, capsys, daemon_knows_pace):
    lines = _sync_lines(monkeypatch, capsys, lambda t: _encoder_at(t, daemon_knows_pace))
    assert lines[-1].startswith("sdfs sync: 24 pending files encoded in 850.")
    shown = []  # (seconds since sync started, "about"/"at least", seconds left shown)
    for index, line in enumerate(lines[:-1]):  # one line every 10 s (not a terminal)
        found = re.search(r"pending, (about|at least) (\S+) left", line)
        if found:
            shown.append((index * 10, found.group(1), _seconds(found.group(2))))
        else:
            assert "time left known once the first files are done" in line or line.endswith("finishing"), line
    truth = 3 * BATCH_SECONDS - WATCHED_FROM
    exact = [(t, left) for t, kind, left in shown if kind == "about"]
    if daemon_knows_pace:
        assert shown[0][:2] == (0, "about")  # from the first line, not after the first batch
    else:
        assert not any(t < BATCH_SECONDS - WATCHED_FROM for t, _, _ in shown)  # nothing known before a batch ends
        assert all(left <= truth - t + 1 for t, kind, left in shown if kind == "at least")
        assert exact[0][0] >= 2 * BATCH_SECONDS - WATCHED_FROM
    assert len(exact) >= 25
    for (t0, left0), (t1, left1) in zip(exact, exact[1:]):
        assert left1 <= left0, (t0, left0, t1, left1)  # never rises
    for t, left in exact:
        assert abs(left - (truth - t)) <= 0.05 * truth, (t, left)


# -- 4. "not smaller" is not "below the fidelity floor"


def test_4_kept_because_not_smaller_is_counted_as_such(tmp_path, tiny_vae_dir, capsys):
    small = tmp_path / "src" / "dot.png"
    small.parent.mkdir()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(small)  # ~70 bytes: no record can beat that
    store = tmp_path / "store"
    assert main(["import", str(small.parent), str(store), "--model", str(tiny_vae_dir), "--device", "cpu",
                 "--fidelity-floor", "0:-1"]) == 0  # the floor off
    summary = capsys.readouterr().out
    assert "0 as latents, 1 kept original (the latent was not smaller), 0 verbatim" in summary
    assert "below the fidelity floor" not in summary
    assert main(["stats", str(store), "--json"]) == 0
    verdicts = json.loads(capsys.readouterr().out)["verdicts"]
    assert verdicts == {"latent": 0, "kept_original_below_floor": 0, "kept_original_not_smaller": 1,
                        "verbatim_not_a_candidate": 0}
    assert main(["stats", str(store)]) == 0
    assert ("0 kept original (below the fidelity floor); 1 kept original (the latent was not smaller)"
            in capsys.readouterr().out)


# -- 5. the log names files by their final name: the encoder's side (see the report)


# -- 6 and 7. a failed or refused mount: its exit code, one line, nothing left behind


@needs_fuse
@pytest.mark.timeout(600)
def test_5_the_log_names_a_file_by_its_final_name(tmp_path, tiny_vae, caplog):
    """rsync writes `.photo.png.XXXXXX`, closes it, then renames it; a folder
    can move while its files wait. The verdict line names where the file is."""
    import logging

    from tests.images_factory import CANDIDATES
    from tests.test_integrity import _filesystem, _put

    fs = _filesystem(tmp_path, tiny_vae, start=False)
    try:
        image = CANDIDATES["rgb.png"]()
        _put(fs, "/.photo.png.5nttZp", image)
        fs.rename("/.photo.png.5nttZp", "/photo.png")
        fs.mkdir("/album", 0o755)
        _put(fs, "/album/a.png", image)
        fs.rename("/album", "/trip")
        with caplog.at_level(logging.INFO, logger="sdfs.fs.encoder"):
            fs.encoder.start()
            assert fs.encoder.wait_idle(timeout=120)
        lines = [r.getMessage() for r in caplog.records if "keep latent" in r.getMessage()]
        assert any(line.startswith("/photo.png: ") for line in lines), lines
        assert any(line.startswith("/trip/a.png: ") for line in lines), lines
        assert not any("5nttZp" in line or "/album/" in line for line in lines), lines
    finally:
        fs.encoder.stop()
        fs.store.close()


def test_6_7_failed_and_refused_mounts_leave_nothing_behind(tmp_path, tiny_vae_dir):
    # 6: a model that cannot load exits 4, as `sdfs encode` does, also in the background;
    # 7: and the store folder and mountpoint it made are gone again
    fresh = tmp_path / "fresh"
    failed = sdfs("mount", fresh / "store", fresh / "mnt", "--model", tmp_path / "missing-model", "--device", "cpu")
    assert failed.returncode == 4
    assert "missing-model" in one_line(failed)
    assert not fresh.exists()

    store, mnt, other = tmp_path / "store", tmp_path / "mnt", tmp_path / "second"
    try:
        up = sdfs("mount", store, mnt, "--model", tiny_vae_dir, "--device", "cpu")
        assert up.returncode == 0 and os.path.ismount(mnt), up.stderr
        log_before = (store / "sdfs.log").read_bytes()
        # 7: a second mount of the store is refused in the caller's terminal, not in the running mount's log
        second = sdfs("mount", store, other, "--model", tiny_vae_dir, "--device", "cpu")
        assert second.returncode == 1
        assert re.fullmatch(rf"sdfs: error: store {store} is in use by pid \d+ \(the mount at {mnt}\); "
                            rf"unmount it first: sdfs umount {mnt}", one_line(second))
        assert not other.exists() and (store / "sdfs.log").read_bytes() == log_before
        down = sdfs("umount", mnt)
        assert down.returncode == 0, down.stderr
        wait_for(lambda: not os.path.ismount(mnt), 60, "the unmount")
    finally:
        if os.path.ismount(mnt):
            subprocess.run([FUSERMOUNT, "-u", "-z", str(mnt)])
    # 7: a failed mount of an existing store leaves its lock naming no process
    wait_for(lambda: (store / "sdfs.lock").stat().st_size == 0, 60, "the daemon to release its lock")
    failed = sdfs("mount", store, mnt, "--model", tmp_path / "missing-model", "--device", "cpu")
    assert failed.returncode == 4 and not os.path.ismount(mnt)
    assert (store / "sdfs.lock").read_bytes() == b"" and mnt.is_dir()  # the mountpoint was there before


# -- 8. four small ones


def test_8a_umount_of_what_is_not_mounted_says_so(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    not_mounted = sdfs("umount", folder)
    assert not_mounted.returncode == 1
    assert one_line(not_mounted) == (f"sdfs: error: {folder} is not mounted; nothing to unmount "
                                     "(`findmnt -t fuse.sdfs` lists sdfs mounts)")
    other_kind = sdfs("umount", "/proc")
    assert other_kind.returncode == 1 and "is a proc mount, not an sdfs one" in one_line(other_kind)
    assert "Invalid argument" not in not_mounted.stderr + other_kind.stderr
    missing = sdfs("umount", tmp_path / "nowhere")
    assert missing.returncode == 1 and "no such folder" in one_line(missing)


def test_8b_progress_rates_of_a_slow_job_are_not_zero(monkeypatch):
    from sdfs import progress as progress_module

    clock = [0.0]

    class FakeTime:
        @staticmethod
        def monotonic():
            return clock[0]

    monkeypatch.setattr(progress_module, "time", FakeTime)
    stream = io.StringIO()
    with progress_module.Progress(10, 10 * 600_000, what="importing", stream=stream, interval=10) as progress:
        for _ in range(2):  # a photo of 600 kB every 25 s, as the full VAE on two CPU cores
            clock[0] += 25
            progress.advance(files=1, nbytes=600_000)
    line = stream.getvalue().splitlines()[0]
    assert line == "sdfs: importing: 1/10 files, 24.0 kB/s, 25.0 s a file, ETA 3m45s"
    fast = progress_module.Progress(100, 100 * 10**6, stream=io.StringIO()).__enter__()
    clock[0] += 1
    fast.advance(files=50, nbytes=50 * 10**6)
    assert fast.line() == "50/100 files, 50.0 MB/s, 50.0 files/s, ETA 1s"


def test_8c_decode_refuses_an_output_name_of_another_format(tmp_path, tiny_vae_dir, capsys):
    source, record = tmp_path / "a.png", tmp_path / "a.sdfs"
    Image.open(KODAK / "kodim23.png").crop((0, 0, 64, 48)).save(source)
    model = ["--model", str(tiny_vae_dir), "--device", "cpu"]
    assert main(["encode", str(source), str(record), *model, "--fidelity-floor", "0:-1"]) == 0
    capsys.readouterr()
    assert main(["decode", str(record), str(tmp_path / "out.jpg"), *model]) == 2
    assert one_line(capsys.readouterr().err) == (
        f"sdfs: error: {record} decodes to a PNG image (the original's format), not JPEG: "
        "name the output out.png, or convert it afterwards")
    assert not (tmp_path / "out.jpg").exists()
    assert main(["decode", str(record), str(tmp_path / "out.png"), *model]) == 0
    assert Image.open(tmp_path / "out.png").format == "PNG"


def test_8d_in_use_by_an_import_says_wait_not_unmount(tmp_path, tiny_vae_dir, capsys):
    source = tmp_path / "a.txt"
    source.write_text("x")
    store = tmp_path / "store"
    with StoreLock(store, "sdfs import"):
        assert main(["import", str(source), str(store), "--model", str(tiny_vae_dir)]) == 1
    line = one_line(capsys.readouterr().err)
    assert re.fullmatch(rf"sdfs: error: store {store} is in use by pid {os.getpid()} \(sdfs import\); "
                        r"wait for it to finish, or stop it, then try again", line)
    assert "unmount" not in line


# -- 9. fsck --decode beside a busy mount


def test_9_fsck_decodes_record_by_record_on_a_cpu_and_says_when_a_mount_is_busy(tmp_path, tiny_vae_dir, monkeypatch,
                                                                                capsys):
    from sdfs.codec.codec import Codec
    from sdfs.fs import control

    src = tmp_path / "src"
    src.mkdir()
    for index in KODAK_INDICES[:3]:
        Image.open(KODAK / f"kodim{index:02d}.png").crop((0, 0, 48, 32)).save(src / f"k{index}.png")
    store = tmp_path / "store"
    model = ["--model", str(tiny_vae_dir), "--device", "cpu"]
    assert main(["import", str(src), str(store), *model, "--quality", "high", "--fidelity-floor", "0:-1"]) == 0
    batches = []
    decode_many = Codec.decode_many
    monkeypatch.setattr(Codec, "decode_many", lambda self, records: batches.append(len(records)) or decode_many(self, records))
    assert main(["fsck", str(store), "--decode", *model]) == 0
    assert batches == [1, 1, 1]  # the progress line moves with every record (the VAE batches 1 on a CPU)

    # beside a mount still encoding, both share the processor: said once, with what to do
    monkeypatch.setattr(control, "mount_of", lambda store: Path("/mnt/images"))
    monkeypatch.setattr(control, "daemon_state", lambda mountpoint: {"pending": 13})
    capsys.readouterr()
    assert main(["fsck", str(store), "--decode", *model]) == 0
    assert capsys.readouterr().err.strip() == (
        "sdfs: note: the mount at /mnt/images is still encoding 13 files; decoding beside it shares the "
        "processor and both run slower (`sdfs sync /mnt/images` first to wait for it)")


# -- 10. no libfuse: said at mount time, with the package to install


def test_10_missing_libfuse_names_the_package(tmp_path, monkeypatch, capsys):
    import ctypes.util

    real = ctypes.util.find_library
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None if name == "fuse3" else real(name))
    monkeypatch.delenv("FUSE_LIBRARY_PATH", raising=False)
    store, mnt = tmp_path / "store", tmp_path / "mnt"
    assert main(["mount", str(store), str(mnt), "--model", str(tmp_path / "unused")]) == 1
    line = one_line(capsys.readouterr().err)
    assert line.startswith("sdfs: error: libfuse 3 (libfuse.so.3, which sdfs mount needs) is not installed; "
                           "install the fuse3 package (Debian")
    assert not store.exists() and not mnt.exists()
