"""``sdfs bench codec``: bytes, bpp, speed, memory and (with real weights)
rate-distortion against JPEG, WebP and AVIF, over a folder of images.

Sizes are always those of the real records (header, model id, metadata and
figures included), not of an idealised entropy estimate. Without ``--model``
the VAEs have RANDOM weights: timings and memory are honest (they depend on
the architecture only), sizes are real bitstreams of random-weight latents,
and no quality figure is reported.
"""

from __future__ import annotations

import io
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .codec import latents
from .codec.images import probe
from .codec.output import plan_output
from .codec.codec import Codec
from .codec.guard import Floor, measure, ms_ssim
from .codec.random_models import save_random_vae
from .codec.vae import Vae

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "bench" / "kodak"
ACCEPT_ALL = Floor(psnr=0, ssim=-1)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Progress:
    """One line per item with rate and ETA, on stderr."""

    def __init__(self, label: str, total: int):
        self.label, self.total, self.done, self.bytes = label, total, 0, 0
        self.started = time.monotonic()

    def step(self, name: str, size: int = 0) -> None:
        self.done += 1
        self.bytes += size
        elapsed = time.monotonic() - self.started
        eta = elapsed / self.done * (self.total - self.done)
        rate = self.bytes / 1e6 / elapsed if elapsed else 0
        print(
            f"[{self.label}] {self.done}/{self.total} {name}  {rate:.2f} MB/s  elapsed {elapsed:.0f}s  ETA {eta:.0f}s",
            file=sys.stderr,
            flush=True,
        )


