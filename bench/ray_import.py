#!/usr/bin/env python3
"""`sdfs import` plain against `sdfs import --ray` with 1 and 2 encoder
actors, on the same sources in one run, and the single writer's commit rate
beside them (issue 10).

Each run imports the sources into a fresh store, as a user would (the `sdfs`
command, timed from start to exit: a Ray run includes starting the local Ray
instance and loading the model in every actor). Runs interleave (plain, Ray
1, Ray 2, then again) so the machine's noise falls on all alike; medians are
reported. The model is a random-weight VAE with the real spatial factor (8)
and small channels (32), so a CPU gets through the Kodak set in about a
minute: the figures compare pipelines, not models. The commit rate is
bench/commit_rate.py's: 5 KB records (a 512x512 image's latent) through
Store.put_files, a transaction a batch; then the same records through the
Ray path (a stand-in actor that returns them at once, the driver's
sdfs.ray_import committing them), which bounds what one driver absorbs.

    python3 bench/ray_import.py [--images ../shared/bench/kodak] [--repeat 2] [--out bench/results]

Writes OUT/ray_import.json and OUT/ray_import.png; progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from commit_rate import GPU_ENCODES_PER_S, commit_run  # noqa: E402

# one H200, 512x512, float16, batch 32, the full-size VAE (bench/results/gpu_throughput.json):
# sdfs's encode runs the encoder and, to judge the latent, the decoder
GPU_DECODES_PER_S = 68.6
SDFS_ENCODES_PER_S = 1 / (1 / GPU_ENCODES_PER_S + 1 / GPU_DECODES_PER_S)

SOURCE_BYTES = 150_000  # what a 512x512 photo's file weighs, for packing blocks as an import would
ENCODE = ["--device", "cpu", "--quality", "high", "--fidelity-floor", "0:-1"]
CONFIGS = {"plain": [], "ray, 1 actor": ["--ray", "--ray-actors", "1"], "ray, 2 actors": ["--ray", "--ray-actors", "2"]}


def import_run(sources: Path, model: Path, work: Path, extra: list[str], batch: int) -> dict:
    store = Path(tempfile.mkdtemp(prefix="ray-import-", dir=work)) / "store"
    command = [sys.executable, "-m", "sdfs", "import", str(sources), str(store), "--model", str(model),
               "--batch-size", str(batch), *ENCODE, *extra]
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds = time.perf_counter() - started
    shutil.rmtree(store.parent, ignore_errors=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{proc.stdout}{proc.stderr}")
    return {"seconds": seconds, "summary": proc.stdout.strip().splitlines()[0]}


class InstantEncoder:
    """Stands in for cluster.RayEncoder: the same columns, a 5 KB record per
    file at once, no model; what is left is Ray's transport and the driver."""

    def __init__(self, model: str, record_bytes: int):
        from sdfs.cluster import RayEncoder

        self.model, self.record, self.columns = model, os.urandom(record_bytes), RayEncoder.COLUMNS

    def __call__(self, rows: dict) -> dict:
        keys = [int(k) for group in rows["keys"] for k in group]
        n = len(keys)
        values = dict(key=keys, verdict=["keep latent: a stand-in"] * n, record=[self.record] * n, latent=[True] * n,
                      output_length=[786_000] * n, log_level=[20] * n, original=[b""] * n, size=[len(self.record)] * n,
                      error=[""] * n, codec_failed=[False] * n, model=[self.model] * n, worker=["bench"] * n)
        return {name: values[name] for name in self.columns}


