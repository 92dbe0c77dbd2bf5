#!/usr/bin/env python3
"""The benchmark of record for "speed of a real filesystem" (issue 9): sdfs
next to its ceiling and next to a plain folder, in one run.

Three targets, measured side by side:

- sdfs: mounted for real (tests/mounting.py), a tiny random-weight VAE;
- ceiling: bench/ceiling_fs.py, a minimal in-memory filesystem on the same
  binding (mfusepy over libfuse 3): what Python and FUSE cost at best;
- plain: a folder on the same disk as sdfs's store.

Rows: create N one-byte files (Python open/write/close), `find DIR -type f |
wc -l`, `ls -l`, os.stat of each, `rm -rf`; write 256 MiB of random bytes
(dd bs=1M conv=fsync), read it the first time (caches dropped) and the second
time (dd bs=1M); re-read a cached latent image (a 1024x1024 PNG of gradients,
encoded to a latent by sdfs, read once before timing; the ceiling and plain
serve the same PNG as it is); `cp -r` and `rsync -a` of tests/data/kodak (on
sdfs, `sdfs sync` after each, untimed: the encoder must not steal a core from
the next step). The machine is shared and noisy, so the targets are
interleaved step by step (their order rotating each repetition) and each row
reports medians and the ratios sdfs/ceiling and sdfs/plain.

    sudo python3 bench/fs_bench.py [--files 10000] [--repeat 3] [--work DIR] [--out bench/results]

Root is needed to drop the page cache before first reads. Writes
OUT/fs_bench.json and OUT/fs_bench.png, prints the table; progress on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes.util
import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# the daemon and `sdfs sync` run `python -m sdfs`: this tree's sdfs, not an installed one
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

from tests.mounting import FUSERMOUNT, _unmount, mounted, wait_for  # noqa: E402

TARGETS = ("sdfs", "ceiling", "plain")
BIG = 256 << 20
IMAGES = ROOT / "tests" / "data" / "kodak"
LATENT_NAME = "smooth.png"
REREADS = 10  # re-reads of the latent image per sample: one takes milliseconds


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    unit: str  # "s" (lower is better) or "MB/s" (higher is better)


@dataclass
class Bench:
    roots: dict[str, Path]  # target -> the folder measured in
    files: int
    source: Path  # the 256 MiB of random bytes, on tmpfs: dropping caches does not evict it
    sdfs_mount: Path
    dropped_caches: bool = True
    encode_drain_s: dict = field(default_factory=dict)  # `sdfs sync` after each image copy (untimed in the row)


# -- the steps: each returns seconds or MB/s (a tuple for a step measuring
# two rows) for one target and one repetition

def many(bench: Bench, target: str, rep: int) -> Path:
    return bench.roots[target] / f"many-{rep}"


def names(bench: Bench) -> list[str]:
    return [f"f{i:05d}" for i in range(bench.files)]


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def run(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=True, **kwargs)


def create_files(bench, target, rep):
    folder = many(bench, target, rep)
    folder.mkdir()
    paths = [os.path.join(folder, name) for name in names(bench)]

    def create():
        for path in paths:
            with open(path, "wb") as f:
                f.write(b"x")

    return timed(create)


def find_count(bench, target, rep):
    out = []
    seconds = timed(lambda: out.append(run("bash", "-o", "pipefail", "-c", 'find "$1" -type f | wc -l', "find",
                                           str(many(bench, target, rep)), capture_output=True, text=True)))
    if int(out[0].stdout) != bench.files:
        raise RuntimeError(f"find counted {out[0].stdout.strip()} files, not {bench.files}")
    return seconds


def ls_l(bench, target, rep):
    return timed(lambda: run("ls", "-l", str(many(bench, target, rep)), stdout=subprocess.DEVNULL))


def stat_each(bench, target, rep):
    paths = [os.path.join(many(bench, target, rep), name) for name in names(bench)]
    return timed(lambda: [os.stat(path) for path in paths])


def rm_rf(bench, target, rep):
    return timed(lambda: run("rm", "-rf", str(many(bench, target, rep))))


def big(bench, target, rep) -> Path:
    return bench.roots[target] / f"big-{rep}.bin"


def dd_mb_s(source: Path, dest: Path | str, *extra: str) -> float:
    seconds = timed(lambda: run("dd", f"if={source}", f"of={dest}", "bs=1M", *extra, "status=none"))
    return BIG / 1e6 / seconds


def write_big(bench, target, rep):
    return dd_mb_s(bench.source, big(bench, target, rep), "conv=fsync")


def drop_caches(bench: Bench) -> None:
    """So a first read measures the daemon and the disk, not the page cache."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3")
    except OSError:
        bench.dropped_caches = False


