#!/usr/bin/env python3
"""How many encoded files one store can take in a second (issue 10: a Ray
import spreads the encode over many GPUs, but one process writes the store).

Commits latent records the way `sdfs import` does: Store.put_files, one
durable transaction a batch, each file with its name, inode, record and notes
(verdict, original size, source mark). Records are random bytes of the size a
512x512 image's latent takes (about 5 KB: --record-kb), so the figure is the
store's, not the codec's. Each batch size runs --repeat times, interleaved;
medians are reported, with how many GPUs at --gpu-rate encodes/s one store
absorbs.

    python3 bench/commit_rate.py [--files 20000] [--batches 8 32 128] [--work DIR] [--out bench/results]

Writes OUT/commit_rate.json and OUT/commit_rate.png; progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import stat
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sdfs.ingest import ORIGINAL_BYTES, SOURCE, VERDICT  # noqa: E402
from sdfs.store import DIR, ROOT as STORE_ROOT, Store  # noqa: E402
from sdfs.store.store import NewFile  # noqa: E402

# the encode rate to absorb: one H200, 512x512, float16, batch 32, the full-size VAE's
# encoder alone with random weights (bench/results/gpu_throughput.json)
GPU_ENCODES_PER_S = 133


def commit_run(work: Path, files: int, batch: int, record_kb: float, seed: int) -> dict:
    """``files`` records into a fresh store in transactions of ``batch``: records/s and MB/s."""
    rng = random.Random(seed)
    path = Path(tempfile.mkdtemp(prefix=f"commit-{batch}-", dir=work))
    store = Store(path, {"name": "commit_rate"})
    try:
        folders = [store.create(STORE_ROOT, f"d{i}".encode(), DIR, stat.S_IFDIR | 0o755, 0, 0).ino for i in range(16)]
        now = time.time_ns()
        sizes = [max(512, int(rng.gauss(record_kb, record_kb / 8) * 1024)) for _ in range(files)]
        records = [rng.randbytes(size) for size in sizes]  # made before timing
        started = time.perf_counter()
        for first in range(0, files, batch):
            batch_files = []
            for i in range(first, min(first + batch, files)):
                notes = {VERDICT: b"keep latent: bench", ORIGINAL_BYTES: b"400000", SOURCE: b"400000 0"}
                batch_files.append(NewFile(folders[i % len(folders)], f"img{i:08d}.png".encode(), 0o100644, 0, 0,
                                           now, now, records[i], 786_000, notes))
            store.put_files(batch_files)
        seconds = time.perf_counter() - started
        return {"records_per_s": files / seconds, "MB_per_s": sum(sizes) / seconds / 1e6, "seconds": seconds}
    finally:
        store.close()
        shutil.rmtree(path, ignore_errors=True)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = [int(b) for b in report["median_records_per_s"]]
    rates = [report["median_records_per_s"][str(b)] for b in batches]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(batches, rates, "o-", color="tab:red", label="one store (put_files, one commit a batch)")
    for gpus in (1, 4, 16):
        ax.axhline(gpus * report["gpu_encodes_per_s"], color="tab:gray", ls=":", lw=1)
        ax.text(batches[0], gpus * report["gpu_encodes_per_s"] * 1.05, f"{gpus} GPU(s) encoding", fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("files per transaction")
    ax.set_ylabel("records committed per second")
    ax.set_title(f"commit rate of one store, {report['record_kb']} KB records, {report['nproc']} cores", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=20_000, help="records per run (default %(default)s)")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32, 128], help="files per transaction")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--record-kb", type=float, default=5.0, help="mean record size (default 5: 512x512)")
    parser.add_argument("--gpu-rate", type=float, default=GPU_ENCODES_PER_S, help="encodes/s of one GPU")
    parser.add_argument("--work", type=Path, default=ROOT.parent if os.access(ROOT.parent, os.W_OK) else None)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    runs: dict[str, list] = {str(b): [] for b in args.batches}
    steps = [(rep, b) for rep in range(args.repeat) for b in args.batches]
    started = time.monotonic()
    for index, (rep, batch) in enumerate(steps):
        run = commit_run(args.work or Path(tempfile.gettempdir()), args.files, batch, args.record_kb, seed=rep)
        runs[str(batch)].append(run)
        elapsed = time.monotonic() - started
        eta = elapsed / (index + 1) * (len(steps) - index - 1)
        print(f"[{index + 1}/{len(steps)}] batch {batch}: {run['records_per_s']:.0f} records/s, "
              f"{run['MB_per_s']:.1f} MB/s  elapsed {elapsed:.0f} s  ETA {eta:.0f} s", file=sys.stderr, flush=True)
    medians = {b: statistics.median(r["records_per_s"] for r in rs) for b, rs in runs.items()}
    best = max(medians.values())
    report = {"command": " ".join(["python3", *sys.argv]), "files": args.files, "record_kb": args.record_kb,
              "nproc": len(os.sched_getaffinity(0)), "runs": runs, "median_records_per_s": medians,
              "gpu_encodes_per_s": args.gpu_rate, "gpus_one_store_absorbs": best / args.gpu_rate}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "commit_rate.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.out / "commit_rate.png")
    for batch, rate in medians.items():
        print(f"batch {batch:>4}: {rate:8.0f} records/s")
    print(f"one store absorbs about {report['gpus_one_store_absorbs']:.1f} GPUs at {args.gpu_rate:.0f} encodes/s each")
    return 0


if __name__ == "__main__":
    sys.exit(main())
