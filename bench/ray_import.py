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
Store.put_files, a transaction a batch.

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
    ax.set_title(f"{report['files']} Kodak images, small random-weight VAE, {report['nproc']} CPU cores; "
                 f"one store commits {report['commit_records_per_s']['32']:.0f} records/s", fontsize=8)
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
    finally:
        shutil.rmtree(work, ignore_errors=True)
    medians = {name: files / statistics.median(r["seconds"] for r in rs) for name, rs in runs.items()}
    report = {
        "command": " ".join(["python3", *sys.argv]), "files": files, "batch_size": args.batch_size,
        "nproc": len(os.sched_getaffinity(0)),
        "model": "random weights: AutoencoderKL, 4 blocks of 32 channels (spatial factor 8), built on the spot",
        "runs": runs, "median_files_per_s": medians,
        "ray_over_plain": {name: rate / medians["plain"] for name, rate in medians.items()},
        "commit_records_per_s": commits,
        "gpu_encoder_images_per_s": GPU_ENCODES_PER_S, "gpu_sdfs_encode_images_per_s": round(SDFS_ENCODES_PER_S, 1),
        "gpus_one_store_absorbs": {b: {"encoder_only": r / GPU_ENCODES_PER_S, "encode_and_judge": r / SDFS_ENCODES_PER_S}
                                   for b, r in commits.items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ray_import.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.out / "ray_import.png")
    for name, rate in medians.items():
        print(f"{name:>14}: {rate:6.2f} files/s  ({report['ray_over_plain'][name]:.2f}x plain)")
    for batch, rate in commits.items():
        absorbs = report["gpus_one_store_absorbs"][batch]
        print(f"commit, batch {batch:>3}: {rate:8.0f} records/s: {absorbs['encode_and_judge']:.0f} GPUs at "
              f"{SDFS_ENCODES_PER_S:.0f} encodes/s (encoder and decoder), {absorbs['encoder_only']:.0f} at "
              f"{GPU_ENCODES_PER_S} (encoder alone)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