def read_big(bench, target, rep) -> tuple[float, float]:
    """The first read and the second, one right after the other: dropping the
    caches for the next target's first read would make this one's second a
    first one again."""
    path = big(bench, target, rep)
    try:
        drop_caches(bench)
        return dd_mb_s(path, "/dev/null"), dd_mb_s(path, "/dev/null")
    finally:
        path.unlink()


def reread_latent(bench, target, rep):
    """Read in this process, 1 MiB at a time as dd bs=1M would: starting a dd
    (a few ms) would outweigh reading a few MB from the page cache."""
    path = bench.roots[target] / LATENT_NAME
    buffer = bytearray(1 << 20)

    def read_all() -> int:
        with open(path, "rb", buffering=0) as f:
            return sum(iter(lambda: f.readinto(buffer), 0))

    read_all()  # a re-read: the caches dropped before the 256 MiB reads evicted the plain copy
    read = []
    seconds = timed(lambda: read.extend(read_all() for _ in range(REREADS)))
    return sum(read) / 1e6 / seconds


def copy_images(bench, target, rep, tool: str) -> float:
    dest = bench.roots[target] / f"{tool}-{rep}"
    args = ("cp", "-r", str(IMAGES), str(dest)) if tool == "cp" else ("rsync", "-a", f"{IMAGES}/", f"{dest}/")
    seconds = timed(lambda: run(*args))
    if target == "sdfs":  # let the encoder finish before the next step: it would steal a core from it
        drain = timed(lambda: sdfs_sync(bench.sdfs_mount))
        bench.encode_drain_s.setdefault(tool, []).append(drain)
    shutil.rmtree(dest)
    return seconds


def sdfs_sync(mountpoint: Path) -> None:
    run(sys.executable, "-m", "sdfs", "sync", str(mountpoint), "--timeout", "600", capture_output=True)


STEPS = [  # in the order they run: each step's rows
    (create_files, [Row("create", "create {files} one-byte files", "s")]),
    (find_count, [Row("find", "find DIR -type f | wc -l ({files} files)", "s")]),
    (ls_l, [Row("ls_l", "ls -l DIR > /dev/null ({files} files)", "s")]),
    (stat_each, [Row("stat", "os.stat of each of {files} files", "s")]),
    (rm_rf, [Row("rm_rf", "rm -rf DIR ({files} files)", "s")]),
    (write_big, [Row("write_256", "write 256 MiB (dd bs=1M conv=fsync)", "MB/s")]),
    (read_big, [Row("read_256_first", "read 256 MiB, first (caches dropped)", "MB/s"),
                Row("read_256_second", "read 256 MiB, second", "MB/s")]),
    (reread_latent, [Row("reread_latent", "re-read a cached latent image", "MB/s")]),
    (lambda b, t, r: copy_images(b, t, r, "cp"), [Row("cp_r", "cp -r of tests/data/kodak", "s")]),
    (lambda b, t, r: copy_images(b, t, r, "rsync"), [Row("rsync_a", "rsync -a of tests/data/kodak", "s")]),
]
ROWS = [row for _, rows in STEPS for row in rows]


# -- the floor: sdfs's store alone, in this process (no FUSE, no daemon, no
# handler): each many-files row does this much store work whatever else is
# made faster, since every completed change is one durable LMDB commit


def store_alone(bench: Bench, rep: int) -> dict:
    from sdfs.ingest import staged_notes
    from sdfs.store import CHUNK, DIR, ROOT, VERBATIM, Store

    path = Path(tempfile.mkdtemp(prefix=f"store-alone-{rep}-", dir=bench.roots["plain"].parent))
    store = Store(path, {"name": "fs_bench"})
    try:
        folder = store.create(ROOT, b"many", DIR, stat.S_IFDIR | 0o755, 0, 0).ino
        keys = [name.encode() for name in names(bench)]
        verdict = {b"sdfs.verdict": b"stored verbatim: bench", b"sdfs.original_bytes": b"1"}

        def create():  # what sdfs commits for open(O_CREAT) + write + close: two transactions
            for name in keys:
                ino = store.create(folder, name, VERBATIM, stat.S_IFREG | 0o644, 0, 0, notes=staged_notes(0)).ino
                store.commit_content(ino, 1, 1, {0: b"x"}, set(), 0, queue=False, notes=verdict)

        def remove():  # unlink, and the file with it: one transaction
            for name in keys:
                store.unlink(folder, name, in_use=lambda ino: False)

        def write():  # 1 MiB pieces, uploaded 8 MiB at a time, then the commit, then a sync (conv=fsync)
            ino = store.create(ROOT, b"big", VERBATIM, stat.S_IFREG | 0o644, 0, 0, notes=staged_notes(0)).ino
            with open(bench.source, "rb") as source:
                batch, index = {}, 0
                while piece := source.read(CHUNK):
                    batch[index] = piece
                    index += 1
                    if len(batch) == 8:
                        store.upload(ino, 1, batch)
                        batch = {}
            store.commit_content(ino, 1, BIG, batch, set(range(index)) - set(batch), 0, queue=False, notes=verdict)
            store.sync()

        return {"create_s": timed(create), "unlink_s": timed(remove), "write_256_MB_s": BIG / 1e6 / timed(write)}
    finally:
        store.close()
        shutil.rmtree(path, ignore_errors=True)


