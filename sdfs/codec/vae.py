"""The VAE: loading, device and dtype, padding, tiling, batching, fingerprint.

Pixels here are uint8 arrays (H, W, 3); latents are float32 arrays (C, h, w)
holding ``latent_dist.mode()`` *unscaled* (the AutoencoderKL's own space).
The fast decoder (AutoencoderTiny / TAESD) works in the scaled diffusion space,
so it is fed ``latent * scaling_factor``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import socket
import threading
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import ModelMismatch, ModelUnavailable
from .defaults import DEFAULT_FAST_DECODER, DEFAULT_MODEL  # noqa: F401 (part of this module's interface)
from .identity import ModelIdentity, Tiling  # noqa: F401 (part of this module's interface)
from .priority import PriorityLock

log = logging.getLogger(__name__)

BUNDLED_CONFIG_DIR = Path(__file__).with_name("configs") / "sd-vae-ft-mse"
_HUB_HOST = "huggingface.co"


def fingerprint(module: torch.nn.Module) -> bytes:
    """SHA-256 over (name, shape, float32 bytes) of every tensor, sorted by name.

    Independent of file format (folder, .safetensors, .ckpt) and of the device or
    dtype the model later runs in, so the same weights always give the same id.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        values = tensor.detach().to("cpu", torch.float32).contiguous()
        digest.update(name.encode())
        digest.update(repr(tuple(values.shape)).encode())
        digest.update(values.numpy().tobytes())
    return digest.digest()


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        chosen = None
    if chosen is None or chosen.type not in ("cpu", "cuda"):
        raise ModelUnavailable(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelUnavailable("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
        if (chosen.index or 0) >= torch.cuda.device_count():
            raise ModelUnavailable(f"{device} does not exist: {torch.cuda.device_count()} CUDA device(s) visible")
    return chosen


def default_dtype(device: torch.device) -> torch.dtype:
    # fp16 on the GPU halves memory and doubles throughput; a batch that
    # overflows to inf/nan is redone by a float32 copy (see _run_checked).
    return torch.float16 if device.type == "cuda" else torch.float32


# --------------------------------------------------------------------------- loading


def _quiet_diffusers() -> None:
    import diffusers

    diffusers.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", module="diffusers")
    warnings.filterwarnings("ignore", module="huggingface_hub")


def _hub_reachable() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.getaddrinfo(_HUB_HOST, 443)
        return True
    except OSError:
        return False


def _load_single_file(cls, path: Path):
    """A lone weights file: diffusers-format keys or the original LDM layout."""
    config_dir = path.parent if (path.parent / "config.json").is_file() else BUNDLED_CONFIG_DIR
    config = json.loads((config_dir / "config.json").read_text())
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
    model = cls.from_config(config)
    if not set(model.state_dict()) <= set(state):
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

        state = convert_ldm_vae_checkpoint(state, config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing:
        raise ModelUnavailable(
            f"{path} does not hold weights for this VAE ({len(missing)} tensors missing, "
            f"e.g. {missing[0]}); put the matching config.json next to it"
        )
    return model


def load_autoencoder(spec: str, kind: str = "kl"):
    """Load an AutoencoderKL (kind "kl") or AutoencoderTiny (kind "tiny").

    ``spec`` is a hub id (``org/name`` or ``org/name@revision``), a local
    diffusers folder (a full pipeline folder with a ``vae/`` subfolder works too)
    or a single weights file (.safetensors, .ckpt, .pt, .bin).
    Returns (model in eval mode on the CPU in fp32, display name).
    """
    _quiet_diffusers()
    from diffusers import AutoencoderKL, AutoencoderTiny

    cls = AutoencoderKL if kind == "kl" else AutoencoderTiny
    path = Path(spec).expanduser()
    try:
        if path.is_dir():
            sub = "vae" if not (path / "config.json").exists() and (path / "vae" / "config.json").exists() else None
            model = cls.from_pretrained(str(path), subfolder=sub)
            name = path.name
        elif path.is_file():
            model = _load_single_file(cls, path)
            name = path.name
        elif spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
            model = _load_from_hub(cls, spec)
            name = spec
        else:
            raise ModelUnavailable(f"model {spec!r} is neither a file, a folder nor a hub id like org/name")
    except ModelUnavailable:
        raise
    except Exception as error:  # loaders raise many types (SafetensorError, HFValidationError...)
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelUnavailable(f"cannot load VAE {spec!r}: {first_line}") from error
    return model.to("cpu", torch.float32).eval(), name


def _load_from_hub(cls, spec: str):
    repo, _, revision = spec.partition("@")
    kwargs = {"revision": revision or None}
    try:
        return cls.from_pretrained(repo, local_files_only=True, **kwargs)
    except OSError:
        pass  # not cached yet: download below when the hub answers
    if not _hub_reachable():
        raise ModelUnavailable(
            f"VAE {spec!r} is not in the local Hugging Face cache and the hub cannot be reached; "
            f"on a connected machine run `hf download {repo}` and copy ~/.cache/huggingface here, "
            f"or pass --model /path/to/folder-or-weights-file"
        )
    return cls.from_pretrained(repo, **kwargs)


# --------------------------------------------------------------------------- tiling


def _ramp(length: int, overlap: int) -> torch.Tensor:
    """Blend weights: rising over ``overlap`` samples at both ends, never zero."""
    if overlap <= 0:
        return torch.ones(length)
    index = torch.arange(length, dtype=torch.float32)
    return torch.clamp(torch.minimum(index + 0.5, length - index - 0.5) / overlap, max=1.0)


def _tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile origins covering ``size``; the last tile is aligned to the end so
    every tile has the full size and tiles can share one batch."""
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return starts


_tile_sink = threading.local()  # where this thread's tiled passes say how far they are (reporting_tiles)


@contextmanager
def reporting_tiles(sink: Callable[[str, int, int], None]):
    """Calls ``sink(pass_name, done, total)`` after each tile of this
    thread's tiled passes ("encode", "decode"): how far a big image is. Other
    threads' passes (a reader's decode) report nowhere."""
    before = getattr(_tile_sink, "sink", None)
    _tile_sink.sink = sink
    try:
        yield
    finally:
        _tile_sink.sink = before


def _tiles_of(pass_name: str) -> Callable[[int, int], None] | None:
    sink = getattr(_tile_sink, "sink", None)
    return None if sink is None else (lambda done, total: sink(pass_name, done, total))


def run_tiled(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    tile: int,
    overlap: int,
    scale: float,
    batch: int,
    on_tile: Callable[[int, int], None] | None = None,
    emit: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor | None:
    """Apply ``fn`` to overlapping ``tile``-sized windows of ``x`` (1, C, H, W)
    and blend the outputs (which are ``scale`` times larger) with linear ramps.

    With ``emit``, the blended output goes to ``emit(first_row, rows)`` band
    by band, top to bottom, as soon as no later tile touches those rows, and
    nothing is returned: memory is then one batch of tiles plus a band about
    a tile high, whatever the image's height (callers add SharedGroupNorm's
    statistics pass, bounded by its latent budget). Without it, the whole
    output is returned.
    """
    _, _, height, width = x.shape
    starts_y, starts_x = _tile_starts(height, tile, overlap), _tile_starts(width, tile, overlap)
    boxes = [(y, x0) for y in starts_y for x0 in starts_x]  # row by row: bands finish in order
    th, tw = min(tile, height), min(tile, width)
    out_th, out_tw, out_overlap = round(th * scale), round(tw * scale), round(overlap * scale)
    out_height, out_width = round(height * scale), round(width * scale)
    ramp_y, ramp_x = _ramp(out_th, out_overlap), _ramp(out_tw, out_overlap)
    weight = ramp_y[:, None] * ramp_x[None, :]
    # each tile weighs ramp_y (x) ramp_x and the tiles form a grid: the sum of
    # the weights is the outer product of two sums, no (H, W) array needed
    total_y, total_x = torch.zeros(out_height), torch.zeros(out_width)
    for y in starts_y:
        total_y[round(y * scale) : round(y * scale) + out_th] += ramp_y
    for x0 in starts_x:
        total_x[round(x0 * scale) : round(x0 * scale) + out_tw] += ramp_x
    parts: list[torch.Tensor] = []
    emit = emit or (lambda first_row, rows: parts.append(rows))
    band, origin, done = None, 0, 0  # band: the output rows [origin, origin + band height) not yet emitted
    for first in range(0, len(boxes), batch):
        group = boxes[first : first + batch]
        outputs = fn(torch.cat([x[:, :, y : y + th, x0 : x0 + tw] for y, x0 in group])).float().cpu()
        bottom = max(round(y * scale) for y, _ in group) + out_th - origin
        if band is None or band.shape[2] < bottom:
            grown = torch.zeros(1, outputs.shape[1], bottom, out_width)
            if band is not None:
                grown[:, :, : band.shape[2]] = band
            band = grown
        for (y, x0), out in zip(group, outputs):
            oy, ox = round(y * scale) - origin, round(x0 * scale)
            band[0, :, oy : oy + out_th, ox : ox + out_tw] += out * weight
            done += 1
            if on_tile:
                on_tile(done, len(boxes))
        final = round(boxes[first + batch][0] * scale) if first + batch < len(boxes) else out_height
        if final > origin:  # no later tile reaches above its own first row
            rows = final - origin
            emit(origin, band[:, :, :rows] / (total_y[origin:final, None] * total_x[None, :]))
            band, origin = band[:, :, rows:].clone(), final
    return torch.cat(parts, dim=2) if parts else None


_patch_in_use = threading.local()  # the SharedGroupNorm patch this thread's pass runs under, if any


class SharedGroupNorm:
    """Makes every GroupNorm of a model normalize tiles with statistics of the
    whole image, taken beforehand from one pass over a downscaled copy.

    Without this each tile is normalized by its own mean and variance, and
    tiles come out with visibly different brightness and contrast (with the
    random test weights, 18 dB PSNR against the untiled decode).

    Statistics are kept per GroupNorm (its ``key``); a pass runs them on the
    module of the same name in a float32 twin when it falls back to one.
    """

    def __init__(self, model: torch.nn.Module):
        self.norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
        self.stats: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _record(self, key: torch.nn.GroupNorm, norm: torch.nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        grouped = x.float().reshape(x.shape[0], norm.num_groups, -1)
        self.stats[id(key)] = (grouped.mean(dim=(0, 2)), grouped.var(dim=(0, 2), unbiased=False))
        return torch.nn.functional.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)

    def _apply(self, key: torch.nn.GroupNorm, norm: torch.nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        mean, var = self.stats[id(key)]
        per_channel = x.shape[1] // norm.num_groups
        shape = (1, -1) + (1,) * (x.ndim - 2)  # attention blocks normalize (B, C, N)
        mean = mean.repeat_interleave(per_channel).reshape(shape)
        scale = torch.rsqrt(var.repeat_interleave(per_channel) + norm.eps).reshape(shape)
        out = (x.float() - mean) * scale
        if norm.affine:
            out = out * norm.weight.float().reshape(shape) + norm.bias.float().reshape(shape)
        return out.to(x.dtype)

    @contextmanager
    def _installed(self, method, pairs=None):
        """``method`` as the forward of each GroupNorm (of ``pairs``: (key, module) to patch)."""
        pairs = [(norm, norm) for norm in self.norms] if pairs is None else pairs
        for key, norm in pairs:
            norm.forward = (lambda k, n: lambda x: method(k, n, x))(key, norm)
        before = getattr(_patch_in_use, "patch", None)
        _patch_in_use.patch = (self, method)
        try:
            yield
        finally:
            _patch_in_use.patch = before
            for _, norm in pairs:
                del norm.forward  # back to the class's forward

    def recording(self):
        """Context: the model's GroupNorms record statistics (of the pass made inside)."""
        return self._installed(self._record)

    def applying(self):
        """Context: the model's GroupNorms normalize with the recorded statistics.
        Installed for one pass at a time, with the model held: between the
        tiles of a big image, another caller's pass runs on the plain model."""
        return self._installed(self._apply)

    @staticmethod
    @contextmanager
    def mirrored(root: torch.nn.Module, twin: torch.nn.Module):
        """Context: the patch this thread's pass runs under (if any), on the
        same-named GroupNorms of ``twin``, a copy of ``root``."""
        patch = getattr(_patch_in_use, "patch", None)
        if patch is None:
            yield
            return
        shared, method = patch
        names = {id(module): name for name, module in root.named_modules()}
        twins = dict(twin.named_modules())
        pairs = [(norm, twins[names[id(norm)]]) for norm in shared.norms if id(norm) in names]
        with shared._installed(method, pairs):
            yield


def _stats_size(height: int, width: int, samples_per_latent: int, max_latent: int, multiple: int) -> list[int]:
    """The size a (H, W) input is area-downscaled to so that it stands for at
    most ``max_latent`` latent pixels; ``samples_per_latent`` is factor**2 for
    images, 1 for latents."""
    ratio = max(1.0, math.sqrt(height * width / samples_per_latent / max_latent))
    # at least 8 samples a side: GroupNorm statistics of a few pixels mean nothing
    return [min(side, max(8 * multiple, int(side / ratio) // multiple * multiple)) for side in (height, width)]


def _downscale_for_stats(x: torch.Tensor, samples_per_latent: int, max_latent: int, multiple: int) -> torch.Tensor:
    """Area-downscale (1, C, H, W) for the statistics pass (see _stats_size)."""
    size = _stats_size(*x.shape[-2:], samples_per_latent, max_latent, multiple)
    return torch.nn.functional.interpolate(x, size=size, mode="area")


_BAND_SAMPLES = 1 << 22  # image samples converted to float at a time (16 MB)


def _downscale_image_for_stats(pixels: torch.Tensor, factor: int, max_latent: int) -> torch.Tensor:
    """The same for a uint8 image (1, C, H, W), a band of rows at a time: an
    area average is separable, so the columns are averaged band by band and
    the rows then. The image is never whole in float (12 bytes a pixel)."""
    height, width = pixels.shape[-2:]
    size = _stats_size(height, width, factor * factor, max_latent, factor)
    step = max(1, _BAND_SAMPLES // (pixels.shape[1] * width))
    columns = torch.cat([
        torch.nn.functional.adaptive_avg_pool2d(_normalised(pixels[:, :, first : first + step]),
                                                (min(step, height - first), size[1]))
        for first in range(0, height, step)
    ], dim=2)
    return torch.nn.functional.adaptive_avg_pool2d(columns, size)


# --------------------------------------------------------------------------- the model


def _uint8_planes(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, C) -> a uint8 (1, C, H, W) view of the same memory (of a
    copy when it is read-only, as Pillow's arrays are: torch wants to be able to write)."""
    image = np.ascontiguousarray(image)
    if not image.flags.writeable:
        image = image.copy()
    return torch.from_numpy(image).permute(2, 0, 1)[None]


def _normalised(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 1|3, H, W) -> float (B, 3, H, W) in [-1, 1]."""
    if pixels.shape[1] == 1:
        pixels = pixels.expand(-1, 3, -1, -1)
    return pixels.float() / 127.5 - 1.0


def _padded_image(image: np.ndarray, factor: int) -> np.ndarray:
    """The image padded to a multiple of ``factor`` by repeating its last row
    and column (a black border would bleed into the edge pixels), in uint8."""
    pad_h, pad_w = -image.shape[0] % factor, -image.shape[1] % factor
    return np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge") if pad_h or pad_w else image


def to_uint8(sample: torch.Tensor) -> np.ndarray:
    """float (3, H, W) in [-1, 1] -> uint8 (H, W, 3), rounded (not truncated)."""
    pixels = ((sample.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return pixels.permute(1, 2, 0).numpy()


class Vae:
    """An AutoencoderKL ready to encode and decode, plus an optional fast decoder."""

    def __init__(
        self,
        model,
        identity: ModelIdentity,
        device: str = "auto",
        dtype: torch.dtype | None = None,
        max_untiled_latent: int = 128 * 128,
        tile_latent: int = 64,
        overlap_latent: int = 8,
        batch_size: int | None = None,
    ):
        self.device = resolve_device(device)
        self.dtype = dtype or default_dtype(self.device)
        self.model = model.to(self.device, self.dtype).eval()
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.identity = identity
        # Sizes count latent pixels: the mid-block attention costs (h*w)**2, so
        # what bounds time and memory is the latent grid, whatever the factor.
        # Defaults: untiled up to 1024x1024 pixels and tiles of 512 for SD's factor 8.
        self.max_untiled_latent = max_untiled_latent
        self.default_tiling = Tiling(tile_latent, overlap_latent, max_untiled_latent)
        problem = self.default_tiling.problem()
        if problem:
            raise ValueError(problem)
        # one forward pass at a time (SharedGroupNorm patches the shared model);
        # readers' decodes go before the background encoder's work
        self._lock = PriorityLock()
        self._fp32_copies: dict[int, torch.nn.Module] = {}
        self.batch_size = batch_size or (8 if self.device.type == "cuda" else 1)
        self.fast_decoder: FastDecoder | None = None
        self.decode_calls = 0  # forward passes of a decoder; tests use it to see tiling and batching

    @classmethod
    def load(cls, spec: str = DEFAULT_MODEL, device: str = "auto", **options) -> "Vae":
        model, name = load_autoencoder(spec, "kl")
        config = model.config
        identity = ModelIdentity(
            name=name,
            weights_sha256=fingerprint(model),
            scaling_factor=float(config.scaling_factor),
            latent_channels=int(config.latent_channels),
            spatial_factor=2 ** (len(config.block_out_channels) - 1),
        )
        return cls(model, identity, device=device, **options)

    def background_work(self):
        """Context: the calling thread's VAE work waits while others want the model."""
        return self._lock.background()

    def attach_fast_decoder(self, spec: str = DEFAULT_FAST_DECODER) -> "FastDecoder":
        self.fast_decoder = FastDecoder.load(spec, self)
        return self.fast_decoder

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def tiling_for(self, height: int, width: int) -> Tiling:
        factor = self.identity.spatial_factor
        latent_pixels = -(-height // factor) * -(-width // factor)
        return Tiling() if latent_pixels <= self.max_untiled_latent else self.default_tiling

    # -- forward passes with an fp16 overflow safety net

    def _run_checked(self, module, fn: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, self.dtype)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with self._lock, torch.inference_mode():  # one pass at a time: the model is shared
            out = fn(module, x)
            if self.dtype != torch.float32 and not torch.isfinite(out).all():
                log.warning("non-finite values in %s; recomputing this batch in float32", self.dtype_name)
                twin = self._fp32_copy(module)
                with SharedGroupNorm.mirrored(module, twin):  # a tile keeps its image's statistics
                    out = fn(twin, x.float())
        return out.float()

    def _fp32_copy(self, module: torch.nn.Module) -> torch.nn.Module:
        """A float32 twin for the rare overflowing batch; the shared module is
        never converted in place (other callers may be using it)."""
        if id(module) not in self._fp32_copies:
            twin = copy.deepcopy(module).float()
            for part in twin.modules():  # not a tiled pass's GroupNorm patch, copied with it
                part.__dict__.pop("forward", None)
            self._fp32_copies[id(module)] = twin
        return self._fp32_copies[id(module)]

    def _encode_tensor(self, x: torch.Tensor) -> torch.Tensor:
        return self._run_checked(self.model, lambda m, t: m.encode(t).latent_dist.mode(), x)

    def _decode_tensor(self, z: torch.Tensor) -> torch.Tensor:
        self.decode_calls += 1
        return self._run_checked(self.model, lambda m, t: m.decode(t).sample, z)

    # -- public batch API

    def encode(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, Tiling]]:
        """Encode uint8 images (H, W, 1|3). Images of one padded size share a
        forward pass; large ones are tiled with this Vae's default tiling.
        The model is held one forward pass at a time (see _tiled_pass), so
        callers in other threads interleave with a big image's tiles."""
        factor = self.identity.spatial_factor
        results: list = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):
            height, width = image.shape[:2]
            tiling = self.tiling_for(height, width)
            if tiling.enabled:  # the image stays uint8: each tile is made float on its way in
                pixels = _uint8_planes(_padded_image(image, factor))
                small = _downscale_image_for_stats(pixels, factor, tiling.stats)
                with self._whole_call():
                    tile_pass = self._tiled_pass(self._encode_tensor, self.model.encoder, small)
                    latent = run_tiled(lambda tiles: tile_pass(_normalised(tiles)), pixels, tiling.tile * factor,
                                       tiling.overlap * factor, 1 / factor, self.batch_size, _tiles_of("encode"))
                results[index] = (latent[0].numpy(), tiling)
            else:
                groups.setdefault((-(-height // factor), -(-width // factor)), []).append(index)
        for members in groups.values():
            for first in range(0, len(members), self.batch_size):
                chunk = members[first : first + self.batch_size]
                x = torch.cat([_normalised(_uint8_planes(_padded_image(images[i], factor))) for i in chunk])
                for i, latent in zip(chunk, self._encode_tensor(x)):
                    results[i] = (latent.cpu().numpy(), Tiling())
        return results

    def _whole_call(self):
        """Context for a tiled image: a foreground caller (a reader) holds the
        model through all its tiles, so it never waits behind the encoder
        between two of them; the encoder's lanes give it back after each pass."""
        return nullcontext() if self._lock.in_background() else self._lock

    def _tiled_pass(self, fn: Callable[[torch.Tensor], torch.Tensor], module: torch.nn.Module, small: torch.Tensor):
        """``fn`` for the tiles of one image: the whole image's GroupNorm
        statistics are taken now from ``small`` (a downscaled copy), and every
        later call installs them on ``module`` for its one pass, the model held."""
        norms = SharedGroupNorm(module)
        with self._lock, norms.recording():
            fn(small)

        def tile_pass(tiles: torch.Tensor) -> torch.Tensor:
            with self._lock, norms.applying():
                return fn(tiles)

        return tile_pass

    def decode(
        self, items: Sequence[tuple[np.ndarray, Tiling, tuple[int, int]]], fast: bool = False
    ) -> list[np.ndarray]:
        """Decode (latent, tiling, (height, width)) triples to uint8 (H, W, 3),
        holding the model one forward pass at a time, as encode() does."""
        decoder = self.fast_decoder if fast else None
        if fast and decoder is None:
            raise ModelUnavailable("no fast decoder is loaded; pass --decoder tiny with a TAESD model")
        decode_fn = decoder.decode_tensor if decoder else self._decode_tensor
        factor = self.identity.spatial_factor
        results: list = [None] * len(items)
        groups: dict[tuple, list[int]] = {}
        for index, (latent, tiling, size) in enumerate(items):
            if tiling.enabled:
                z = torch.from_numpy(latent)[None]
                small = _downscale_for_stats(z, 1, tiling.stats, 1)
                image = np.empty((*size, 3), np.uint8)  # filled band by band: never whole in float

                def emit(first_row: int, rows: torch.Tensor, image=image, size=size) -> None:
                    last_row = min(first_row + rows.shape[2], size[0])
                    if first_row < last_row:
                        image[first_row:last_row] = to_uint8(rows[0, :, : last_row - first_row, : size[1]])

                with self._whole_call():
                    tile_pass = self._tiled_pass(decode_fn, decoder.model if decoder else self.model.decoder, small)
                    run_tiled(tile_pass, z, tiling.tile, tiling.overlap, factor, self.batch_size, _tiles_of("decode"),
                              emit)
                results[index] = image
            else:
                groups.setdefault(latent.shape, []).append(index)
        for members in groups.values():
            for first in range(0, len(members), self.batch_size):
                chunk = members[first : first + self.batch_size]
                samples = decode_fn(torch.stack([torch.from_numpy(items[i][0]) for i in chunk]))
                for i, sample in zip(chunk, samples):
                    height, width = items[i][2]
                    results[i] = to_uint8(sample[:, :height, :width].cpu())
        return results


class FastDecoder:
    """AutoencoderTiny (TAESD) decoder for the same latent space: ~100x cheaper."""

    def __init__(self, model, name: str, weights_sha256: bytes, owner: Vae):
        self.model = model.to(owner.device, owner.dtype).eval()
        self.name = name
        self.weights_sha256 = weights_sha256
        self.owner = owner

    @classmethod
    def load(cls, spec: str, owner: Vae) -> "FastDecoder":
        model, name = load_autoencoder(spec, "tiny")
        config = model.config
        factor = config.upsampling_scaling_factor ** (len(config.decoder_block_out_channels) - 1)
        if config.latent_channels != owner.identity.latent_channels or factor != owner.identity.spatial_factor:
            raise ModelMismatch(
                f"fast decoder {name!r} has {config.latent_channels} latent channels and factor {factor}, "
                f"the VAE has {owner.identity.latent_channels} and {owner.identity.spatial_factor}"
            )
        return cls(model, name, fingerprint(model), owner)

    def decode_tensor(self, z: torch.Tensor) -> torch.Tensor:
        self.owner.decode_calls += 1
        scale = self.owner.identity.scaling_factor
        return self.owner._run_checked(self.model, lambda m, t: m.decode(t * scale).sample, z)