def _png_bytes(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def _centre_crop(pixels: np.ndarray, side: int = 512) -> np.ndarray:
    height, width = pixels.shape[:2]
    top, left = (height - side) // 2, (width - side) // 2
    return pixels[top : top + side, left : left + side]


def _timed(fn):
    started = time.perf_counter()
    value = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return value, time.perf_counter() - started


def size_and_speed(vae: Vae, images: dict[str, np.ndarray], decode_timing: int, label: str) -> dict:
    """Encode every image once, code its latent at every quality (real record
    sizes), and time decodes of the first ``decode_timing`` images."""
    rows, progress = [], Progress(label, len(images))
    for index, (name, pixels) in enumerate(images.items()):
        ((latent, tiling),), encode_s = _timed(lambda: vae.encode([pixels]))
        row = {"image": name, "width": pixels.shape[1], "height": pixels.shape[0], "encode_s": encode_s, "quality": {}}
        source = probe(_png_bytes(pixels))  # once per image, not per quality
        for quality in latents.QUALITIES:
            payload = latents.encode_latent(latent, quality)
            record_bytes = len(record_for_size(vae, source, payload, tiling, quality))
            row["quality"][quality] = {
                "latent_bytes": len(payload),
                "record_bytes": record_bytes,
                "bpp": record_bytes * 8 / (pixels.shape[0] * pixels.shape[1]),
            }
        if index < decode_timing:
            z = latents.decode_latent(latents.encode_latent(latent, latents.DEFAULT_QUALITY))
            _, row["decode_s"] = _timed(lambda: vae.decode([(z, tiling, pixels.shape[:2])]))
        rows.append(row)
        progress.step(name, pixels.nbytes)
    return {"images": rows, "summary": summarise(rows), "peak_rss_mb": peak_rss_mb()}


def record_for_size(vae: Vae, source, payload: bytes, tiling, quality: str) -> bytes:
    """The record the codec writes for this latent, byte for byte in length,
    without the guard's decode (25 s a 512x512 image on a CPU). Only the
    fidelity figures are placeholders; they are fixed-size floats."""
    from .codec import container
    from .codec.container import Measurement, Record
    from .codec.guard import Fidelity

    plan, _ = plan_output(source.spec, source.pixels, source.alpha)
    record = Record(
        model=vae.identity,
        encode_dtype=vae.dtype_name,
        spec=source.spec,
        tiling=tiling,
        quality=quality,
        output_length=plan.length,
        output_coding=plan.coding,
        latent=payload,
        measurements=(Measurement("full", vae.identity.weights_sha256, Fidelity(0.0, 0.0)),),
    )
    return container.pack(record)


def summarise(rows: list[dict]) -> dict:
    summary = {}
    for quality in latents.QUALITIES:
        sizes = [row["quality"][quality]["record_bytes"] for row in rows]
        bpps = [row["quality"][quality]["bpp"] for row in rows]
        summary[quality] = {
            "mean_bytes": float(np.mean(sizes)),
            "max_bytes": int(np.max(sizes)),
            "mean_bpp": float(np.mean(bpps)),
            "max_bpp": float(np.max(bpps)),
        }
    encodes = [row["encode_s"] for row in rows]
    decodes = [row["decode_s"] for row in rows if "decode_s" in row]
    summary["encode_s_mean"] = float(np.mean(encodes)) if encodes else None
    summary["decode_s_mean"] = float(np.mean(decodes)) if decodes else None
    return summary


def _classic_at_bytes(pixels: np.ndarray, target: int, fmt: str) -> tuple[bytes, int]:
    """The largest ``fmt`` file not over ``target`` bytes (binary search on quality)."""
    low, high, best = 1, 95, None
    image = Image.fromarray(pixels)
    while low <= high:
        mid = (low + high) // 2
        out = io.BytesIO()
        image.save(out, fmt, quality=mid)
        if out.tell() <= target:
            best, low = (out.getvalue(), mid), mid + 1
        else:
            high = mid - 1
    if best is None:
        out = io.BytesIO()
        image.save(out, fmt, quality=1)
        best = (out.getvalue(), 1)
    return best


def rate_distortion(codec_factory, images: dict[str, np.ndarray]) -> list[dict]:
    """PSNR / MS-SSIM of sdfs at each quality and of JPEG/WebP/AVIF at the same bytes."""
    rows, progress = [], Progress("rate-distortion", len(images) * len(latents.QUALITIES))
    for quality in latents.QUALITIES:
        codec = codec_factory(quality)
        for name, pixels in images.items():
            result = codec.encode(_png_bytes(pixels))
            decoded = np.asarray(Image.open(io.BytesIO(codec.decode(result.record))).convert("RGB"))
            entry = {"image": name, "quality": quality, "sdfs": _figures(pixels, decoded, len(result.record))}
            for fmt in ("JPEG", "WEBP", "AVIF"):
                data, setting = _classic_at_bytes(pixels, len(result.record), fmt)
                other = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
                entry[fmt.lower()] = {**_figures(pixels, other, len(data)), "setting": setting}
            rows.append(entry)
            progress.step(f"{name} {quality}", pixels.nbytes)
    return rows


def _figures(reference: np.ndarray, test: np.ndarray, size: int) -> dict:
    fidelity = measure(reference, test)
    bpp = size * 8 / (reference.shape[0] * reference.shape[1])
    try:
        msssim = ms_ssim(reference, test)
    except ValueError:
        msssim = None
    return {"bytes": size, "bpp": bpp, "psnr": fidelity.psnr, "ssim": fidelity.ssim, "ms_ssim": msssim}


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # the tiny test model (factor 2) is there for timing; its sizes would dwarf the real architecture's
    sections = [k for k in ("full_size_native", "full_size_512") if k in report] or ["tiny_native"]
    has_rd = bool(report.get("rate_distortion"))
    fig, axes = plt.subplots(1, 2 if has_rd else 1, figsize=(13 if has_rd else 7, 4.5), squeeze=False)
    ax = axes[0][0]
    qualities = list(latents.QUALITIES)
    width = 0.8 / max(1, len(sections))
    for offset, section in enumerate(sections):
        means = [report[section]["summary"][q]["mean_bpp"] for q in qualities]
        ax.bar(np.arange(len(qualities)) + offset * width, means, width, label=section.replace("_", " "))
    ax.axhline(0.16, color="k", linestyle="--", linewidth=1, label="0.16 bpp (2022 experiment)")
    ax.set_xticks(np.arange(len(qualities)) + width * (len(sections) - 1) / 2, qualities)
    ax.set_ylabel("bits per pixel (whole record)")
    ax.set_title("sdfs record size by quality (random-weight latents)")
    ax.legend(fontsize=8)
    if has_rd:
        ax = axes[0][1]
        for codec_name in ("sdfs", "jpeg", "webp", "avif"):
            points = {}
            for row in report["rate_distortion"]:
                points.setdefault(row["quality"], []).append((row[codec_name]["bpp"], row[codec_name]["psnr"]))
            xs = [np.mean([p[0] for p in pts]) for pts in points.values()]
            ys = [np.mean([p[1] for p in pts]) for pts in points.values()]
            ax.plot(xs, ys, marker="o", label=codec_name)
        ax.set_xlabel("bpp")
        ax.set_ylabel("PSNR (dB)")
        ax.set_title(f"rate-distortion, model {report['model']}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load_images(folder: Path) -> dict[str, np.ndarray]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not files:
        raise FileNotFoundError(f"no PNG or JPEG images in {folder}")
    return {p.name: np.asarray(Image.open(p).convert("RGB")) for p in files}


def run_codec_bench(args) -> int:
    from .errors import SdfsError

    folder = args.images or DEFAULT_IMAGES
    try:
        images = load_images(folder)
    except (FileNotFoundError, OSError) as error:
        raise SdfsError(f"cannot read benchmark images: {error}; pass --images DIR") from None
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "weights": "size and speed sections: RANDOM weights (architecture only, no quality figures)"
        + (f"; rate_distortion: weights of {args.model}" if args.model else ""),
        "model": args.model,
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "images_folder": str(folder),
    }
    print(f"sdfs bench codec: {len(images)} images from {folder}; weights: {report['weights']}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as scratch:
        tiny = Vae.load(str(save_random_vae(Path(scratch) / "tiny")), device=args.device)
        report["tiny_native"] = size_and_speed(tiny, images, len(images), "tiny model")
        count = len(images) if args.full_size_images is None else min(args.full_size_images, len(images))
        if count:
            full = Vae.load(str(save_random_vae(Path(scratch) / "full", size="full")), device=args.device)
            chosen = dict(list(images.items())[:count])
            timed = args.decode_timing_images
            report["full_size_native"] = size_and_speed(full, chosen, timed, "full-size model")
            crops = {name: _centre_crop(pixels) for name, pixels in chosen.items() if min(pixels.shape[:2]) >= 512}
            if crops:
                report["full_size_512"] = size_and_speed(full, crops, timed, "full-size model, 512x512 crops")
    if args.model:
        vae = Vae.load(args.model, device=args.device)
        report["rate_distortion"] = rate_distortion(lambda q: Codec(vae, quality=q, floor=ACCEPT_ALL), images)
    json_path, png_path = args.out / "codec_bench.json", args.out / "codec_bench.png"
    json_path.write_text(json.dumps(report, indent=2))
    plot(report, png_path)
    print_summary(report)
    print(f"wrote {json_path} and {png_path}")
    return 0


def print_summary(report: dict) -> None:
    print(f"weights: {report['weights']}")
    for section in ("full_size_native", "full_size_512", "tiny_native"):
        if section not in report:
            continue
        summary = report[section]["summary"]
        print(f"\n{section}: encode {summary['encode_s_mean']:.3f} s/image" + (
            f", decode {summary['decode_s_mean']:.3f} s/image" if summary["decode_s_mean"] else ""
        ) + f", peak RSS {report[section]['peak_rss_mb']:.0f} MB")
        print(f"  {'quality':8} {'mean B':>9} {'max B':>8} {'mean bpp':>9} {'max bpp':>8}")
        for quality in latents.QUALITIES:
            q = summary[quality]
            print(f"  {quality:8} {q['mean_bytes']:9.0f} {q['max_bytes']:8d} {q['mean_bpp']:9.4f} {q['max_bpp']:8.4f}")
    if report.get("rate_distortion"):
        print("\nrate-distortion (means over images):")
        for quality in latents.QUALITIES:
            rows = [r for r in report["rate_distortion"] if r["quality"] == quality]
            line = "  ".join(
                f"{c} {np.mean([r[c]['bpp'] for r in rows]):.3f} bpp {np.mean([r[c]['psnr'] for r in rows]):.2f} dB"
                for c in ("sdfs", "jpeg", "webp", "avif")
            )
            print(f"  {quality:8} {line}")
