#!/usr/bin/env python3
"""Soak test of the mounted filesystem: writers, readers and `ls` loops at once,
a checker that knows what every file must hold, then kill -9 and a remount.

Writers each own a set of names and create, overwrite (O_TRUNC; also in
bursts on one file, reopened as soon as it is closed), append, pwrite, rename
and unlink them, with images (PNG, JPEG) and other bytes, now
and then a file past the 8 MiB in-memory buffer, and fsync probes. Readers
read whole files and check them: other bytes exactly; images at their honest
length (st_size) and either the original bytes or a valid image of the same
format and size (the reconstruction). A file a writer touched during a read
is not judged (that is a race, counted apart). `ls` loops stat everything.

At the end every file is checked once more, the daemon is killed with
SIGKILL, the store is mounted again, and every file whose close() had
returned must be there, whole.

    python3 bench/soak.py --minutes 10 --writers 4 --readers 4 [--model VAE] [--out bench/out]

Prints one JSON report (also written to OUT/soak.json, with OUT/soak.png of
the daemon's memory and the operations over time); exits 1 on any mismatch,
unexpected errno, lost file, or error line or traceback in the daemon's log. Without
--model a tiny random-weight VAE is built (the mechanics are what is tested).
"""

from __future__ import annotations

import argparse
import errno
import io
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.mounting import mounted  # noqa: E402

BIG = 9 << 20  # past the write buffer's 8 MiB in memory: it spills to disk


# -- what files hold


