#!/usr/bin/env python3
"""Benchmark of the mounted filesystem (a script, not a test).

Measures: files/s and MB/s of `cp -r` of a folder of images into the mount
(the write path: buffer, stage in LMDB, queue) and how long the background
encoder takes to drain it; cold first-read latency of a latent file (one
decode) against a cached read; sequential read MB/s with dd of a cached latent
file and of a large verbatim file, next to the same reads on the backing disk;
`ls -l` time on a directory of 10,000 files. JSON and a PNG plot come out.

    python3 bench/mount_bench.py [--images ../shared/bench/kodak] [--out bench/out]

The VAE is the tiny random test model by default (encoding cost is measured by
`sdfs bench codec`); pass --model for another.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.mounting import mounted, wait_encoded  # noqa: E402


def timed(fn):
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def drop_page_cache(path: Path) -> None:
    """Cold reads: ask the kernel to forget a file's pages (FUSE and disk)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def dd_mb_s(path: Path) -> float:
    out = subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M"], capture_output=True, text=True).stderr
    size, seconds = re.search(r"(\d+) bytes .* copied, ([\d.e-]+) s", out).groups()
    return int(size) / 1e6 / float(seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "bench" / "kodak")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--files", type=int, default=10_000)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"images": str(args.images)}
    with tempfile.TemporaryDirectory(dir=ROOT.parent if os.access(ROOT.parent, os.W_OK) else None) as scratch:
        scratch = Path(scratch)
        model = args.model
        if model is None:
            from sdfs.codec.random_models import save_random_vae

            model = save_random_vae(scratch / "tiny-vae")
            report["model"] = "tiny random test model (factor 2)"
        store, mnt = scratch / "store", scratch / "mnt"
        sources = sorted(args.images.glob("*.png"))
        total = sum(p.stat().st_size for p in sources)
        with mounted(store, mnt, model):
            seconds = timed(lambda: subprocess.run(["cp", "-r", str(args.images), str(mnt / "in")], check=True))
            report["cp_r"] = {"files": len(sources), "bytes": total, "seconds": seconds,
                              "files_per_s": len(sources) / seconds, "mb_per_s": total / 1e6 / seconds}
            drain = timed(lambda: wait_encoded(mnt, timeout=3600))
            report["encode_drain"] = {"seconds_after_cp": drain, "files_per_s": len(sources) / (seconds + drain)}
            print(json.dumps(report), flush=True)

            latent = mnt / "in" / sources[0].name
            drop_page_cache(latent)
            cold = timed(lambda: latent.read_bytes())
            drop_page_cache(latent)
            warm = timed(lambda: latent.read_bytes())
            report["first_read"] = {"cold_decode_s": cold, "cached_s": warm, "bytes": latent.stat().st_size}

            big = scratch / "big.bin"
            big.write_bytes(os.urandom(256 << 20))
            shutil.copyfile(big, mnt / "big.bin")
            for path in (big, mnt / "big.bin"):
                dd_mb_s(path)  # warm the store's cache and the page cache alike
            latent_reads = []
            for _ in range(5):
                drop_page_cache(latent)
                latent_reads.append(dd_mb_s(latent))
            report["sequential_read_mb_s"] = {
                "verbatim_256MB_via_mount": max(dd_mb_s(mnt / "big.bin") for _ in range(3)),
                "same_file_backing_disk_page_cache": max(dd_mb_s(big) for _ in range(3)),
                "cached_latent_via_mount_no_page_cache": max(latent_reads),
            }
            print(json.dumps(report), flush=True)

            many = mnt / "many"
            many.mkdir()
            create = timed(lambda: [(many / f"f{i:05d}").write_bytes(b"x") for i in range(args.files)])
            listing = timed(lambda: subprocess.run(["ls", "-l", str(many)], check=True, capture_output=True))
            report["many_files"] = {"files": args.files, "create_s": create, "ls_l_s": listing}
    (args.out / "mount_bench.json").write_text(json.dumps(report, indent=2))
    plot(report, args.out / "mount_bench.png")
    print(json.dumps(report, indent=2))
    return 0


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reads = report["sequential_read_mb_s"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    labels = ["verbatim via mount", "backing disk (page cache)", "cached latent via mount"]
    values = [reads["verbatim_256MB_via_mount"], reads["same_file_backing_disk_page_cache"],
              reads["cached_latent_via_mount_no_page_cache"]]
    left.barh(labels, values, color=["tab:blue", "tab:gray", "tab:green"])
    left.set_xlabel("MB/s (dd bs=1M)")
    left.set_title("sequential read")
    first = report["first_read"]
    right.bar(["cold (decode)", "cached"], [first["cold_decode_s"] * 1000, first["cached_s"] * 1000],
              color=["tab:red", "tab:green"])
    right.set_yscale("log")
    right.set_ylabel("ms to read one latent file")
    right.set_title(f"first read vs cached ({report.get('model', 'model')})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
