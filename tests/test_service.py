"""sdfs as a systemd service: readiness (sd_notify) only once the mount answers,
clean stops by SIGTERM and `sdfs umount`, the --config file the unit uses, the
unit's capability set, the unit file itself and logging for the journal."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sdfs.store.lock import wait_until_free
from tests.images_factory import CANDIDATES
from tests.mounting import _stale, mounted, wait_encoded, wait_for

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "sdfs@.service"
INSTALL = ROOT / "scripts" / "install-service.sh"

needs_fuse = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse")
pytestmark = pytest.mark.timeout(300)


class NotifyListener:
    """The manager's side of sd_notify: a datagram socket the test owns. On
    READY=1 it looks at the mountpoint at once, from the receiving thread."""

    def __init__(self, path: Path, mountpoint: Path):
        self.path, self.mountpoint = path, mountpoint
        self.messages: list[str] = []
        self.ready = threading.Event()
        self.at_ready = None  # (mounted?, st_ino or the error) when READY=1 arrived
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self):
        while True:
            try:
                message = self._sock.recv(4096).decode()
            except OSError:
                return  # closed
            if "READY=1" in message.splitlines() and not self.ready.is_set():
                try:
                    self.at_ready = (os.path.ismount(self.mountpoint), os.stat(self.mountpoint).st_ino)
                except OSError as error:
                    self.at_ready = (os.path.ismount(self.mountpoint), error)
                self.ready.set()
            self.messages.append(message)

    def lines(self) -> list[str]:
        return [line for message in list(self.messages) for line in message.splitlines()]

    def close(self):
        self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


@pytest.fixture
def listener(tmp_path, monkeypatch):
    mountpoint = tmp_path / "mnt"
    listening = NotifyListener(tmp_path / "notify", mountpoint)
    monkeypatch.setenv("NOTIFY_SOCKET", str(listening.path))  # mounted() passes os.environ on
    yield listening
    listening.close()


def _assert_ready_when_answering(listener: NotifyListener, daemon) -> None:
    log = daemon.log.read_text()
    assert listener.at_ready == (True, 1), f"READY=1 came before the mount answered: {listener.at_ready}\n{log}"
    lines = listener.lines()
    ready = next(message.splitlines() for message in listener.messages if "READY=1" in message.splitlines())
    assert f"MAINPID={daemon.pid}" in ready
    assert any(line.startswith("STATUS=mounted ") for line in ready)
    assert any(line.startswith("STATUS=loading VAE ") for line in lines[: lines.index("READY=1")])


def _assert_stopped_cleanly(listener: NotifyListener, daemon, mountpoint: Path) -> None:
    assert daemon.wait(timeout=60) == 0, daemon.log.read_text()
    assert not os.path.ismount(mountpoint) and not _stale(mountpoint)
    wait_for(lambda: "STOPPING=1" in listener.lines(), 5, "STOPPING=1")
    assert "Traceback" not in daemon.log.read_text()


@needs_fuse
def test_ready_once_the_mount_answers_then_sigterm_unmounts(tmp_path, tiny_vae_dir, listener):
    store, mnt = tmp_path / "store", tmp_path / "mnt"
    with mounted(store, mnt, tiny_vae_dir, until=listener.ready.is_set, timeout=120) as daemon:
        _assert_ready_when_answering(listener, daemon)
        (mnt / "note.txt").write_bytes(b"kept")
        daemon.send_signal(signal.SIGTERM)
        _assert_stopped_cleanly(listener, daemon, mnt)
        log = daemon.log.read_text()
        assert "mounted" in log and "unmounted" in log and "stopped" in log


def _unit_setting(name: str) -> list[str]:
    return [line.split("=", 1)[1].strip() for line in UNIT.read_text().splitlines() if line.startswith(f"{name}=")]


def _as_the_unit_runs_it() -> tuple[str, ...]:
    """setpriv with the unit's CapabilityBoundingSet= and NoNewPrivileges=."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return ()
    (capabilities,) = _unit_setting("CapabilityBoundingSet")
    bounding = ",".join(["-all"] + ["+" + cap.lower().removeprefix("cap_") for cap in capabilities.split()])
    assert _unit_setting("NoNewPrivileges") == ["yes"]
    return (setpriv, f"--bounding-set={bounding}", f"--inh-caps={bounding}", "--no-new-privs")