def driver_rate(work: Path, files: int, batch: int, record_bytes: int = 5000) -> dict:
    """Results/s the driver takes from Ray and commits (sdfs.ray_import's path), the encode left out."""
    from ray.data import ActorPoolStrategy

    from sdfs import cluster
    from sdfs.importer import Entry, Summary
    from sdfs.progress import Progress
    from sdfs.ray_import import _Commits
    from sdfs.store import Store

    path = Path(tempfile.mkdtemp(prefix="driver-", dir=work))
    model = {"name": "driver_rate", "weights_sha256": "ab" * 32, "scaling_factor": 0.18215, "latent_channels": 4,
             "spatial_factor": 8}
    (path / "source").write_bytes(b"x")
    st = os.stat(path / "source")
    entries = [Entry(path / "source", (f"f{i:07d}.png".encode(),), st) for i in range(files)]
    groups = [list(range(i, min(i + batch, files))) for i in range(0, files, batch)]
    store = Store(path / "store", model)
    try:
        with cluster.connected(cluster.LOCAL, 0) as ray, Progress(files, enabled=False) as progress:
            rows = [{"keys": [k for group in block for k in group]}
                    for block in cluster.blocks(groups, [SOURCE_BYTES] * files, 1)]
            dataset = ray.data.from_items(rows, override_num_blocks=len(rows))  # as cluster.encode makes them
            dataset = dataset.map_batches(InstantEncoder, fn_constructor_args=(json.dumps(model, sort_keys=True),
                                                                               record_bytes),
                                          batch_size=1, compute=ActorPoolStrategy(size=1), num_cpus=1)
            commits = _Commits(store, entries, {}, Summary(), progress)
            started, first = None, 0
            for block in dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
                commits.commit([cluster._encoded(block, i) for i in range(len(block["key"]))])
                if started is None:  # timed from the first result on: not Ray's start, nor the actor's
                    started, first = time.perf_counter(), len(block["key"])
            seconds = time.perf_counter() - started
            commits.finish()
        assert commits.summary.latent == files and commits.summary.failed == 0, commits.summary
        return {"records_per_s": (files - first) / seconds, "seconds": seconds}
    finally:
        store.close()
        shutil.rmtree(path, ignore_errors=True)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["median_files_per_s"])
    rates = [report["median_files_per_s"][n] for n in names]
    fig, ax = plt.subplots(figsize=(7, 4))
    bars = ax.bar(names, rates, color=["tab:gray", "tab:blue", "tab:blue"])
    for bar, rate in zip(bars, rates):
        ax.text(bar.get_x() + bar.get_width() / 2, rate, f"{rate:.2f}", ha="center", va="bottom", fontsize=9)
    ax.set_ylabel("files imported per second (whole command)")
    ax.set_title(f"{report['files']} Kodak images, small random-weight VAE, {report['nproc']} CPU cores; one driver "
                 f"commits {report['driver_records_per_s_through_ray']['32']:.0f} results/s from Ray", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "bench" / "kodak")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--commit-files", type=int, default=5000, help="records per commit-rate run")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    from sdfs.codec.random_models import save_random_vae

    work = Path(tempfile.mkdtemp(prefix="ray-bench-", dir=args.work))
    try:
        model = save_random_vae(work / "vae", block_out_channels=(32, 32, 32, 32),
                                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
        sources = work / "kodak"
        shutil.copytree(args.images, sources, ignore=shutil.ignore_patterns("*.md"))
        files = sum(1 for p in sources.iterdir() if p.is_file())
        runs: dict[str, list] = {name: [] for name in CONFIGS}
        steps = [(rep, name) for rep in range(args.repeat) for name in CONFIGS]
        started = time.monotonic()
        for index, (rep, name) in enumerate(steps):
            run = import_run(sources, model, work, CONFIGS[name], args.batch_size)
            runs[name].append(run)
            elapsed = time.monotonic() - started
            print(f"[{index + 1}/{len(steps)}] {name}: {files / run['seconds']:.2f} files/s ({run['seconds']:.1f} s)  "
                  f"elapsed {elapsed:.0f} s  ETA {elapsed / (index + 1) * (len(steps) - index - 1):.0f} s",
                  file=sys.stderr, flush=True)
        commits = {str(b): commit_run(work, args.commit_files, b, 5.0, seed=0)["records_per_s"] for b in (8, 32)}
        print(f"commit rate: {commits}", file=sys.stderr)
        through_ray = {str(b): driver_rate(work, args.commit_files, b)["records_per_s"] for b in (8, 32)}
        print(f"through Ray: {through_ray}", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    medians = {name: files / statistics.median(r["seconds"] for r in rs) for name, rs in runs.items() if rs}
    report = {
        "command": " ".join(["python3", *sys.argv]), "files": files, "batch_size": args.batch_size,
        "nproc": len(os.sched_getaffinity(0)),
        "model": "random weights: AutoencoderKL, 4 blocks of 32 channels (spatial factor 8), built on the spot",
        "runs": runs, "median_files_per_s": medians,
        "ray_over_plain": {name: rate / medians["plain"] for name, rate in medians.items() if "plain" in medians},
        "commit_records_per_s": commits, "driver_records_per_s_through_ray": through_ray,
        "gpu_encoder_images_per_s": GPU_ENCODES_PER_S, "gpu_sdfs_encode_images_per_s": round(SDFS_ENCODES_PER_S, 1),
        "gpus_one_store_absorbs": {b: {"encoder_only": r / GPU_ENCODES_PER_S, "encode_and_judge": r / SDFS_ENCODES_PER_S}
                                   for b, r in through_ray.items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ray_import.json").write_text(json.dumps(report, indent=2) + "\n")
    if args.repeat:
        plot(report, args.out / "ray_import.png")
    for name, rate in medians.items():
        print(f"{name:>14}: {rate:6.2f} files/s  ({report['ray_over_plain'][name]:.2f}x plain)")
    for batch, rate in through_ray.items():
        absorbs = report["gpus_one_store_absorbs"][batch]
        print(f"batch {batch:>3}: LMDB alone {commits[batch]:8.0f} records/s, through Ray {rate:8.0f}: "
              f"{absorbs['encode_and_judge']:.0f} GPUs at "
              f"{SDFS_ENCODES_PER_S:.0f} encodes/s (encoder and decoder), {absorbs['encoder_only']:.0f} at "
              f"{GPU_ENCODES_PER_S} (encoder alone)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
