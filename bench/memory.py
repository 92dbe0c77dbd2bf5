#!/usr/bin/env python3
"""The daemon's memory while big files pass through a real mount.

Three steps, each with `dd` on the mount and the same `dd` on a plain folder
of the same disk (the time ratio is the figure to compare):

1. write SIZE bytes of random data in (dd bs=1M, conv=fsync), then read them
   back (the checksum must equal the source's);
2. write one byte at offset 2 GiB + 1 of a new file and close it (a sparse file);
3. delete both, and wait for the daemon to settle.

The daemon's memory comes from /proc/PID/status: VmRSS sampled every 20 ms,
and VmHWM (peak) reset before each step through /proc/PID/clear_refs. Idle is
VmRSS once the mount is up and quiet. Prints one JSON report (and writes it
to OUT/memory.json with OUT/memory.png, RSS over time).

    python3 bench/memory.py [--size-gib 4] [--model VAE] [--work DIR] [--out bench/out]

Without --model a tiny random-weight VAE is built: the subject is how bytes
move through the daemon, not the codec.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.mounting import mounted  # noqa: E402

SPARSE_OFFSET = (2 << 30) + 1
MiB = 1 << 20


def status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            fields[name] = int(value.split()[0]) << 10
    return fields


class Sampler:
    """VmRSS of one process every ``every`` seconds, in a thread."""

    def __init__(self, pid: int, every: float = 0.02):
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, int, int]] = []  # (time, VmRSS, RssAnon)
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                s = status(self.pid)
            except OSError:
                return
            self.samples.append((time.monotonic() - self.started, s["VmRSS"], s["RssAnon"]))

    def peak_since(self, since: float) -> int:
        return max((rss for t, rss, _ in self.samples if t >= since), default=0)

    def now(self) -> float:
        return time.monotonic() - self.started

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def reset_peak(pid: int) -> None:
    """VmHWM := VmRSS (Linux 4.0+, as root or the process's owner)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def dd(*args: str) -> float:
    started = time.monotonic()
    subprocess.run(["dd", *args, "status=none"], check=True)
    return time.monotonic() - started


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * MiB):
            digest.update(block)
    return digest.hexdigest()


