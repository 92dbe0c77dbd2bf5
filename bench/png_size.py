#!/usr/bin/env python3
"""How large PNGs read back through the mount, against the files written in (a script, not a test).

For every PNG (the 24 Kodak images and five photos that ship with
scikit-image, a test dependency), file by file:

* ``original``: the file written in;
* ``ideal``: what sdfs writes for the original pixels themselves, i.e. for a
  decoder that gave back the very pixels. It is the honest proxy for a trained
  VAE here, where none can be downloaded: a real reconstruction loses film
  grain and sensor noise, so it compresses as well or better;
* ``mount``: the file read back through a real mount, after the mount's own
  encode with a random-weight VAE (the real spatial factor 8, small channels).
  Its pixels mean nothing; the figure shows the mount path at work.

Then the lengths are checked the ways a user meets them: every read-back is
exactly its ``st_size``, in the daemon that encoded it and again in a second
mount (another process); and every record is decoded once more in bfloat16, a
decode that differs as another device's would, to count the outputs that had
to be written a notch coarser to keep their length.

    python3 bench/png_size.py [--kodak ../shared/bench/kodak] [--out bench/results]

Writes png_size.json and png_size.png.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.mounting import mounted, wait_encoded  # noqa: E402

PHOTOS = ("astronaut.png", "camera.png", "chelsea.png", "coffee.png", "motorcycle_left.png")


def gather(kodak: Path, into: Path) -> list[Path]:
    import skimage

    into.mkdir(parents=True)
    sources = sorted(kodak.glob("*.png")) + [Path(skimage.__file__).parent / "data" / name for name in PHOTOS]
    for source in sources:
        shutil.copyfile(source, into / source.name)
    return sorted(into.iterdir())


def ideal_lengths(files: list[Path]) -> dict[str, dict]:
    from sdfs.codec.images import probe
    from sdfs.codec.output import plan_output

    rows = {}
    for path in files:
        source = probe(path.read_bytes())
        plan, _ = plan_output(source.spec, source.pixels, source.alpha)
        rows[path.name] = {"size": f"{source.spec.width}x{source.spec.height} {source.spec.mode}",
                           "ideal": plan.length, "ideal_coding": plan.coding}
    return rows


def read_back(folder: Path) -> dict[str, dict]:
    out = {}
    for path in sorted(folder.iterdir()):
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # a valid PNG, every chunk's CRC included
        out[path.name] = {"st_size": path.stat().st_size, "read": len(data),
                          "sha256": hashlib.sha256(data).hexdigest()}
    return out


def records(store: Path, names: list[str]) -> dict[str, bytes]:
    from sdfs.store.store import ROOT as ROOT_INO
    from sdfs.store.store import Store

    store = Store(store, readonly=True)
    try:
        found = {}
        for name in names:
            ino, _, _ = store.walk(ROOT_INO, [b"in", name.encode()])
            found[name] = store.record(ino)
        return found
    finally:
        store.close()


def bfloat16_decodes(model: Path, blobs: dict[str, bytes]) -> dict[str, dict]:
    """Decode every record again in bfloat16, as the codec does, and say
    whether its file kept its length and how many low bits it lost to do so."""
    import torch

    from sdfs.codec import container, latents
    from sdfs.codec.codec import to_mode
    from sdfs.codec.output import render_output
    from sdfs.codec.vae import Vae

    float32 = Vae.load(str(model), device="cpu", dtype=torch.float32)
    bfloat16 = Vae.load(str(model), device="cpu", dtype=torch.bfloat16)
    out = {}
    for name, blob in blobs.items():
        record = container.unpack(blob)
        job = [(latents.decode_latent(record.latent, container.latent_shape(record)), record.tiling,
                (record.spec.height, record.spec.width))]
        pixels = to_mode(bfloat16.decode(job)[0], record.spec.mode)
        alpha = latents.decode_plane(record.alpha, record.spec.height, record.spec.width) if record.alpha else None
        data = render_output(record.spec, pixels, alpha, record.output_plan)
        with Image.open(io.BytesIO(data)) as image:
            written = np.asarray(image).reshape(pixels.shape)
        cleared = next(bits for bits in range(9) if np.array_equal(written, pixels & np.uint8((0xFF << bits) & 0xFF)))
        reference = to_mode(float32.decode(job)[0], record.spec.mode)
        out[name] = {"length_ok": len(data) == record.output_length, "cleared_bits": cleared,
                     "samples_differing_from_float32": float(np.mean(pixels != reference))}
    return out


def plot(rows: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(13, 4.5))
    for offset, key, label in ((-0.27, "stored_ratio", "before (format 1: stored blocks)"),
                               (0.0, "ideal_ratio", "sdfs, pixels given back exactly"),
                               (0.27, "mount_ratio", "sdfs mount, random-weight VAE")):
        ax.bar(x + offset, [rows[n][key] for n in names], 0.27, label=label)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.axhline(1.1, color="red", lw=0.8, ls="--", label="goal: mean ≤ 1.1")
    ax.set_xticks(x, [n.removesuffix(".png") for n in names], rotation=70, fontsize=8)
    ax.set_ylabel("read-back size / original size")
    ax.set_title("PNG files read back from sdfs, against the file written in")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kodak", type=Path, default=ROOT.parent / "shared" / "bench" / "kodak")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from sdfs.codec.images import probe
    from sdfs.codec.output import _stored_png_length  # the format-1 length, for the "before" bars
    from sdfs.codec.random_models import save_random_vae

    started = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        files = gather(args.kodak, scratch / "in")
        rows = ideal_lengths(files)
        print(f"{len(files)} PNGs; ideal lengths done in {time.monotonic() - started:.0f} s", flush=True)
        model = save_random_vae(scratch / "vae8", block_out_channels=(32,) * 4,
                                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
        store, mnt = scratch / "store", scratch / "mnt"
        with mounted(store, mnt, model, "--quality", "compact"):
            subprocess.run(["cp", "-r", str(scratch / "in"), str(mnt / "in")], check=True)
            wait_encoded(mnt / "in", timeout=1800)
            first = read_back(mnt / "in")
        print(f"mounted, encoded and read back in {time.monotonic() - started:.0f} s", flush=True)
        with mounted(store, mnt, model, "--quality", "compact"):
            second = read_back(mnt / "in")
        print(f"read back in a second mount at {time.monotonic() - started:.0f} s", flush=True)
        blobs = records(store, [f.name for f in files])
        other_dtype = bfloat16_decodes(model, blobs)
        for path in files:
            row = rows[path.name]
            original = path.stat().st_size
            spec = probe(path.read_bytes()).spec
            row.update(original=original, stored=_stored_png_length(spec), mount=first[path.name]["read"])
            row["stored_ratio"] = row["stored"] / original
            row["ideal_ratio"] = row["ideal"] / original
            row["mount_ratio"] = row["mount"] / original
            row["lengths_equal_st_size"] = all(r[path.name]["read"] == r[path.name]["st_size"] for r in (first, second))
            row["second_mount_same_length"] = second[path.name]["read"] == first[path.name]["read"]
            row["second_mount_same_bytes"] = second[path.name]["sha256"] == first[path.name]["sha256"]
            row["bfloat16"] = other_dtype[path.name]
    names = list(rows)
    summary = {
        key: {"mean": float(np.mean([rows[n][key] for n in names])), "max": float(np.max([rows[n][key] for n in names]))}
        for key in ("stored_ratio", "ideal_ratio", "mount_ratio")
    }
    summary["files"] = len(names)
    summary["every_read_equals_st_size"] = all(rows[n]["lengths_equal_st_size"] for n in names)
    summary["second_mount_same_length"] = all(rows[n]["second_mount_same_length"] for n in names)
    summary["second_mount_same_bytes"] = sum(rows[n]["second_mount_same_bytes"] for n in names)
    summary["bfloat16_length_ok"] = all(rows[n]["bfloat16"]["length_ok"] for n in names)
    summary["bfloat16_coarsened"] = sum(rows[n]["bfloat16"]["cleared_bits"] > 0 for n in names)
    summary["seconds"] = time.monotonic() - started
    report = {"weights": "RANDOM (factor-8 VAE with 32 channels) for the mount column", "summary": summary,
              "files": rows}
    (args.out / "png_size.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(rows, args.out / "png_size.png")
    print(f"{'file':24} {'original':>9} {'before':>6} {'ideal':>6} {'mount':>6}  bf16 bits")
    for n in names:
        r = rows[n]
        print(f"{n:24} {r['original']:9,} {r['stored_ratio']:6.2f} {r['ideal_ratio']:6.3f} {r['mount_ratio']:6.3f}"
              f"  {r['bfloat16']['cleared_bits']}")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
