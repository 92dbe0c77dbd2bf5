#!/usr/bin/env python3
"""Encode/decode throughput of the Stable Diffusion VAE on a CUDA GPU.

What it measures
----------------
The VAE that sdfs uses to store images as latents has the architecture of
``stabilityai/sd-vae-ft-mse`` (diffusers ``AutoencoderKL``; the exact diffusers
config is in ``sdfs/codec/configs/sd-vae-ft-mse/config.json``, scaling_factor is the diffusers
default 0.18215).  For 512x512 images at batch sizes 1, 8 and 32 in float16 and
bfloat16 (plus float32 at batch 1 as a reference) it times

* encode: ``vae.encode(x).latent_dist.mode()``  (x: B x 3 x 512 x 512)
* decode: ``vae.decode(z).sample``               (z: B x 4 x 64 x 64)

and reports images/second, milliseconds per batch and the peak CUDA memory
(``torch.cuda.max_memory_allocated``, reset before every configuration; the
number includes the model weights).

RANDOM WEIGHTS: no model hub is reachable from the GPU machine, so the model is
built with ``AutoencoderKL.from_config(sdfs/codec/configs/sd-vae-ft-mse/config.json)`` after
``torch.manual_seed(0)``.  Speed and memory depend only on the architecture and
the tensor shapes, not on the weight values; the output says so too.

Method: model and inputs in ``torch.channels_last``; ``torch.inference_mode``;
warm-up iterations; one calibration call sets a fixed number of timed
iterations (about ``--target-seconds`` per configuration, or ``--iters N``);
``torch.cuda.synchronize()`` before and after the timed loop.  A CUDA
out-of-memory error (or any other error) in one configuration is reported in
that configuration's entry and the run goes on.

``torch.backends.cudnn.benchmark``: by default on CUDA (``--cudnn-benchmark
both``) the whole sweep runs with it True, then the same sweep runs again in a
fresh child process with it False (a fresh process because cuDNN caches the
chosen algorithms per shape), and the table shows both with their ratio.

How to run it on the GPU machine
--------------------------------
That machine has torch with CUDA but not diffusers.  The wheels in ``.whl/``
(diffusers 0.42.1 and its missing pure-Python dependencies, downloaded on a
machine with internet access) are unpacked into a temporary directory that is
put first on ``sys.path``; nothing is installed into the system::

    python3 bench/gpu_throughput.py --wheels .whl --json $OUT/gpu_throughput.json

Takes roughly 1-2 minutes on an H100/H200 (``--time-budget`` caps it, default
170 s; configurations beyond it are reported as skipped).  It writes the JSON
file, a PNG plot next to it (same name, ``.png``; skipped with a note when
matplotlib is missing) and a table on stdout.  The JSON is also rewritten after
every measurement, so a run that is killed still leaves partial results.

Smoke test on a CPU (seconds)::

    python3 bench/gpu_throughput.py --device cpu --tiny --sizes 64 \\
        --batches 1,2 --dtypes float32 --json /tmp/gpu_throughput.json
"""

from __future__ import annotations

import argparse
import atexit
import datetime as _dt
import gc
import glob
import importlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(HERE, os.pardir, "sdfs", "codec", "configs", "sd-vae-ft-mse", "config.json")

# Small AutoencoderKL for CPU smoke tests (--tiny): same block types, 2 levels.
TINY_CONFIG = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [32, 64],
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 32,
    "sample_size": 64,
}

RANDOM_WEIGHTS_NOTE = (
    "RANDOM WEIGHTS: the VAE is built with AutoencoderKL.from_config() after "
    "torch.manual_seed(0); no pretrained sd-vae-ft-mse weights are loaded (no "
    "model hub reachable). Timings and memory depend on architecture and "
    "shapes only; the images/latents produced are meaningless."
)

DTYPE_ALIASES = {
    "float32": "float32", "fp32": "float32", "f32": "float32",
    "float16": "float16", "fp16": "float16", "f16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
}
OPS = ("encode", "decode")