@needs_fuse
def test_config_file_mount_and_umount_under_the_units_capabilities(tmp_path, tiny_vae_dir, listener):
    """What the unit runs: `sdfs mount --foreground --config FILE`, stopped by
    `sdfs umount --config FILE`, both with only the unit's capabilities."""
    store, mnt = tmp_path / "store", tmp_path / "mnt"
    config = tmp_path / "test.toml"
    config.write_text(
        f'store = "{store}"\nmountpoint = "{mnt}"\nmodel = "{tiny_vae_dir}"\ndevice = "cpu"\n'
        'quality = "high"\nfidelity-floor = "0:-1"\ncache-size = 64\n'
    )
    prefix = _as_the_unit_runs_it()
    with mounted(store, mnt, tiny_vae_dir, command=["mount", "--foreground", "--config", str(config)],
                 prefix=prefix, until=listener.ready.is_set, timeout=120) as daemon:
        _assert_ready_when_answering(listener, daemon)
        if prefix:  # the unit's capabilities are enough to mount, and all it has
            status = Path(f"/proc/{daemon.pid}/status").read_text()
            assert re.search(r"^CapEff:\s*0*200000$", status, re.M), status  # CAP_SYS_ADMIN (21) alone
            assert re.search(r"^NoNewPrivs:\s*1$", status, re.M)
        mounts = [line.split() for line in open("/proc/mounts")]
        assert [m[0] for m in mounts if m[1] == str(mnt)] == [f"sdfs:{store}"]  # the store and mountpoint keys
        (mnt / "a.png").write_bytes(CANDIDATES["rgb.png"]())
        wait_encoded(mnt, timeout=120)
        # model and device: the tiny VAE on the CPU (the default hub model is not
        # reachable offline); the floor from the file keeps this random-weight latent
        assert os.getxattr(mnt / "a.png", "user.sdfs.kind") == b"latent"
        assert b"(PSNR 0 dB, SSIM -1)" in os.getxattr(mnt / "a.png", "user.sdfs.verdict")
        stopped = subprocess.run([*prefix, sys.executable, "-m", "sdfs", "umount", "--config", str(config)],
                                 capture_output=True, text=True, timeout=60)
        assert stopped.returncode == 0 and stopped.stderr == "", stopped.stderr
        _assert_stopped_cleanly(listener, daemon, mnt)
    # ExecStartPre: --stale leaves a healthy or absent mount alone and succeeds
    cleared = subprocess.run([sys.executable, "-m", "sdfs", "umount", "--stale", "--config", str(config)],
                             capture_output=True, text=True, timeout=60)
    assert cleared.returncode == 0 and cleared.stderr == "", cleared.stderr


def test_install_script_and_the_unit_as_installed_verify_clean(tmp_path):
    root = tmp_path / "root"
    run = lambda *args: subprocess.run(["bash", str(INSTALL), *args], capture_output=True, text=True, timeout=120)
    first = run("photos", "--root", str(root), "--store", "/srv/photos", "--mountpoint", "/mnt/photos")
    assert first.returncode == 0, first.stderr
    assert "systemctl enable --now sdfs@photos" in first.stdout
    installed = root / "etc/systemd/system/sdfs@.service"
    assert installed.read_text() == UNIT.read_text()
    link = root / "usr/local/bin/sdfs"
    target = os.readlink(link)
    assert os.path.isabs(target) and subprocess.run([str(link), "--version"], capture_output=True).returncode == 0
    config = root / "etc/sdfs/photos.toml"
    from sdfs.cli import parse_args

    mount = parse_args(["mount", "--foreground", "--config", str(config)])
    assert (str(mount.store), str(mount.mountpoint)) == ("/srv/photos", "/mnt/photos")
    assert str(parse_args(["umount", "--config", str(config)]).mountpoint) == "/mnt/photos"
    config.write_text(config.read_text() + "# edited\n")
    again = run("photos", "--root", str(root))
    assert again.returncode == 0 and config.read_text().endswith("# edited\n")  # a config is never overwritten
    assert run("../etc", "--root", str(root)).returncode == 2

    verify = shutil.which("systemd-analyze")
    if verify is None:
        pytest.skip("systemd-analyze is not installed")
    # the unit names /usr/local/bin/sdfs and verify checks that it is there:
    # make it the link the script makes, where the machine has none
    units = tmp_path / "units"
    units.mkdir()
    shutil.copyfile(installed, units / "sdfs@test.service")
    made = not os.path.lexists("/usr/local/bin/sdfs")
    if made:
        os.symlink(target, "/usr/local/bin/sdfs")
    try:
        checked = subprocess.run([verify, "verify", str(units / "sdfs@test.service")], capture_output=True,
                                 text=True, timeout=120)
    finally:
        if made:
            os.unlink("/usr/local/bin/sdfs")
    assert checked.returncode == 0 and checked.stderr == "", checked.stderr