# -- the run

def schedule(repeat: int) -> list[tuple[int, object, list[Row], str]]:
    """Every (repetition, step, its rows, target), interleaved: each step runs
    on the three targets one after the other, their order rotating each
    repetition, so a slow spell on the machine falls on all three alike."""
    steps = []
    for rep in range(repeat):
        order = TARGETS[rep % 3:] + TARGETS[:rep % 3]
        steps += [(rep, step, rows, target) for step, rows in STEPS for target in order]
    return steps


class Progress:
    """One line on stderr a step, with an ETA from the steps already timed
    (the same row and target where known, else the mean of all)."""

    def __init__(self, steps):
        self.keys = [(rows[0].key, target) for _, _, rows, target in steps]
        self.seconds: dict[tuple[str, str], float] = {}
        self.started = time.monotonic()

    def report(self, index: int, rep: int, repeat: int, target: str, took: float, shown: str):
        self.seconds[self.keys[index]] = took
        mean = statistics.fmean(self.seconds.values())
        eta = sum(self.seconds.get(key, mean) for key in self.keys[index + 1:])
        print(f"[{index + 1}/{len(self.keys)}] rep {rep + 1}/{repeat} {target:<7} {shown:<50} "
              f"elapsed {clock(time.monotonic() - self.started)}  ETA {clock(eta)}", file=sys.stderr, flush=True)


def clock(seconds: float) -> str:
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"


def measure(bench: Bench, repeat: int) -> dict:
    steps = schedule(repeat)
    progress = Progress(steps)
    samples = {row.key: {target: [] for target in TARGETS} for row in ROWS}
    errors = []
    alone = []
    for index, (rep, step, rows, target) in enumerate(steps):
        if index == 0 or rep != steps[index - 1][0]:  # once a repetition, before its steps
            alone.append(store_alone(bench, rep))
            print(f"rep {rep + 1}/{repeat} store alone: " + ", ".join(f"{k} {v:.4g}" for k, v in alone[-1].items()),
                  file=sys.stderr, flush=True)
        started = time.monotonic()
        try:
            values = step(bench, target, rep)
            values = values if isinstance(values, tuple) else (values,)
            shown = ", ".join(f"{row.key} {value:.4g} {row.unit}" for row, value in zip(rows, values))
        except (OSError, subprocess.SubprocessError, RuntimeError) as error:  # recorded; the run goes on
            values = (None,) * len(rows)
            errors.append({"rows": [row.key for row in rows], "target": target, "rep": rep, "error": describe(error)})
            shown = f"{rows[0].key} ERROR {errors[-1]['error'][:60]}"
        for row, value in zip(rows, values):
            samples[row.key][target].append(value)
        progress.report(index, rep, repeat, target, time.monotonic() - started, shown)
    return {"samples": samples, "errors": errors, "store_alone": alone}


def describe(error: Exception) -> str:
    if isinstance(error, subprocess.CalledProcessError):
        detail = error.stderr.decode(errors="replace") if isinstance(error.stderr, bytes) else error.stderr or ""
        return f"{' '.join(map(str, error.cmd))[:120]} exited {error.returncode}: {detail.strip()[:200]}"
    return f"{type(error).__name__}: {error}"


# -- setup: the mounts, the source file, the latent image