# --------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------
def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def _dtypes(text: str) -> list[str]:
    out = []
    for t in text.split(","):
        t = t.strip().lower()
        if not t:
            continue
        if t not in DTYPE_ALIASES:
            raise argparse.ArgumentTypeError(f"unknown dtype {t!r}")
        out.append(DTYPE_ALIASES[t])
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="SD VAE (sd-vae-ft-mse architecture, random weights) "
        "encode/decode throughput.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--wheels", metavar="DIR", default="",
                   help="directory of .whl files (diffusers and dependencies) "
                   "to unpack into a temp dir and import from")
    p.add_argument("--json", default="gpu_throughput.json",
                   help="where to write the JSON results (PNG plot goes next "
                   "to it with the same name)")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    p.add_argument("--sizes", type=_ints, default=[512],
                   help="comma-separated square image sizes")
    p.add_argument("--batches", type=_ints, default=[1, 8, 32],
                   help="comma-separated batch sizes")
    p.add_argument("--dtypes", type=_dtypes, default=["float16", "bfloat16"],
                   help="comma-separated dtypes (float32, float16, bfloat16)")
    p.add_argument("--fp32-ref-batches", type=_ints, default=[1],
                   help="float32 reference batch sizes added to the sweep "
                   "(empty string: none)")
    p.add_argument("--config", default=DEFAULT_CONFIG,
                   help="diffusers AutoencoderKL config JSON")
    p.add_argument("--tiny", action="store_true",
                   help="use a tiny VAE config (CPU smoke tests)")
    p.add_argument("--warmup", type=int, default=3,
                   help="warm-up iterations per configuration")
    p.add_argument("--iters", type=int, default=0,
                   help="timed iterations per configuration (0: choose so "
                   "that it takes about --target-seconds)")
    p.add_argument("--target-seconds", type=float, default=1.5)
    p.add_argument("--min-iters", type=int, default=3)
    p.add_argument("--max-iters", type=int, default=1000)
    p.add_argument("--cudnn-benchmark", choices=("on", "off", "both"),
                   default=None,
                   help="torch.backends.cudnn.benchmark; 'both' reruns the "
                   "sweep with it off in a fresh child process (default: "
                   "both on CUDA, on elsewhere)")
    p.add_argument("--time-budget", type=float, default=170.0,
                   help="seconds; configurations that would start later are "
                   "reported as skipped")
    p.add_argument("--no-plot", action="store_true", help="do not write a PNG")
    # internal: used for the cudnn.benchmark=False child process
    p.add_argument("--preinstalled", default="", help=argparse.SUPPRESS)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# --------------------------------------------------------------------------
# wheels
# --------------------------------------------------------------------------
def _safe_join(root: str, rel: str) -> str | None:
    rel = rel.replace("\\", "/")
    if rel.startswith("/") or any(part == ".." for part in rel.split("/")):
        return None
    return os.path.join(root, *rel.split("/"))


def _unpack_pure_wheel(path: str, target: str) -> None:
    """Unpack a py3-none-any wheel the way an installer would (purelib)."""
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            name = info.filename
            if name.endswith("/"):
                continue
            parts = name.split("/")
            if parts[0].endswith(".data"):
                # <dist>.data/purelib|platlib/... goes to site-packages;
                # scripts/headers/data are not needed for importing.
                if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                    continue
                name = "/".join(parts[2:])
            dest = _safe_join(target, name)
            if dest is None:
                raise RuntimeError(f"unsafe path {info.filename!r} in {path}")
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with zf.open(info) as src, open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst)