# each of these gives the service its own mount namespace (the FUSE mount would
# be invisible outside it), a user namespace, or breaks fusepy/CUDA
LEFT_OUT = ("ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "PrivateMounts", "PrivateUsers",
            "PrivateNetwork", "ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths", "TemporaryFileSystem",
            "BindPaths", "BindReadOnlyPaths", "MountFlags", "ProtectKernelTunables", "ProtectKernelModules",
            "ProtectKernelLogs", "ProtectControlGroups", "ProtectProc", "ProcSubset", "ProtectHostname",
            "DynamicUser", "RootDirectory", "MemoryDenyWriteExecute")


def test_unit_settings():
    lines = [line for line in UNIT.read_text().splitlines() if line and not line.startswith("#")]
    used = {line.split("=", 1)[0] for line in lines if "=" in line}
    assert not used & set(LEFT_OUT)
    assert _unit_setting("Type") == ["notify"] and _unit_setting("NotifyAccess") == ["main"]
    assert "/dev/fuse rw" in _unit_setting("DeviceAllow") and _unit_setting("DevicePolicy") == ["closed"]
    for name in ("ExecStartPre", "ExecStart", "ExecStop"):
        (command,) = _unit_setting(name)
        assert command.lstrip("-").startswith("/usr/local/bin/sdfs ") and "/etc/sdfs/%i.toml" in command


LOG_SNIPPET = """
import logging, sys
from sdfs.cli import configure_logging
configure_logging(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None)
logging.getLogger("sdfs.fs.mount").info("mounted S at M")
logging.getLogger("sdfs.fs.filesystem").info("decoded inode 7")
logging.getLogger("sdfs.fs.mount").warning("careful\\nsecond line")
logging.getLogger("sdfs").error("broken")
logging.getLogger("sdfs").debug("details")
"""


def _stderr_of(tmp_path, args, journal: bool, name="stderr"):
    """Run with stderr going to a file; JOURNAL_STREAM names that file when
    ``journal`` (as systemd names the journal's socket)."""
    err = tmp_path / name
    with open(err, "wb") as stream:
        env = {key: value for key, value in os.environ.items() if key not in ("JOURNAL_STREAM", "NOTIFY_SOCKET")}
        if journal:
            st = os.fstat(stream.fileno())
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        proc = subprocess.run([sys.executable, *args], stderr=stream, env=env, timeout=120, cwd=ROOT)
    return proc.returncode, err.read_text()


def test_journal_gets_priorities_and_no_timestamps(tmp_path):
    _, text = _stderr_of(tmp_path, ["-c", LOG_SNIPPET, "0"], journal=True)
    # lifecycle at INFO by default in the journal; per-file lines only with -v
    assert text.splitlines() == ["<6>mounted S at M", "<4>careful", "<4>second line", "<3>broken"], text
    _, text = _stderr_of(tmp_path, ["-c", LOG_SNIPPET, "2"], journal=True)
    assert "<6>INFO: decoded inode 7" in text.splitlines() and "<7>DEBUG: details" in text.splitlines()
    assert not re.search(r"\d\d:\d\d:\d\d", text)
    # a real command's error line carries the err priority
    code, text = _stderr_of(tmp_path, ["-m", "sdfs", "stats", str(tmp_path / "nothing")], journal=True)
    assert code != 0 and text.startswith("<3>sdfs: error: ") and len(text.splitlines()) == 1, text
    # so does a usage error, e.g. a typo in the service's configuration file
    (tmp_path / "typo.toml").write_text('stor = "/srv/images"\n')
    code, text = _stderr_of(tmp_path, ["-m", "sdfs", "mount", "--config", str(tmp_path / "typo.toml")], journal=True)
    assert code == 2 and text.startswith("<3>sdfs mount: error: configuration") and "unknown key 'stor'" in text, text
    assert len(text.splitlines()) == 1, text


def test_terminal_and_log_file_styles(tmp_path):
    _, text = _stderr_of(tmp_path, ["-c", LOG_SNIPPET, "0"], journal=False)
    assert text.splitlines() == ["sdfs: careful", "second line", "sdfs: broken"], text
    # stderr redirected elsewhere than the journal stream systemd named: not the journal
    env_text = subprocess.run([sys.executable, "-c", LOG_SNIPPET, "0"], capture_output=True, text=True, cwd=ROOT,
                              env={**os.environ, "JOURNAL_STREAM": "1:1"}).stderr
    assert env_text.splitlines()[0] == "sdfs: careful"
    code, text = _stderr_of(tmp_path, ["-m", "sdfs", "stats", str(tmp_path / "nothing")], journal=False)
    assert code != 0 and text.startswith("sdfs: error: ")
    # the background daemon's STORE/sdfs.log: timestamps, lifecycle at INFO
    _, text = _stderr_of(tmp_path, ["-c", LOG_SNIPPET, "0", "file"], journal=False)
    first = text.splitlines()[0]
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} sdfs\[\d+\]: INFO: mounted S at M$", first), text
    assert "decoded inode" not in text


