#!/usr/bin/env python3
"""Checks that need a CUDA GPU, through sdfs's own code path.

1. Honest sizes across devices: records encoded on a CPU (``prepare``) are
   decoded on the GPU in float16, bfloat16 and float32; every output must be
   exactly the recorded length, and the pixels are compared with the CPU's.
2. Bounded memory for a large photo: a 6000x4000 image through the
   full-size sd-vae-ft-mse architecture (RANDOM weights), tiled encode and
   decode, with time and peak CUDA memory.
3. Batched throughput of ``Vae.encode``/``Vae.decode`` (the API the
   filesystem's encoder uses) on 32 images of 512x512.

    python3 bench/device_check.py prepare .device        # here, on the CPU
    python3 bench/device_check.py run .device --json out.json   # on the GPU
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KODAK = Path(__file__).resolve().parents[2] / "shared" / "bench" / "kodak"
IMAGES = (1, 4, 23)


def prepare(folder: Path) -> None:
    from PIL import Image

    from sdfs.codec.codec import Codec
    from sdfs.codec.guard import Floor
    from sdfs.codec.random_models import save_random_vae
    from sdfs.codec.vae import Vae

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kodak").mkdir(exist_ok=True)
    for index in IMAGES:  # ../shared does not travel to the GPU machine
        (folder / "kodak" / f"kodim{index:02d}.png").write_bytes((KODAK / f"kodim{index:02d}.png").read_bytes())
    model = save_random_vae(
        folder / "model",
        block_out_channels=(32, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    )
    codec = Codec(Vae.load(str(model), device="cpu"), quality="compact", floor=Floor(0, -1))
    (folder / "records").mkdir(exist_ok=True)
    for index in IMAGES:
        image = Image.open(KODAK / f"kodim{index:02d}.png")
        for fmt, ext in (("PNG", "png"), ("JPEG", "jpg")):
            buffer = io.BytesIO()
            image.save(buffer, fmt, **({"quality": 85} if fmt == "JPEG" else {}))
            result = codec.encode(buffer.getvalue())
            name = f"kodim{index:02d}.{ext}"
            (folder / "records" / f"{name}.sdfs").write_bytes(result.record)
            (folder / "records" / f"{name}.cpu").write_bytes(codec.decode(result.record))
    print(f"prepared {len(list((folder / 'records').glob('*.sdfs')))} records in {folder}")


def _peak_mb(torch) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def _sync(torch) -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def run(folder: Path, json_path: Path, device: str, large: tuple[int, int], batch_size: int, dtypes: list[str]) -> int:
    import torch
    from PIL import Image

    from sdfs.codec import container
    from sdfs.codec.codec import Codec
    from sdfs.codec.random_models import save_random_vae
    from sdfs.codec.vae import Vae

    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    report = {"device": name, "torch": torch.__version__, "weights": "RANDOM", "cross_device": []}
    failures = 0
    for dtype in [getattr(torch, name) for name in dtypes]:
        codec = Codec(Vae.load(str(folder / "model"), device=device, dtype=dtype))
        for record_path in sorted((folder / "records").glob("*.sdfs")):
            data = record_path.read_bytes()
            output = codec.decode(data)
            cpu = record_path.with_suffix(".cpu").read_bytes()
            expected = container.unpack(data).output_length
            gpu_pixels = np.asarray(Image.open(io.BytesIO(output)).convert("RGB")).astype(int)
            cpu_pixels = np.asarray(Image.open(io.BytesIO(cpu)).convert("RGB")).astype(int)
            row = {
                "record": record_path.stem,
                "dtype": str(dtype).removeprefix("torch."),
                "length_ok": len(output) == expected == len(cpu),
                "identical_bytes": output == cpu,
                "max_pixel_diff": int(np.abs(gpu_pixels - cpu_pixels).max()),
                "mean_pixel_diff": float(np.abs(gpu_pixels - cpu_pixels).mean()),
            }
            failures += not row["length_ok"]
            report["cross_device"].append(row)
            print(json.dumps(row), flush=True)

    full = Vae.load(str(save_random_vae(tempfile.mkdtemp(), size="full")), device=device, batch_size=8)
    photo = np.asarray(Image.open(folder / "kodak" / "kodim23.png").convert("RGB").resize(large))
    _sync(torch)
    started = time.perf_counter()
    ((latent, tiling),) = full.encode([photo])
    encode_s, encode_peak = time.perf_counter() - started, _peak_mb(torch)
    _sync(torch)
    started = time.perf_counter()
    (decoded,) = full.decode([(latent, tiling, photo.shape[:2])])
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    report["large_photo"] = {
        "size": f"{large[0]}x{large[1]}",
        "tiling_latent_px": [tiling.tile, tiling.overlap, tiling.stats],
        "encode_s": encode_s,
        "encode_peak_cuda_mb": encode_peak,
        "decode_s": time.perf_counter() - started,
        "decode_peak_cuda_mb": _peak_mb(torch),
        "decoded_shape": list(decoded.shape),
    }
    print(json.dumps(report["large_photo"]), flush=True)

    sources = [np.asarray(Image.open(folder / "kodak" / f"kodim{i:02d}.png").convert("RGB"))[:512, :512] for i in IMAGES]
    batch = [sources[i % len(sources)] for i in range(batch_size)]
    full.batch_size = batch_size
    full.encode(batch[:2])  # warm-up
    _sync(torch)
    started = time.perf_counter()
    encoded = full.encode(batch)
    _sync(torch)
    encode_ips = len(batch) / (time.perf_counter() - started)
    items = [(latent, tiling, (512, 512)) for latent, tiling in encoded]
    full.decode(items[:2])
    _sync(torch)
    started = time.perf_counter()
    full.decode(items)
    _sync(torch)
    report[f"sdfs_vae_batch{batch_size}_{full.dtype_name}"] = {
        "encode_images_per_s": encode_ips,
        "decode_images_per_s": len(batch) / (time.perf_counter() - started),
    }
    print(json.dumps(report), flush=True)
    json_path.write_text(json.dumps(report, indent=2))
    print("length failures:", failures)
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("prepare", "run"))
    parser.add_argument("folder", type=Path)
    parser.add_argument("--json", type=Path, default=Path("device_check.json"))
    parser.add_argument("--device", default="cuda", help="cpu only to smoke-test this script")
    parser.add_argument("--large", default="6000x4000", help="large photo size WxH")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--dtypes", default="float16,bfloat16,float32")
    args = parser.parse_args()
    if args.action == "prepare":
        prepare(args.folder)
        return 0
    width, height = map(int, args.large.split("x"))
    return run(args.folder, args.json, args.device, (width, height), args.batch, args.dtypes.split(","))


if __name__ == "__main__":
    sys.exit(main())