def install_wheels(wheel_dir: str) -> str:
    """Make the wheels in wheel_dir importable; return the directory used."""
    wheels = sorted(glob.glob(os.path.join(wheel_dir, "*.whl")))
    if not wheels:
        sys.exit(f"error: no .whl files in {wheel_dir!r}")
    target = tempfile.mkdtemp(prefix="gpu_throughput_wheels_")
    atexit.register(shutil.rmtree, target, True)
    t0 = time.perf_counter()
    binary = []
    for w in wheels:
        if w.endswith("-none-any.whl"):
            _unpack_pure_wheel(w, target)
        else:
            binary.append(w)
    if binary:  # not expected (diffusers & deps are pure Python); use pip
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps",
             "--no-compile", "--disable-pip-version-check", "--quiet",
             "--target", target, *binary],
            check=True,
        )
    print(f"wheels: {len(wheels)} from {wheel_dir} -> {target} "
          f"({time.perf_counter() - t0:.1f} s): "
          + ", ".join(os.path.basename(w) for w in wheels), flush=True)
    return target


def use_path(path: str) -> None:
    sys.path.insert(0, path)
    importlib.invalidate_caches()


# --------------------------------------------------------------------------
# benchmark
# --------------------------------------------------------------------------
class Bench:
    def __init__(self, args, torch, AutoencoderKL, t_start):
        self.args = args
        self.torch = torch
        self.t_start = t_start
        self.device = torch.device(args.device)
        self.is_cuda = self.device.type == "cuda"
        if self.is_cuda and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        if args.tiny:
            self.config = dict(TINY_CONFIG)
            self.config_source = "tiny (built in)"
        else:
            with open(args.config) as f:
                self.config = json.load(f)
            self.config_source = os.path.relpath(args.config)
        torch.manual_seed(0)
        t0 = time.perf_counter()
        self.base = AutoencoderKL.from_config(self.config).eval()
        self.base.requires_grad_(False)
        self.build_s = time.perf_counter() - t0
        self.n_params = sum(p.numel() for p in self.base.parameters())
        cfg = self.base.config
        self.down = 2 ** (len(cfg.block_out_channels) - 1)
        self.latent_channels = cfg.latent_channels
        self.scaling_factor = float(cfg.scaling_factor)
        self.oom_types = tuple(
            t for t in (getattr(torch, "OutOfMemoryError", None),
                        getattr(torch.cuda, "OutOfMemoryError", None))
            if isinstance(t, type))

    def elapsed(self) -> float:
        return time.perf_counter() - self.t_start

    def sync(self):
        if self.is_cuda:
            self.torch.cuda.synchronize(self.device)

    def free(self):
        gc.collect()
        if self.is_cuda:
            self.torch.cuda.empty_cache()

    def plan(self) -> list[tuple[str, int, int]]:
        a = self.args
        items = []
        for s in a.sizes:
            for b in a.fp32_ref_batches:
                items.append(("float32", b, s))
        for dt in a.dtypes:
            for s in a.sizes:
                for b in a.batches:
                    items.append((dt, b, s))
        seen, order = set(), []
        for it in items:
            if it not in seen:
                seen.add(it)
                order.append(it)
        dorder = list(dict.fromkeys(dt for dt, _, _ in order))
        return sorted(order, key=lambda t: (dorder.index(t[0]), t[2], t[1]))

    def measure(self, model, dtype_name, batch, size, op, cudnn_bench):
        torch, a = self.torch, self.args
        entry = {
            "dtype": dtype_name, "batch": batch, "size": size, "op": op,
            "cudnn_benchmark": cudnn_bench, "status": "ok",
            "images_per_s": None, "ms_per_batch": None, "peak_mem_mb": None,
            "iters": None, "warmup": a.warmup, "timed_s": None,
            "first_call_ms": None, "output_shape": None,
            "output_finite": None, "error": None,
        }
        if self.elapsed() > a.time_budget:
            entry["status"] = "skipped"
            entry["error"] = f"time budget {a.time_budget:.0f} s exhausted"
            return entry
        if size % self.down:
            entry["status"] = "error"
            entry["error"] = f"size {size} not divisible by {self.down}"
            return entry
        dtype = getattr(torch, dtype_name)
        inp = out = fn = None
        self.free()
        if self.is_cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            g = torch.Generator().manual_seed(1234)
            if op == "encode":
                inp = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
            else:
                s = size // self.down
                inp = torch.randn(batch, self.latent_channels, s, s, generator=g)
            inp = inp.to(device=self.device, dtype=dtype).contiguous(
                memory_format=torch.channels_last)

            if op == "encode":
                def fn():
                    return model.encode(inp).latent_dist.mode()
            else:
                def fn():
                    return model.decode(inp).sample

            with torch.inference_mode():
                self.sync()
                t0 = time.perf_counter()
                out = fn()
                self.sync()
                entry["first_call_ms"] = round(
                    (time.perf_counter() - t0) * 1e3, 3)
                for _ in range(max(a.warmup - 1, 0)):
                    out = None
                    out = fn()
                self.sync()
                if a.iters > 0:
                    iters = a.iters
                else:  # calibrate with one more (warm) call
                    t0 = time.perf_counter()
                    out = None
                    out = fn()
                    self.sync()
                    one = max(time.perf_counter() - t0, 1e-6)
                    iters = int(min(a.max_iters, max(
                        a.min_iters, math.ceil(a.target_seconds / one))))
                self.sync()
                t0 = time.perf_counter()
                for _ in range(iters):
                    out = None
                    out = fn()
                self.sync()
                timed = time.perf_counter() - t0
                entry["output_shape"] = list(out.shape)
                entry["output_finite"] = bool(torch.isfinite(out).all().item())
            entry["iters"] = iters
            entry["timed_s"] = round(timed, 4)
            entry["ms_per_batch"] = round(timed / iters * 1e3, 4)
            entry["images_per_s"] = round(batch * iters / timed, 3)
        except Exception as e:  # noqa: BLE001 - report and go on
            is_oom = isinstance(e, self.oom_types) or (
                "out of memory" in str(e).lower())
            entry["status"] = "oom" if is_oom else "error"
            entry["error"] = f"{type(e).__name__}: {str(e).strip()[:300]}"
        finally:
            if self.is_cuda:
                try:
                    entry["peak_mem_mb"] = round(
                        torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
                except Exception:  # noqa: BLE001
                    pass
            inp = out = fn = None
            self.free()
        return entry

    def run(self, cudnn_bench: bool, on_entry) -> list[dict]:
        torch = self.torch
        if self.is_cuda:
            torch.backends.cudnn.benchmark = cudnn_bench
        entries = []
        plan = self.plan()
        for dtype_name in dict.fromkeys(dt for dt, _, _ in plan):
            model = None
            self.free()
            try:
                model = self.base
                if dtype_name != "float32" or self.is_cuda:
                    import copy
                    model = copy.deepcopy(self.base)
                model = model.to(device=self.device,
                                 dtype=getattr(torch, dtype_name),
                                 memory_format=torch.channels_last)
            except Exception as e:  # noqa: BLE001
                for dt, b, s in plan:
                    if dt == dtype_name:
                        for op in OPS:
                            en = {"dtype": dt, "batch": b, "size": s, "op": op,
                                  "cudnn_benchmark": cudnn_bench,
                                  "status": "error",
                                  "error": f"model to {dtype_name}: "
                                  f"{type(e).__name__}: {e}"[:300]}
                            entries.append(en)
                            on_entry(en)
                model = None
                continue
            for dt, b, s in plan:
                if dt != dtype_name:
                    continue
                for op in OPS:
                    en = self.measure(model, dt, b, s, op, cudnn_bench)
                    entries.append(en)
                    on_entry(en)
            model = None
            self.free()
        return entries


# --------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------
def fmt_entry(en: dict) -> str:
    head = (f"{en['dtype']:>8} b={en['batch']:<3} {en['size']}px "
            f"{en['op']:<6} bench={'on ' if en['cudnn_benchmark'] else 'off'}")
    if en["status"] != "ok":
        return f"{head}  {en['status'].upper()}: {en.get('error')}"
    peak = en.get("peak_mem_mb")
    return (f"{head}  {en['images_per_s']:9.2f} img/s  "
            f"{en['ms_per_batch']:9.3f} ms/batch  "
            f"peak {'-' if peak is None else f'{peak:.0f} MB'}  "
            f"iters {en['iters']}  first call {en['first_call_ms']:.1f} ms"
            + ("" if en["output_finite"] else "  (non-finite output)"))


def table(result: dict) -> str:
    ents = result["entries"]
    off = {(e["dtype"], e["batch"], e["size"], e["op"]): e
           for e in ents if e.get("cudnn_benchmark") is False}
    main = [e for e in ents if e.get("cudnn_benchmark") is not False]
    if not main:  # only an "off" run
        main, off = list(off.values()), {}
    show_off = bool(off)
    hdr = (f"{'dtype':<9}{'batch':>5}{'size':>6}  {'op':<7}{'img/s':>10}"
           f"{'ms/batch':>11}{'peak MB':>10}{'iters':>7}")
    if show_off:
        hdr += f"{'img/s off':>12}{'on/off':>8}"
    lines = [hdr, "-" * len(hdr)]
    for e in main:
        key = (e["dtype"], e["batch"], e["size"], e["op"])
        row = f"{e['dtype']:<9}{e['batch']:>5}{e['size']:>6}  {e['op']:<7}"
        if e["status"] == "ok":
            peak = e.get("peak_mem_mb")
            row += (f"{e['images_per_s']:>10.2f}{e['ms_per_batch']:>11.3f}"
                    f"{'-' if peak is None else f'{peak:.0f}':>10}"
                    f"{e['iters']:>7}")
        else:
            row += f"{e['status'].upper():>10}{'':>11}{'':>10}{'':>7}"
        if show_off:
            o = off.get(key)
            if o is None:
                row += f"{'-':>12}{'':>8}"
            elif o["status"] != "ok":
                row += f"{o['status'].upper():>12}{'':>8}"
            else:
                ratio = (f"{e['images_per_s'] / o['images_per_s']:.2f}"
                         if e["status"] == "ok" else "")
                row += f"{o['images_per_s']:>12.2f}{ratio:>8}"
        lines.append(row)
    return "\n".join(lines)


def write_json(path: str, result: dict) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def write_plot(png: str, result: dict) -> str:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:  # noqa: BLE001
        return f"plot skipped: matplotlib not available ({type(e).__name__}: {e})"
    ents = [e for e in result["entries"] if e["status"] == "ok"]
    if not ents:
        return "plot skipped: no successful measurement"
    sizes = sorted({e["size"] for e in ents})
    fig, axes = plt.subplots(len(sizes), 2, figsize=(11, 4.2 * len(sizes)),
                             squeeze=False)
    colors = {"float32": "tab:gray", "float16": "tab:blue",
              "bfloat16": "tab:orange"}
    for r, size in enumerate(sizes):
        for c, op in enumerate(OPS):
            ax = axes[r][c]
            sel = [e for e in ents if e["size"] == size and e["op"] == op]
            batches = sorted({e["batch"] for e in sel})
            dts = list(dict.fromkeys(e["dtype"] for e in sel))
            modes = [m for m in (True, False)
                     if any(bool(e["cudnn_benchmark"]) == m for e in sel)]
            width = 0.8 / max(len(dts) * len(modes), 1)
            k = 0
            for dt in dts:
                for bench in modes:
                    xs, ys = [], []
                    for j, b in enumerate(batches):
                        for e in sel:
                            if (e["dtype"], e["batch"]) == (dt, b) and \
                                    bool(e["cudnn_benchmark"]) == bench:
                                xs.append(j - 0.4 + (k + 0.5) * width)
                                ys.append(e["images_per_s"])
                    k += 1
                    if not xs:
                        continue
                    label = dt + ("" if bench or len(modes) == 1
                                  else " (cudnn.benchmark off)")
                    if len(modes) == 2 and bench:
                        label += " (cudnn.benchmark on)"
                    bars = ax.bar(xs, ys, width * 0.95,
                                  color=colors.get(dt, "tab:green"),
                                  alpha=1.0 if bench else 0.45,
                                  hatch=None if bench else "//", label=label)
                    ax.bar_label(bars, fmt="%.0f", fontsize=7)
            ax.set_xticks(range(len(batches)))
            ax.set_xticklabels([f"batch {b}" for b in batches])
            ax.set_ylabel("images / s")
            ax.set_title(f"{op} {size}x{size}")
            ax.grid(axis="y", alpha=0.3)
            ax.legend(fontsize=7)
    meta = result["meta"]
    fig.suptitle(f"SD VAE (sd-vae-ft-mse arch, RANDOM weights) on "
                 f"{meta['device_name']}\n torch {meta['torch_version']}, "
                 f"diffusers {meta['diffusers_version']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return f"plot: {png}"


def run_child_off(args, argv, preinstalled, remaining, json_path) -> list:
    """Rerun the sweep with cudnn.benchmark=False in a fresh process."""
    child_json = json_path + ".cudnn_off.json"
    cmd = [sys.executable, os.path.abspath(__file__), *argv,
           "--wheels=", "--cudnn-benchmark", "off", "--json", child_json,
           "--no-plot", "--child", f"--time-budget={remaining:.1f}"]
    if preinstalled:
        cmd.append(f"--preinstalled={preinstalled}")
    print(f"\n--- cudnn.benchmark=False sweep in a fresh process "
          f"(budget {remaining:.0f} s) ---", flush=True)
    try:
        rc = subprocess.run(cmd).returncode
    except Exception as e:  # noqa: BLE001
        print(f"cudnn.benchmark=False child failed: {e}", flush=True)
        return []
    try:
        with open(child_json) as f:
            data = json.load(f)
        os.remove(child_json)
    except Exception as e:  # noqa: BLE001
        print(f"cudnn.benchmark=False child (rc {rc}) left no results: {e}",
              flush=True)
        return []
    return [e for e in data.get("entries", [])]


def main(argv=None) -> int:
    t_start = time.perf_counter()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    json_path = args.json

    wheel_dir_used = ""
    if args.preinstalled:
        use_path(args.preinstalled)
        wheel_dir_used = args.preinstalled
    elif args.wheels:
        wheel_dir_used = install_wheels(args.wheels)
        use_path(wheel_dir_used)

    # never touch the network
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

    import torch
    import diffusers
    from diffusers import AutoencoderKL

    mode = args.cudnn_benchmark
    dev_type = torch.device(args.device).type
    if mode is None:
        mode = "both" if dev_type == "cuda" else "on"
    if dev_type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but torch.cuda.is_available() is False "
                 f"(torch {torch.__version__}); use --device cpu for a smoke "
                 "test")

    bench = Bench(args, torch, AutoencoderKL, t_start)

    if bench.is_cuda:
        props = torch.cuda.get_device_properties(bench.device)
        device_name = torch.cuda.get_device_name(bench.device)
        dev_meta = {
            "device_name": device_name,
            "device_capability": list(torch.cuda.get_device_capability(
                bench.device)),
            "device_total_mem_mb": round(props.total_memory / 2**20),
            "cuda_version": torch.version.cuda,
            "cudnn_version": torch.backends.cudnn.version(),
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        }
    else:
        device_name = f"cpu ({platform.processor() or platform.machine()}, " \
                      f"{torch.get_num_threads()} threads)"
        dev_meta = {"device_name": device_name}
    attn = sorted({type(p).__name__
                   for p in bench.base.attn_processors.values()}) \
        if hasattr(bench.base, "attn_processors") else []
    meta = {
        "weights": "random",
        "note": RANDOM_WEIGHTS_NOTE,
        "model": "AutoencoderKL, stabilityai/sd-vae-ft-mse architecture"
                 if not args.tiny else "AutoencoderKL, TINY smoke-test config",
        "config_source": bench.config_source,
        "config": bench.config,
        "scaling_factor": bench.scaling_factor,
        "n_params": bench.n_params,
        "attn_processors": attn,
        "seed": 0,
        "device": str(bench.device),
        **dev_meta,
        "torch_version": torch.__version__,
        "diffusers_version": diffusers.__version__,
        "diffusers_path": os.path.dirname(diffusers.__file__),
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "wheels_dir": args.wheels or None,
        "memory_format": "channels_last",
        "inference_mode": True,
        "encode": "vae.encode(x).latent_dist.mode()",
        "decode": "vae.decode(z).sample",
        "peak_mem_note": "torch.cuda.max_memory_allocated() after "
                         "reset_peak_memory_stats() per (dtype, batch, op); "
                         "includes the model weights",
        "cudnn_benchmark_mode": mode,
        "warmup": args.warmup,
        "iters": args.iters or f"auto (~{args.target_seconds} s)",
        "time_budget_s": args.time_budget,
        "argv": [os.path.basename(__file__), *argv],
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(
            timespec="seconds"),
    }
    result = {"meta": meta, "complete": False, "entries": []}

    tag = "[child] " if args.child else ""
    if not args.child:
        print("=" * 78)
        print(RANDOM_WEIGHTS_NOTE)
        print("=" * 78)
        print(f"device   : {device_name} ({bench.device})")
        print(f"torch    : {torch.__version__}"
              + (f"  cuda {dev_meta.get('cuda_version')}  cudnn "
                 f"{dev_meta.get('cudnn_version')}" if bench.is_cuda else ""))
        print(f"diffusers: {diffusers.__version__} from "
              f"{meta['diffusers_path']}")
        print(f"model    : {meta['model']} ({bench.config_source}), "
              f"{bench.n_params / 1e6:.1f} M params, scaling_factor "
              f"{bench.scaling_factor}, attention {','.join(attn) or '-'}, "
              f"built in {bench.build_s:.1f} s")
        print(f"sweep    : {len(bench.plan())} (dtype, batch, size) x "
              f"{len(OPS)} ops, cudnn.benchmark {mode}, json {json_path}",
              flush=True)

    def on_entry(en):
        result["entries"].append(en)
        print(tag + fmt_entry(en), flush=True)
        write_json(json_path, result)

    bench_first = mode in ("on", "both")
    bench.run(bench_first, on_entry)

    if mode == "both":
        remaining = args.time_budget - bench.elapsed()
        bench.base = None
        bench.free()
        if remaining <= 5:
            print("cudnn.benchmark=False sweep skipped: time budget exhausted",
                  flush=True)
        else:
            if bench.is_cuda:
                # the child needs the GPU memory
                torch.cuda.empty_cache()
            for en in run_child_off(args, argv, wheel_dir_used if
                                    args.wheels or args.preinstalled else "",
                                    remaining, json_path):
                result["entries"].append(en)

    result["complete"] = True
    result["meta"]["total_s"] = round(bench.elapsed(), 2)
    write_json(json_path, result)
    if args.child:
        return 0

    print()
    print(RANDOM_WEIGHTS_NOTE)
    print(f"device {device_name}, torch {torch.__version__}, diffusers "
          f"{diffusers.__version__}; images/s, ms per batch, peak CUDA memory "
          f"(incl. weights); cudnn.benchmark "
          f"{'on (off in the img/s off column)' if mode == 'both' else mode}")
    print(table(result))
    print(f"\njson: {json_path}")
    if not args.no_plot:
        png = os.path.splitext(json_path)[0] + ".png"
        try:
            print(write_plot(png, result))
        except Exception as e:  # noqa: BLE001
            print(f"plot failed: {type(e).__name__}: {e}")
    print(f"total {bench.elapsed():.1f} s")
    ok = any(e["status"] == "ok" for e in result["entries"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