@contextlib.contextmanager
def ceiling_mounted(mountpoint: Path, log: Path):
    """bench/ceiling_fs.py in the foreground, unmounted whatever happens."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "ceiling_fs.py"), str(mountpoint)],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: os.path.ismount(mountpoint) or proc.poll() is not None, 30, "the ceiling mount")
        if proc.poll() is not None:
            raise RuntimeError(f"ceiling_fs.py exited {proc.returncode}: {log.read_text()}")
        yield proc
    finally:
        _unmount(mountpoint, proc)


def write_random(path: Path, size: int) -> None:
    with open(path, "wb") as f:  # random: nothing compresses, nothing looks like an image
        for _ in range(size // (16 << 20)):
            f.write(os.urandom(16 << 20))


def smooth_png(path: Path, side: int = 1024) -> None:
    """Gradients and slow waves with a fine grain (2.2 MB as PNG), big enough
    for MB/s to mean something. Without the grain PNG packs a smooth image
    smaller than its latent, and sdfs keeps it verbatim ("not smaller")."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    channels = [0.5 + 0.25 * np.sin(6 * x + 4 * y) + 0.25 * x, 0.5 + 0.3 * np.cos(5 * y - 3 * x) * y,
                0.3 + 0.4 * x * y + 0.2 * np.sin(9 * (x - y))]
    pixels = np.stack(channels, axis=-1) * 255 + np.random.default_rng(0).normal(0, 8, (side, side, 3))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)


def place_latent(bench: Bench, png: Path) -> dict:
    """The image on each target; on sdfs encoded, then read once (decoded into its cache)."""
    for root in bench.roots.values():
        shutil.copyfile(png, root / LATENT_NAME)
    sdfs_sync(bench.sdfs_mount)
    on_sdfs = bench.roots["sdfs"] / LATENT_NAME
    kind = os.getxattr(on_sdfs, "user.sdfs.kind").decode()
    if kind != "latent":
        raise RuntimeError(f"{on_sdfs} is stored as {kind!r}, not as a latent: the re-read row would measure nothing")
    for root in bench.roots.values():
        (root / LATENT_NAME).read_bytes()
    return {"source_bytes": png.stat().st_size, "kind_on_sdfs": kind,
            "bytes_read": {target: (root / LATENT_NAME).stat().st_size for target, root in bench.roots.items()}}


def machine() -> dict:
    library = ctypes.CDLL(ctypes.util.find_library("fuse3"))
    library.fuse_pkgversion.restype = ctypes.c_char_p
    commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True)
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "libfuse": library.fuse_pkgversion().decode(),
        "fusermount": subprocess.run([FUSERMOUNT, "--version"], capture_output=True, text=True).stdout.strip(),
        "mfusepy": importlib.metadata.version("mfusepy"),
        "python": platform.python_version(),
        "sdfs_commit": commit.stdout.strip(),
        "loadavg_start": os.getloadavg(),
    }


# -- results

def summarize(row: Row, samples: dict[str, list], files: int) -> dict:
    medians = {t: statistics.median(v) if (v := [s for s in samples[t] if s is not None]) else None for t in TARGETS}

    def ratio(other: str):
        return medians["sdfs"] / medians[other] if medians["sdfs"] and medians[other] else None

    direction = ("sdfs_time / other_time: above 1, sdfs is slower" if row.unit == "s"
                 else "sdfs_MB_per_s / other_MB_per_s: below 1, sdfs is slower")
    return {"label": row.label.format(files=files), "unit": row.unit, "median": medians, "samples": samples,
            "sdfs_over_ceiling": ratio("ceiling"), "sdfs_over_plain": ratio("plain"), "ratio_is": direction}


def table(rows: dict) -> str:
    def number(value):
        return "-" if value is None else f"{value:.3g}" if value < 1000 else f"{value:.0f}"

    lines = [f"{'row':<42} {'unit':<5} {'sdfs':>8} {'ceiling':>8} {'plain':>8} {'sdfs/ceil':>10} {'sdfs/plain':>10}"]
    for row in rows.values():
        m = row["median"]
        lines.append(f"{row['label']:<42} {row['unit']:<5} {number(m['sdfs']):>8} {number(m['ceiling']):>8} "
                     f"{number(m['plain']):>8} {number(row['sdfs_over_ceiling']):>10} "
                     f"{number(row['sdfs_over_plain']):>10}")
    lines.append("ratios: for s, sdfs time / other time (above 1: sdfs slower); for MB/s, sdfs MB/s / other MB/s "
                 "(below 1: sdfs slower)")
    return "\n".join(lines)