def _slow_image(width: int = 2048, height: int = 1536) -> bytes:
    """A photo-like PNG the tiny VAE takes well over 30 s to encode on a CPU."""
    import io

    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(0)
    pixels = np.stack([(x * 255 // width), (y * 255 // height), ((x + y) * 127 // (width + height))], axis=-1)
    pixels = np.clip(pixels + rng.integers(-12, 13, pixels.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG", compress_level=1)
    return out.getvalue()


def _wait_encoding(mountpoint: Path, seconds: float = 1.0) -> None:
    """Until the encoder has had a batch in hand for ``seconds``."""
    from sdfs.fs.control import daemon_state

    wait_for(lambda: any(batch["seconds"] >= seconds for batch in daemon_state(mountpoint)["encoder"].get("encoding", ())),
             120, "an encode")


def _stopped_within(daemon, seconds: float, started: float) -> float:
    daemon.wait(timeout=60)
    took = time.monotonic() - started
    assert daemon.returncode == 0 and took < seconds, (took, daemon.log.read_text())
    log = daemon.log.read_text()
    assert "abandoned the encode of 1 file(s) in hand; 1 files stay queued" in log, log
    assert "Traceback" not in log and "terminate called" not in log, log
    return took


@needs_fuse
@pytest.mark.timeout(900)
def test_a_stop_abandons_a_long_encode_and_the_next_mount_resumes_it(tmp_path, tiny_vae_dir, listener):
    """SIGTERM (systemd) and `sdfs umount` return within seconds whatever the
    encoder is doing; the file stays pending, durably, and encodes later."""
    store, mnt = tmp_path / "store", tmp_path / "mnt"
    image = _slow_image()
    with mounted(store, mnt, tiny_vae_dir, until=listener.ready.is_set, timeout=120) as daemon:
        (mnt / "big.png").write_bytes(image)
        _wait_encoding(mnt)
        started = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        by_signal = _stopped_within(daemon, 10, started)
        _assert_stopped_cleanly(listener, daemon, mnt)

    with mounted(store, mnt, tiny_vae_dir) as daemon:
        assert os.getxattr(mnt / "big.png", "user.sdfs.kind") == b"pending"
        _wait_encoding(mnt)
        # what is being encoded, and how far along: the mount's figures, `sdfs sync` and `sdfs stats`
        from sdfs.fs.control import daemon_state

        wait_for(lambda: "tiles" in daemon_state(mnt)["encoder"]["encoding"][0], 60, "tiles done")
        (encoding,) = daemon_state(mnt)["encoder"]["encoding"]
        assert encoding["lane"] == "big images" and encoding["files"] == ["/big.png"], encoding
        assert 0 < encoding["tiles_done"] <= encoding["tiles"], encoding
        waiting = subprocess.run([sys.executable, "-m", "sdfs", "sync", str(mnt), "--timeout", "1"],
                                 capture_output=True, text=True, timeout=60)
        assert waiting.returncode == 1 and re.search(r"encoding /big\.png \((en|de)code, tile \d+ of \d+\)",
                                                     waiting.stderr), waiting.stderr
        shown = subprocess.run([sys.executable, "-m", "sdfs", "stats", str(mnt)], capture_output=True, text=True,
                               timeout=60)
        assert re.search(r"1 pending, 0 open files; encoding /big\.png \(", shown.stdout), shown.stdout
        started = time.monotonic()
        umount = subprocess.run([sys.executable, "-m", "sdfs", "umount", str(mnt)], capture_output=True, text=True,
                                timeout=60)
        assert umount.returncode == 0, umount.stderr
        assert wait_until_free(store, 0), "sdfs umount returned before the daemon let go of the store"
        by_umount = _stopped_within(daemon, 10, started)

    with mounted(store, mnt, tiny_vae_dir) as daemon:
        assert os.getxattr(mnt / "big.png", "user.sdfs.kind") == b"pending"
        started = time.monotonic()
        wait_encoded(mnt, timeout=600)
        encode = time.monotonic() - started
        assert os.getxattr(mnt / "big.png", "user.sdfs.kind") == b"latent"
        assert encode > 30, f"the encode took {encode:.0f} s: too quick to show that a stop does not wait for it"
        assert len((mnt / "big.png").read_bytes()) == (mnt / "big.png").stat().st_size
    print(f"stopped in {by_signal:.1f} s (SIGTERM) and {by_umount:.1f} s (sdfs umount); the encode takes {encode:.0f} s")