def make_images(count: int, seed: int) -> list[tuple[bytes, str, tuple[int, int]]]:
    """Smooth synthetic pictures (gradients and blobs) as PNG and JPEG."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        w, h = int(rng.integers(40, 129)), int(rng.integers(40, 97))
        y, x = np.mgrid[0:h, 0:w]
        planes = [np.sin(x / rng.uniform(5, 30) + rng.uniform(0, 6)) + np.cos(y / rng.uniform(5, 30)) for _ in range(3)]
        pixels = ((np.stack(planes, -1) + 2) * 63 + rng.normal(0, 4, (h, w, 3))).clip(0, 255).astype(np.uint8)
        out = io.BytesIO()
        fmt = "PNG" if i % 2 else "JPEG"
        Image.fromarray(pixels).save(out, fmt, **({"quality": 85} if fmt == "JPEG" else {}))
        images.append((out.getvalue(), fmt, (w, h)))
    return images


class Expected:
    """What a path must hold. ``version`` is odd while a writer changes it."""

    def __init__(self, data: bytes, image: tuple[str, tuple[int, int]] | None):
        self.data, self.image, self.version = data, image, 0


def judge(expected: Expected, content: bytes, size: int, kind: bytes) -> str | None:
    """None if ``content`` (``size`` from fstat, ``kind`` from user.sdfs.kind)
    is what ``expected`` allows: the bytes written, or for an image that is
    now a latent, a valid image of the same format and size."""
    if len(content) != size:
        return f"read {len(content)} bytes, st_size says {size}"
    if content == expected.data:
        return None
    if expected.image is None or kind != b"latent":
        return f"{len(content)} bytes differ from the {len(expected.data)} written ({kind.decode()} file)"
    fmt, dims = expected.image
    try:
        with Image.open(io.BytesIO(content)) as im:
            im.load()
            if (im.format, im.size) != (fmt, dims):
                return f"reconstruction is {im.format} {im.size}, expected {fmt} {dims}"
    except Exception as error:  # noqa: BLE001 - any failure to decode is the finding
        return f"not a valid image ({error})"
    return None


class Registry:
    def __init__(self):
        self.lock = threading.Lock()
        self.files: dict[str, Expected] = {}

    def snapshot(self) -> list[tuple[str, Expected]]:
        with self.lock:
            return list(self.files.items())


# -- the workload


class Soak:
    def __init__(self, mnt: Path, args, images):
        self.mnt, self.args, self.images = mnt, args, images
        self.registry = Registry()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ops, self.errors, self.races = Counter(), Counter(), Counter()
        self.mismatches: list[dict] = []
        self.fsync_s: list[float] = []
        self.timeline: list[tuple[float, int]] = []  # (elapsed, operations so far)

    def count(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.ops[what] += n

    def error(self, where: str, error: OSError) -> None:
        with self.lock:
            self.errors[f"{where}:{errno.errorcode.get(error.errno, error.errno)}"] += 1

    def mismatch(self, path: str, why: str) -> None:
        with self.lock:
            self.mismatches.append({"path": path, "why": why})

    # writers

    def writer(self, n: int) -> None:
        rng = random.Random(self.args.seed * 1000 + n)
        mine: dict[str, Expected] = {}
        serial = 0
        while not self.stop.is_set():
            room = len(mine) < 12
            op = rng.choices(["create", "overwrite", "rewrite burst", "append", "pwrite", "rename", "unlink", "fsync"],
                             [3 * room, 4, 1, 2, 2, 1, 1, room])[0]
            names = [p for p, e in mine.items() if e.image is None] if op in ("append", "pwrite") else list(mine)
            if op not in ("create", "fsync") and not names:
                continue
            serial += 1
            try:
                if op in ("create", "fsync"):
                    self._write_new(rng, mine, f"w{n}-{serial}", op == "fsync")
                elif op == "overwrite":
                    self._overwrite(rng, mine, rng.choice(names), sync=rng.random() < 0.2)
                elif op == "rewrite burst":  # close, then at once O_TRUNC again (as `cp` over a file does)
                    path = rng.choice(names)
                    for _ in range(5):
                        self._overwrite(rng, mine, path, sync=False)
                        self.check(path, mine[path])  # each version, read back at once
                elif op in ("append", "pwrite"):
                    self._modify(rng, mine, rng.choice(names), op)
                elif op == "rename":
                    self._rename(rng, mine, rng.choice(names), n, serial)
                else:
                    self._unlink(mine, rng.choice(names))
                self.count(op)
            except OSError as error:
                self.error(op, error)

    def _content(self, rng: random.Random) -> tuple[bytes, tuple | None]:
        if rng.random() < 0.45:
            data, fmt, dims = rng.choice(self.images)
            return data, (fmt, dims)
        size = BIG + rng.randrange(1 << 20) if rng.random() < self.args.big_share else rng.choice(
            [0, rng.randrange(1, 4096), rng.randrange(4096, 300_000)])
        return rng.randbytes(size), None

    def _begin(self, path: str) -> Expected:
        with self.registry.lock:
            entry = self.registry.files.get(path)
            if entry is not None:
                entry.version += 1
            return entry

    def _publish(self, path: str, entry: Expected | None) -> None:
        with self.registry.lock:
            old = self.registry.files.get(path)
            if entry is None:
                self.registry.files.pop(path, None)
                if old is not None:
                    old.version += 1
            else:
                entry.version = (old.version + 1) if old is not None else 0
                entry.version += entry.version % 2  # even: stable
                self.registry.files[path] = entry

    def _write_new(self, rng, mine, name, sync: bool) -> None:
        path = str(self.mnt / name)
        data, image = self._content(rng) if not sync else (rng.randbytes(64), None)
        with open(path, "xb") as f:
            f.write(data)
            if sync:
                self._fsync(f)
        mine[path] = Expected(data, image)
        self._publish(path, mine[path])

    def _fsync(self, f) -> None:
        f.flush()
        started = time.perf_counter()
        os.fsync(f.fileno())
        with self.lock:
            self.fsync_s.append(time.perf_counter() - started)

    def _overwrite(self, rng, mine, path, sync: bool) -> None:
        data, image = self._content(rng)
        self._begin(path)
        try:
            with open(path, "wb") as f:  # O_TRUNC
                f.write(data)
                if sync:
                    self._fsync(f)
        except OSError:
            mine.pop(path)
            self._publish(path, None)  # unknown now: not judged
            raise
        mine[path] = Expected(data, image)
        self._publish(path, mine[path])

    def _modify(self, rng, mine, path, op) -> None:
        old = mine[path].data
        extra = rng.randbytes(rng.randrange(1, 70_000))
        self._begin(path)
        try:
            if op == "append":
                with open(path, "ab") as f:
                    f.write(extra)
                data = old + extra
            else:
                offset = rng.randrange(0, len(old) + 1)
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.pwrite(fd, extra, offset)
                finally:
                    os.close(fd)
                data = old[:offset] + extra + old[offset + len(extra) :]
        except OSError:
            mine.pop(path)
            self._publish(path, None)
            raise
        mine[path] = Expected(data, None)
        self._publish(path, mine[path])

    def _rename(self, rng, mine, path, n, serial) -> None:
        others = [p for p in mine if p != path]
        target = rng.choice(others) if others and rng.random() < 0.3 else str(self.mnt / f"w{n}-r{serial}")
        self._begin(path)
        self._begin(target)
        os.rename(path, target)
        entry = mine.pop(path)
        mine.pop(target, None)
        mine[target] = entry
        self._publish(path, None)
        self._publish(target, Expected(entry.data, entry.image))

    def _unlink(self, mine, path) -> None:
        self._begin(path)
        os.unlink(path)
        mine.pop(path)
        self._publish(path, None)

    # readers and ls

    def reader(self, n: int) -> None:
        rng = random.Random(self.args.seed * 7000 + n)
        while not self.stop.is_set():
            files = self.registry.snapshot()
            if not files:
                time.sleep(0.05)
                continue
            path, entry = rng.choice(files)
            self.check(path, entry)
            time.sleep(0.01)  # paced, so that writers get their share of one daemon

    def check(self, path: str, entry: Expected) -> bool:
        before = entry.version
        if before % 2:
            self.races["read while written"] += 1
            return True
        try:
            content, size, size_after, kind = read_whole(path)
        except OSError as error:
            if entry.version != before or self.registry.files.get(path) is not entry:
                self.races["file changed during read"] += 1
                return True
            self.error("read", error)
            return False
        if entry.version != before or self.registry.files.get(path) is not entry:
            self.races["file changed during read"] += 1
            return True
        self.count("read")
        why = judge(entry, content, size, kind) or (None if size == size_after else f"st_size {size} then {size_after}")
        if why:
            self.mismatch(path, why)
        return why is None

    def lister(self) -> None:
        while not self.stop.is_set():
            try:
                entries = list(os.scandir(self.mnt))
            except OSError as error:
                self.error("ls", error)
                time.sleep(1)
                continue
            for entry in entries:
                try:
                    entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    self.races["listed, then gone"] += 1
                except OSError as error:
                    self.error("stat", error)
            self.count("ls")
            time.sleep(0.2)


# -- running it


def rss_mb(pid: int) -> tuple[float, float] | None:
    """Resident memory of the daemon: all of it, and the anonymous part (its
    heap; the rest is mostly LMDB's memory map, pages the kernel can drop)."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["RssAnon"].split()[0]) / 1024
    except (OSError, KeyError):
        return None


def read_whole(path: str) -> tuple[bytes, int, int, bytes]:
    """Content, st_size before and after the read, and user.sdfs.kind, all through one descriptor."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        content = f.read()
        return content, size, os.fstat(f.fileno()).st_size, os.getxattr(f.fileno(), "user.sdfs.kind")


def verify_all(soak: Soak) -> dict:
    lost, wrong = [], []
    for path, entry in soak.registry.snapshot():
        if not os.path.exists(path):
            lost.append(path)
            continue
        content, size, _, kind = read_whole(path)
        why = judge(entry, content, size, kind)
        if why:
            wrong.append({"path": path, "why": why})
    return {"files": len(soak.registry.files), "lost": lost, "mismatches": wrong}


def plot(report: dict, rss: list[tuple[float, float, float]], timeline: list[tuple[float, int]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    top.plot([r[0] for r in rss], [r[1] for r in rss], label="resident, all")
    top.plot([r[0] for r in rss], [r[2] for r in rss], label="anonymous (heap)")
    top.set_ylabel("daemon memory (MB)")
    top.legend(loc="lower right")
    top.set_title(f"sdfs soak: {report['writers']} writers, {report['readers']} readers, "
                  f"{report['seconds']:.0f} s, {len(report['mismatches'])} mismatches")
    bottom.plot([t for t, _ in timeline], [n for _, n in timeline])
    bottom.set_ylabel("operations done")
    bottom.set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float)
    length.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--big-share", type=float, default=0.02, help="share of new contents past 8 MiB")
    parser.add_argument("--model", help="VAE to mount with (default: a tiny random one)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args(argv)
    seconds = args.minutes * 60 if args.minutes else args.seconds
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="sdfs-soak-"))
    try:
        if args.model is None:
            from sdfs.codec.random_models import save_random_vae

            args.model = str(save_random_vae(work / "vae"))
        return run(args, seconds, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args, seconds: float, work: Path) -> int:
    store, mnt = work / "store", work / "mnt"
    soak = Soak(mnt, args, make_images(16, args.seed))
    rss: list[tuple[float, float, float]] = []  # (elapsed, total MB, anonymous MB)
    with mounted(store, mnt, Path(args.model), leave_stale=True) as daemon:
        threads = [threading.Thread(target=soak.writer, args=(i,), name=f"writer-{i}") for i in range(args.writers)]
        threads += [threading.Thread(target=soak.reader, args=(i,), name=f"reader-{i}") for i in range(args.readers)]
        threads += [threading.Thread(target=soak.lister, name="ls")]
        started = shown = time.monotonic()
        for t in threads:
            t.start()
        while (elapsed := time.monotonic() - started) < seconds:
            memory = rss_mb(daemon.pid)
            if memory is not None:
                rss.append((elapsed, *memory))
            soak.timeline.append((elapsed, sum(soak.ops.values())))
            if time.monotonic() - shown >= 30 and rss:
                shown = time.monotonic()
                print(f"soak: {elapsed:4.0f} s of {seconds:.0f}, {sum(soak.ops.values()):,} operations, "
                      f"{len(soak.mismatches)} mismatches, RSS {rss[-1][1]:.0f} MB", file=sys.stderr, flush=True)
            time.sleep(1)
        soak.stop.set()
        for t in threads:
            t.join(timeout=300)
        final = verify_all(soak)  # every file once more, through the running mount
        rss.append((time.monotonic() - started, *(rss_mb(daemon.pid) or (0, 0))))
        pending = json.loads(os.getxattr(mnt, "user.sdfs.daemon"))["pending"]
        os.kill(daemon.pid, signal.SIGKILL)  # with the queue still in hand
        daemon.wait()
        log_text = daemon.log.read_text(errors="replace")
    try:
        with mounted(store, mnt, Path(args.model)) as again:
            after = verify_all(soak)
            log_text += again.log.read_text(errors="replace")
    except RuntimeError as error:  # the mount would not come back: everything counts as lost
        after = {"files": len(soak.registry.files), "lost": [p for p, _ in soak.registry.snapshot()],
                 "mismatches": [], "remount_error": str(error)[-500:]}
    report = {
        "seconds": round(seconds, 1), "writers": args.writers, "readers": args.readers, "model": args.model,
        "operations": dict(soak.ops), "errors_by_errno": dict(soak.errors), "races_not_judged": dict(soak.races),
        "mismatches": soak.mismatches[:20], "mismatch_count": len(soak.mismatches),
        "final_check": {"files": final["files"], "lost": len(final["lost"]), "mismatches": final["mismatches"][:20]},
        "fsync_ms": {"count": len(soak.fsync_s),
                     "median": round(1000 * float(np.median(soak.fsync_s)), 1) if soak.fsync_s else None,
                     "max": round(1000 * max(soak.fsync_s), 1) if soak.fsync_s else None},
        "daemon_rss_mb": {"start": round(rss[0][1]), "peak": round(max(r[1] for r in rss)), "end": round(rss[-1][1]),
                          "anonymous_start": round(rss[0][2]), "anonymous_peak": round(max(r[2] for r in rss)),
                          "anonymous_end": round(rss[-1][2])} if rss else {},
        "pending_at_kill": pending,
        "after_kill_9": {"files": after["files"], "lost": len(after["lost"]), "lost_paths": after["lost"][:20],
                         "mismatches": after["mismatches"][:20], "remount_error": after.get("remount_error")},
        "daemon_tracebacks": log_text.count("Traceback"),
        "daemon_error_lines": [line for line in log_text.splitlines() if "ERROR:" in line][:20],
    }
    (args.out / "soak.json").write_text(json.dumps(report, indent=2))
    plot(report, rss, soak.timeline, args.out / "soak.png")
    print(json.dumps(report, indent=2))
    bad = (report["mismatch_count"] or report["errors_by_errno"] or final["lost"] or final["mismatches"]
           or after["lost"] or after["mismatches"] or report["daemon_tracebacks"] or report["daemon_error_lines"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