def plot(rows: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    groups = [[key for key, row in rows.items() if row["unit"] == unit] for unit in ("s", "MB/s")]
    fig, axes = plt.subplots(1, 2, figsize=(15, 5.5), gridspec_kw={"width_ratios": [len(g) for g in groups]})
    colors = {"sdfs": "tab:red", "ceiling": "tab:blue", "plain": "tab:gray"}
    for ax, keys, unit in zip(axes, groups, ("seconds (lower is better)", "MB/s (higher is better)")):
        x = np.arange(len(keys))
        for offset, target in zip((-0.27, 0, 0.27), TARGETS):
            values = [rows[key]["median"][target] or np.nan for key in keys]
            ax.bar(x + offset, values, 0.27, label=target, color=colors[target])
        for i, key in enumerate(keys):  # the ratio to the ceiling above each group
            ratio = rows[key]["sdfs_over_ceiling"]
            if ratio:
                top = max(v for v in rows[key]["median"].values() if v)
                ax.text(i, top * 1.3, f"{ratio:.2g}x ceil", ha="center", fontsize=8)
        ax.set_yscale("log")
        ax.set_xticks(x, [rows[key]["label"] for key in keys], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(unit)
        ax.margins(y=0.2)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=10_000, help="files in the many-files rows (default 10000)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions of every row on every target (default 3)")
    parser.add_argument("--work", type=Path, default=ROOT.parent if os.access(ROOT.parent, os.W_OK) else None,
                        help="a folder on the disk to measure (default: the worktree's parent)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    report = {"command": shlex.join(["python3", *sys.argv]), "files": args.files, "repeat": args.repeat, "machine": machine(),
              "vae": "tiny random-weight VAE (sdfs.codec.random_models.save_random_vae, 'tiny': factor 2); "
                     "mounted with --quality high --fidelity-floor 0:-1 (tests/mounting.py): its speed and "
                     "quality say nothing of a real VAE's",
              "mount_options": {"sdfs": "foreground, multithreaded, use_ino, auto_cache, attr_timeout=1, "
                                        "entry_timeout=1 (what changes without the kernel's knowing is "
                                        "invalidated: sdfs/fs/kernel_cache.py)",
                                "ceiling": "foreground, multithreaded, use_ino, hard_remove, kernel_cache, libfuse's "
                                           "caching defaults (entry_timeout=1, attr_timeout=1)"}}
    work = Path(tempfile.mkdtemp(prefix="sdfs-fsbench-", dir=args.work))
    source = Path(tempfile.mkdtemp(prefix="sdfs-fsbench-", dir="/dev/shm")) / "random.bin"
    try:
        from sdfs.codec.random_models import save_random_vae

        model = save_random_vae(work / "vae")
        write_random(source, BIG)
        smooth_png(work / LATENT_NAME)
        (work / "plain").mkdir()
        with contextlib.ExitStack() as mounts:
            daemon = mounts.enter_context(mounted(work / "store", work / "mnt-sdfs", model))
            mounts.enter_context(ceiling_mounted(work / "mnt-ceiling", work / "ceiling.log"))
            bench = Bench(roots={"sdfs": work / "mnt-sdfs", "ceiling": work / "mnt-ceiling", "plain": work / "plain"},
                          files=args.files, source=source, sdfs_mount=work / "mnt-sdfs")
            report["latent_image"] = place_latent(bench, work / LATENT_NAME)
            print(f"work in {work}; {len(schedule(args.repeat))} steps", file=sys.stderr, flush=True)
            measured = measure(bench, args.repeat)
            log = daemon.log.read_text(errors="replace")
            report["sdfs_daemon_log"] = {word: log.count(word) for word in ("Traceback", "ERROR:", "WARNING:")}
        report["dropped_caches_before_first_reads"] = bench.dropped_caches
        report["sdfs_encode_drain_after_copy_s"] = bench.encode_drain_s
        report["errors"] = measured["errors"]
        report["machine"]["loadavg_end"] = os.getloadavg()
        report["rows"] = {row.key: summarize(row, measured["samples"][row.key], args.files) for row in ROWS}
        report["store_alone"] = {
            "what": "sdfs's store driven in this process, no FUSE or daemon: the LMDB work under the rows "
                    "create (two commits a file), rm_rf (one) and write_256 (8 MiB uploads, the commit, a sync)",
            "samples": measured["store_alone"],
            "median": {key: statistics.median(a[key] for a in measured["store_alone"])
                       for key in measured["store_alone"][0]},
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(source.parent, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fs_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report["rows"], args.out / "fs_bench.png",
         f"sdfs vs ceiling (in-memory FUSE, same binding) vs plain folder: medians of {args.repeat}, "
         f"{args.files} files, {report['machine']['nproc']} cores, tiny random VAE")
    print(table(report["rows"]))
    floor = report["store_alone"]["median"]
    print(f"the store alone (no FUSE): create {floor['create_s']:.3g} s, unlink {floor['unlink_s']:.3g} s "
          f"({args.files} files), write 256 MiB {floor['write_256_MB_s']:.0f} MB/s")
    if report["errors"]:
        print(f"{len(report['errors'])} steps failed: see errors in {args.out / 'fs_bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
