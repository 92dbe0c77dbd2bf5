#!/usr/bin/env python3
"""Peak memory and time of one big image through the codec, against another sdfs (a script, not a test).

Each measurement runs in a fresh child process: encode a big PNG the way the
mount's encoder does (`Codec.encode`: probe, tiled encode, the judging
decode, the output file), then decode its record the way a read does. The
child reports its peak RSS (ru_maxrss) after each step and the seconds each
took. The same children run with the sdfs of ``--baseline`` (a git revision,
checked out in a temporary worktree), interleaved, so the machine's noise
falls on both alike; the ratio is the figure.

    python3 bench/big_image.py [--megapixels 12] [--baseline aa55feb] [--repeat 2] [--out bench/results]

The VAE has random weights and the real spatial factor 8 with 32 channels
(the full-size model's activations are larger; the ratio is what this shows).
Writes big_image.json and big_image.png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KODAK = ROOT.parent / "shared" / "bench" / "kodak"

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from sdfs.codec.codec import Codec
from sdfs.codec.guard import Floor
from sdfs.codec.vae import Vae

source, model, image, record, step = sys.argv[1:]
codec = Codec(Vae.load(model, device="cpu"), quality="compact", floor=Floor(0, -1))
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
started = time.perf_counter()
if step == "encode":
    result = codec.encode(open(image, "rb").read())
    open(record, "wb").write(result.record)
    extra = {"output_length": result.output_length}
else:
    data = open(record, "rb").read()
    output = codec.decode(data)
    extra = {"output_bytes": len(output)}
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"loaded_mb": loaded, "peak_mb": peak, "seconds": seconds, **extra}))
"""


def photo(megapixels: float, path: Path) -> tuple[int, int]:
    """A photo-like PNG of about ``megapixels``: 512x512 crops of the Kodak images side by side."""
    import numpy as np
    from PIL import Image

    tiles = [np.asarray(Image.open(KODAK / f"kodim{i:02d}.png").convert("RGB"))[:512, :512] for i in range(1, 25)]
    side = (megapixels * 1e6 / (512 * 512)) ** 0.5
    rows, cols = max(1, round(side)), max(1, round(side))
    grid = [[tiles[(r * cols + c) % len(tiles)] for c in range(cols)] for r in range(rows)]
    pixels = np.concatenate([np.concatenate(row, axis=1) for row in grid], axis=0)
    Image.fromarray(pixels).save(path, "PNG", compress_level=1)
    return pixels.shape[1], pixels.shape[0]


def measure(source: Path, model: Path, image: Path, record: Path) -> dict:
    """Encode in one child, decode the record in another: each step's own peak."""
    figures = {}
    for step in ("encode", "decode"):
        out = subprocess.run([sys.executable, "-c", CHILD, str(source), str(model), str(image), str(record), step],
                             capture_output=True, text=True, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        report = json.loads(out.stdout.strip().splitlines()[-1])
        figures.update({f"{step}_peak_mb": report["peak_mb"], f"{step}_s": report["seconds"],
                        "loaded_mb": report["loaded_mb"]})
        figures.update({key: value for key, value in report.items() if key.startswith("output")})
    figures["output_length_ok"] = figures["output_bytes"] == figures["output_length"]
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megapixels", type=float, default=12)
    parser.add_argument("--baseline", default="aa55feb")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    from sdfs.codec.random_models import save_random_vae

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        baseline = scratch / "baseline"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(baseline), args.baseline],
                       check=True)
        try:
            model = save_random_vae(scratch / "vae8", block_out_channels=(32,) * 4,
                                    down_block_types=("DownEncoderBlock2D",) * 4,
                                    up_block_types=("UpDecoderBlock2D",) * 4)
            image = scratch / "big.png"
            width, height = photo(args.megapixels, image)
            print(f"{width}x{height} ({width * height / 1e6:.1f} MP), {image.stat().st_size / 1e6:.1f} MB PNG", flush=True)
            runs: dict[str, list] = {"baseline": [], "this": []}
            for round_ in range(args.repeat):
                for name, source in (("baseline", baseline), ("this", ROOT)):
                    started = time.monotonic()
                    runs[name].append(measure(source, model, image, scratch / f"{name}.sdfs"))
                    print(f"round {round_ + 1}, {name}: {runs[name][-1]} ({time.monotonic() - started:.0f} s)",
                          flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline)], check=False)
    best = {name: {key: min(run[key] for run in rs) for key in ("encode_peak_mb", "decode_peak_mb", "encode_s",
                                                                  "decode_s", "loaded_mb")}
            for name, rs in runs.items()}
    pixels = width * height
    summary = {
        "image": f"{width}x{height}", "megapixels": pixels / 1e6,
        **{f"{name}_{key}": value for name, figures in best.items() for key, value in figures.items()},
        "encode_peak_ratio": best["this"]["encode_peak_mb"] / best["baseline"]["encode_peak_mb"],
        "decode_peak_ratio": best["this"]["decode_peak_mb"] / best["baseline"]["decode_peak_mb"],
        "encode_time_ratio": best["this"]["encode_s"] / best["baseline"]["encode_s"],
        "decode_time_ratio": best["this"]["decode_s"] / best["baseline"]["decode_s"],
        **{f"{name}_{step}_bytes_per_pixel": (best[name][f"{step}_peak_mb"] - best[name]["loaded_mb"]) * 2**20 / pixels
           for name in best for step in ("encode", "decode")},
        "output_bytes": {name: rs[0]["output_bytes"] for name, rs in runs.items()},
        "output_length_ok": all(run["output_length_ok"] for rs in runs.values() for run in rs),
    }
    report = {"weights": "RANDOM (factor-8 VAE, 32 channels)", "baseline": args.baseline, "summary": summary,
              "runs": runs}
    (args.out / "big_image.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(best, summary, args.out / "big_image.png")
    print(json.dumps(summary, indent=2))
    return 0


def plot(best: dict, summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    names = list(best)
    for ax, keys, unit in ((axes[0], ("loaded_mb", "encode_peak_mb", "decode_peak_mb"), "peak RSS, MB"),
                           (axes[1], ("encode_s", "decode_s"), "seconds")):
        for offset, name in zip((-0.2, 0.2), names):
            ax.bar([i + offset for i in range(len(keys))], [best[name][k] for k in keys], 0.4, label=name)
        ax.set_xticks(range(len(keys)), [k.replace("_mb", "").replace("_s", "") for k in keys])
        ax.set_ylabel(unit)
        ax.legend(fontsize=8)
    fig.suptitle(f"One {summary['image']} PNG through the codec (CPU, random-weight VAE)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