def drop_caches() -> None:
    """So the reads measure the daemon (mount) and the disk (plain), not the page cache."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3")
    except OSError:
        pass


def settle(pid: int, seconds: float = 2.0) -> int:
    """VmRSS once it stops falling."""
    last = status(pid)["VmRSS"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(seconds)
        now = status(pid)["VmRSS"]
        if now >= last - MiB:
            return now
        last = now
    return last


def measure(work: Path, model: Path, size: int, plain_too: bool = True) -> dict:
    """Runs the three steps; returns the report (bytes and seconds).
    ``plain_too``: time the same dd on a plain folder beside the store."""
    source = work / "source.bin"
    with open(source, "wb") as f:  # random: nothing compresses, the encoder cannot mistake it for an image
        left = size
        while left:
            f.write(os.urandom(min(left, 16 * MiB)))
            left -= min(left, 16 * MiB)
    source_sum = sha256(source)
    plain = work / "plain"
    plain.mkdir()
    store, mnt = work / "store", work / "mnt"
    report: dict = {"size": size, "sparse_offset": SPARSE_OFFSET}
    with mounted(store, mnt, model) as daemon:
        pid = daemon.pid
        sampler = Sampler(pid)
        try:
            time.sleep(1)
            idle = report["idle_rss"] = settle(pid)

            def step(name: str, action) -> None:
                reset_peak(pid)
                since = sampler.now()
                result = action()
                report[name] = {
                    **result,
                    "peak_rss": max(status(pid)["VmHWM"], sampler.peak_since(since)),
                    "rss_after": status(pid)["VmRSS"],
                }
                report[name]["peak_over_idle"] = report[name]["peak_rss"] - idle

            def copy_in_and_out() -> dict:
                t_mount = dd(f"if={source}", f"of={mnt / 'big.bin'}", "bs=1M", "conv=fsync")
                drop_caches()
                r_mount = dd(f"if={mnt / 'big.bin'}", "of=/dev/null", "bs=1M")
                times = {"write_s": t_mount, "read_s": r_mount}
                if plain_too:
                    times["write_plain_s"] = dd(f"if={source}", f"of={plain / 'big.bin'}", "bs=1M", "conv=fsync")
                    drop_caches()
                    times["read_plain_s"] = dd(f"if={plain / 'big.bin'}", "of=/dev/null", "bs=1M")
                    (plain / "big.bin").unlink()
                return {**times, "checksum_equal": sha256(mnt / "big.bin") == source_sum,
                        "st_size": os.stat(mnt / "big.bin").st_size}

            def sparse_byte() -> dict:
                one = work / "one-byte"
                one.write_bytes(b"x")
                times = {"write_s": dd(f"if={one}", f"of={mnt / 'sparse.bin'}", "bs=1", f"seek={SPARSE_OFFSET}",
                                       "conv=fsync")}
                if plain_too:
                    times["write_plain_s"] = dd(f"if={one}", f"of={plain / 'sparse.bin'}", "bs=1",
                                                f"seek={SPARSE_OFFSET}", "conv=fsync")
                with open(mnt / "sparse.bin", "rb") as f:
                    f.seek(SPARSE_OFFSET - 1)
                    tail = f.read()
                return {**times, "st_size": os.stat(mnt / "sparse.bin").st_size, "tail_right": tail == b"\0x"}

            step("copy_in_out", copy_in_and_out)
            step("sparse_byte", sparse_byte)
            subprocess.run([sys.executable, "-m", "sdfs", "sync", str(mnt)], capture_output=True, timeout=600)
            (mnt / "big.bin").unlink()
            (mnt / "sparse.bin").unlink()
            report["rss_after_delete"] = settle(pid)
            report["after_delete_over_idle"] = report["rss_after_delete"] - idle
            report["daemon_log_tracebacks"] = daemon.log.read_text(errors="replace").count("Traceback")
        finally:
            sampler.stop()
    report["rss_samples"] = sampler.samples
    for r in (report["copy_in_out"], report["sparse_byte"]):
        if "write_plain_s" in r:
            r["write_ratio"] = r["write_s"] / max(r["write_plain_s"], 1e-6)
        if "read_plain_s" in r:
            r["read_ratio"] = r["read_s"] / max(r["read_plain_s"], 1e-6)
    return report


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = report["rss_samples"]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot([s[0] for s in samples], [s[1] / MiB for s in samples], label="VmRSS")
    ax.plot([s[0] for s in samples], [s[2] / MiB for s in samples], label="RssAnon (heap)")
    ax.axhline(report["idle_rss"] / MiB, color="grey", linestyle=":", label="idle")
    ax.axhline((report["idle_rss"] + (256 << 20)) / MiB, color="red", linestyle="--", label="idle + 256 MiB")
    ax.set_xlabel("seconds")
    ax.set_ylabel("MiB")
    ax.set_title(f"sdfs daemon memory: {report['size'] / (1 << 30):.0f} GiB in and out, 1 byte at 2 GiB+1, delete")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def summary(report: dict) -> dict:
    """The report without the samples, sizes in MiB."""
    out = {k: v for k, v in report.items() if k != "rss_samples"}
    for key, value in list(out.items()):
        if isinstance(value, dict):
            out[key] = {k: (round(v / MiB, 1) if k.startswith(("peak", "rss")) else round(v, 3) if isinstance(v, float)
                            else v) for k, v in value.items()}
        elif key.startswith(("idle", "rss", "after")):
            out[key] = round(value / MiB, 1)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gib", type=float, default=4)
    parser.add_argument("--model", help="a diffusers VAE folder (default: a tiny random one)")
    parser.add_argument("--work", help="a folder on the disk to measure (default: a temporary one)")
    parser.add_argument("--out", default="bench/out")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="sdfs-memory-", dir=args.work))
    try:
        model = args.model
        if model is None:
            from sdfs.codec.random_models import save_random_vae

            model = save_random_vae(work / "vae")
        report = measure(work, Path(model), int(args.size_gib * (1 << 30)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(report, out / "memory.png")
    result = summary(report)
    (out / "memory.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
