"""The ``sdfs`` command.

Exit codes: 0 success; 1 any other error; 2 bad usage; 3 input is not a
latent candidate (stored verbatim by a mount); 4 VAE cannot be loaded;
5 record made with another VAE; 6 corrupt or unsupported record;
7 output could not be encoded at its recorded length.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from . import __version__, memory
from .errors import SdfsError, UsageError

log = logging.getLogger("sdfs")


def _add_model_options(parser: argparse.ArgumentParser, encoding: bool) -> None:
    from .codec.images import DEFAULT_MAX_PIXELS
    from .codec.latents import DEFAULT_QUALITY, QUALITIES
    from .codec.defaults import DEFAULT_FAST_DECODER, DEFAULT_MODEL

    group = parser.add_argument_group("model")
    group.add_argument("--model", default=DEFAULT_MODEL, help="VAE: hub id[@revision], diffusers folder or weights file (default %(default)s)")
    group.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default %(default)s)")
    group.add_argument("--decoder", choices=("full", "tiny"), default="full", help="decoder that serves reads: the VAE's own or the fast TAESD one")
    group.add_argument("--fast-decoder-model", default=DEFAULT_FAST_DECODER, help="AutoencoderTiny used by --decoder tiny (default %(default)s)")
    if encoding:
        group.add_argument("--quality", choices=tuple(QUALITIES), default=DEFAULT_QUALITY, help="latent quantization (default %(default)s)")
        group.add_argument("--fidelity-floor", default="23:0.65", help="minimum PSNR[:SSIM] to keep the latent (default %(default)s)")
        group.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="larger images are not latent candidates (default %(default)s)")


def _load_codec(args: argparse.Namespace):
    from .codec.codec import Codec
    from .codec.guard import Floor
    from .codec.vae import Vae

    vae = Vae.load(args.model, device=args.device)
    if args.decoder == "tiny":
        vae.attach_fast_decoder(args.fast_decoder_model)
    options = {}
    if hasattr(args, "quality"):
        try:
            floor = Floor.parse(args.fidelity_floor)
        except ValueError as error:
            raise SdfsError(str(error)) from None
        options = dict(quality=args.quality, floor=floor, max_pixels=args.max_pixels)
    return Codec(vae, decoder=args.decoder, **options)


def _read_input(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise SdfsError(f"cannot read {path}: {error.strerror or error}") from None


def _write_output(path: Path, data: bytes) -> None:
    try:
        path.write_bytes(data)
    except OSError as error:
        raise SdfsError(f"cannot write {path}: {error.strerror or error}") from None


def cmd_encode(args: argparse.Namespace) -> int:
    from .codec.images import probe
    from .errors import NotACandidate

    data = _read_input(args.image)
    try:
        probe(data, args.max_pixels)  # cheap: refuse non-candidates before loading a model
    except NotACandidate as reason:
        raise NotACandidate(f"{args.image} is not a latent candidate: {reason}") from None
    result = _load_codec(args).encode(data)
    _write_output(args.record, result.record)
    print(f"{args.image}: {result.verdict.label}: {result.verdict.reason}")
    print(
        f"  record {len(result.record):,} B ({result.bpp:.4f} bpp) from {result.original_length:,} B; "
        f"decodes to {result.output_length:,} B"
    )
    return 0


# what an output name's extension promises; a record decodes to its original's format
_IMAGE_SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".jfif": "JPEG",
                   ".webp": "WebP", ".gif": "GIF", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF",
                   ".avif": "AVIF", ".heic": "HEIC"}
_SUFFIX_FOR = {"PNG": ".png", "JPEG": ".jpg"}


def _check_output_name(record_path: Path, image: Path, fmt: str) -> None:
    """A record gives back an image in its original's format; an output name
    that promises another (a PNG under out.jpg) is refused, not written."""
    promised = _IMAGE_SUFFIXES.get(image.suffix.lower())
    if promised is not None and promised != fmt:
        raise UsageError(
            f"{record_path} decodes to a {fmt} image (the original's format), not {promised}: "
            f"name the output {image.with_suffix(_SUFFIX_FOR.get(fmt, image.suffix)).name}, or convert it afterwards"
        )


def cmd_decode(args: argparse.Namespace) -> int:
    from .codec import container

    data = _read_input(args.record)
    record = container.unpack(data)  # refuse corrupt records before loading a model
    _check_output_name(args.record, args.image, record.spec.format)
    image = _load_codec(args).decode(data)
    _write_output(args.image, image)
    figures = record.measurement_for(args.decoder)
    quality = f"; measured at encode: {figures.fidelity}" if figures else ""
    print(f"{args.image}: {len(image):,} B {record.spec.format} {record.spec.width}x{record.spec.height} {record.spec.mode}{quality}")
    return 0


def cmd_mount(args: argparse.Namespace) -> int:
    from .fs.mount import mount

    return mount(args)


def cmd_umount(args: argparse.Namespace) -> int:
    from .fs.mount import clear_stale_only, umount_command

    if args.stale:
        clear_stale_only(args.mountpoint)
    else:
        umount_command(args.mountpoint)
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from .fs.control import sync

    return sync(args.mountpoint, args.timeout)


def cmd_import(args: argparse.Namespace) -> int:
    from .importer import run_import

    return run_import(args)


def cmd_stats(args: argparse.Namespace) -> int:
    from .stats import run_stats

    return run_stats(args)


def cmd_fsck(args: argparse.Namespace) -> int:
    from .fsck import run_fsck

    return run_fsck(args)


def cmd_compact(args: argparse.Namespace) -> int:
    from .compact import run_compact

    return run_compact(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_codec_bench

    return run_codec_bench(args)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error in the journal (a service's bad --config
    file, say) is one line at priority err instead of usage text at info."""

    def error(self, message: str):
        if _log_style() == "journal":
            self.exit(2, f"<3>{self.prog}: error: {message}\n")
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sdfs", description="Store images as Stable Diffusion VAE latents.")
    parser.add_argument("--version", action="version", version=f"sdfs {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug with tracebacks)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    encode = commands.add_parser("encode", help="encode one PNG/JPEG into a latent record")
    encode.add_argument("image", type=Path)
    encode.add_argument("record", type=Path)
    _add_model_options(encode, encoding=True)
    encode.set_defaults(run=cmd_encode)

    decode = commands.add_parser("decode", help="decode a latent record back into an image file")
    decode.add_argument("record", type=Path)
    decode.add_argument("image", type=Path)
    _add_model_options(decode, encoding=False)
    decode.set_defaults(run=cmd_decode)

    mount = commands.add_parser("mount", help="mount a store: images copied in are kept as latents")
    mount.add_argument("store", type=Path, nargs="?", help="the store folder (or `store` in --config)")
    mount.add_argument("mountpoint", type=Path, nargs="?", help="where to mount it (or `mountpoint` in --config)")
    mount.add_argument("--config", type=Path, help="TOML file whose keys are these options (e.g. /etc/sdfs/NAME.toml)")
    _add_model_options(mount, encoding=True)
    mount.add_argument("--cache-size", type=int, default=512, metavar="MB", help="decoded-image cache (default %(default)s MB)")
    mount.add_argument("--foreground", action="store_true", help="stay in the foreground (systemd, debugging)")
    mount.add_argument("--allow-other", action="store_true", help="let other users in, with kernel permission checks")
    mount.set_defaults(run=cmd_mount, parser=mount, required=("store", "mountpoint"))

    umount = commands.add_parser("umount", help="unmount cleanly")
    umount.add_argument("mountpoint", type=Path, nargs="?")
    umount.add_argument("--config", type=Path, help="take the mountpoint from this `sdfs mount` configuration")
    umount.add_argument("--stale", action="store_true", help="only clear a mount whose daemon died; do nothing otherwise")
    # --config takes the mount's own file (the unit's /etc/sdfs/NAME.toml): read
    # it as `mount` would, keep the keys umount knows (mountpoint)
    umount.set_defaults(run=cmd_umount, parser=umount, config_parser=mount, required=("mountpoint",))

    sync = commands.add_parser("sync", help="wait until a mount has encoded everything written to it")
    sync.add_argument("mountpoint", type=Path)
    sync.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="give up after this long (exit 1)")
    sync.set_defaults(run=cmd_sync)

    import_ = commands.add_parser("import", help="copy files and folders into a store without mounting it (batched, resumable)")
    import_.add_argument("sources", type=Path, nargs="+", metavar="SRC")
    import_.add_argument("store", type=Path, metavar="STORE")
    import_.add_argument("--into", default="/", metavar="DIR", help="folder inside the store to import into (default /)")
    import_.add_argument("--batch-size", type=int, default=8, help="images encoded per forward pass (default %(default)s; 32 suits a GPU)")
    import_.add_argument("--config", type=Path, help="TOML file whose keys are these options")
    _add_model_options(import_, encoding=True)
    cluster = import_.add_argument_group("Ray (pip install 'sdfs[ray]')")
    cluster.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                         help="encode on a Ray cluster: `auto` or HOST:PORT joins one; no address starts a local one")
    cluster.add_argument("--ray-actors", type=int, default=None, metavar="N",
                         help="encoder actors, each holding one model (default: one per GPU, else 1)")
    cluster.add_argument("--sources-shared", action="store_true",
                         help="every Ray node sees the sources at the same paths: workers read them (else the "
                              "driver's node reads them and Ray ships the bytes)")
    import_.set_defaults(run=cmd_import, parser=import_)

    stats = commands.add_parser("stats", help="what a store holds: kinds, bytes, savings, fidelity, cache")
    stats.add_argument("target", type=Path, metavar="STORE|MOUNTPOINT")
    stats.add_argument("--json", action="store_true", help="machine-readable output")
    stats.add_argument("--plot", type=Path, metavar="PNG", help="also draw the PSNR/SSIM histograms into this PNG")
    stats.set_defaults(run=cmd_stats)

    fsck = commands.add_parser(
        "fsck",
        help="check a store's structure and records; --repair fixes what it reports "
        "(exit 0 clean, 1 all repaired, 4 problems left, 8 could not check)",
        epilog="exit codes: 0 no problems; 1 problems found and all repaired; 4 problems left (not repaired "
        "or not repairable); 8 the check could not run (store missing, locked or unreadable). "
        "Lost and unreadable files are moved to /lost+found in the store.",
    )
    fsck.add_argument("store", type=Path)
    fsck.add_argument("--decode", action="store_true", help="also decode every record (needs the model)")
    fsck.add_argument("--repair", action="store_true", help="fix what the check reports (needs the store unmounted)")
    fsck.add_argument("--json", action="store_true", help="machine-readable report")
    _add_model_options(fsck, encoding=False)
    fsck.set_defaults(run=cmd_fsck)

    compact = commands.add_parser(
        "compact", help="shrink data.mdb to the store's live size (needs the store unmounted)",
        description="LMDB keeps the pages that deleted files freed for reuse, so data.mdb never shrinks by "
        "itself (`sdfs stats` shows its size and the part in use). compact rewrites it with only the live "
        "pages and swaps it in atomically; it needs free disk space for the copy.",
    )
    compact.add_argument("store", type=Path)
    compact.set_defaults(run=cmd_compact)

    bench = commands.add_parser("bench", help="benchmarks")
    bench_kinds = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")
    codec = bench_kinds.add_parser("codec", help="bytes, bpp, speed and memory over an image folder")
    codec.add_argument("--images", type=Path, default=None, help="folder of PNG/JPEG (default: ../shared/bench/kodak)")
    codec.add_argument("--out", type=Path, default=Path("bench/out"), help="where JSON and PNG go (default %(default)s)")
    codec.add_argument("--model", default=None, help="real VAE weights: adds PSNR/MS-SSIM against JPEG, WebP and AVIF")
    codec.add_argument("--full-size-images", type=int, default=None, help="images coded with the full-size random-weight model (default: all)")
    codec.add_argument("--decode-timing-images", type=int, default=2, help="of those, how many also time a full-size decode (~25 s each on a CPU; default %(default)s)")
    codec.add_argument("--device", default="auto")
    codec.set_defaults(run=cmd_bench)
    return parser


# loggers that say what a long-running mount is doing (loading, mounted,
# unmounting, what is left queued): INFO by default in a service's log. The
# per-file lines (decodes, encoder verdicts) stay behind -v.
_LIFECYCLE_LOGGERS = ("sdfs.fs.mount", "sdfs.service")
_PRIORITIES = ((logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))  # syslog err, warning, info


def _priority(levelno: int) -> int:
    return next((priority for level, priority in _PRIORITIES if levelno >= level), 7)  # else debug


class _JournalFormatter(logging.Formatter):
    """``<N>`` on every line (journald's SyslogLevelPrefix=, on by default,
    turns it into the entry's priority, so `journalctl -p warning` works, also
    for a traceback's lines); no timestamp: the journal has its own."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines() or [""])


def _log_style() -> str:
    from .service import stderr_is_journal

    return "journal" if stderr_is_journal() else "terminal"


def configure_logging(verbosity: int, style: str | None = None) -> None:
    """Log to stderr in one of three styles: ``terminal`` ("sdfs: message"),
    ``journal`` (stderr is systemd's journal stream, see sdfs.service) or
    ``file`` (a background mount's STORE/sdfs.log: timestamps, a file has no
    other clock). ``style`` None detects the journal. In the journal and the
    file, the mount's lifecycle is logged at INFO even without -v."""
    style = style or _log_style()
    level = logging.WARNING - 10 * verbosity
    handler = logging.StreamHandler(sys.stderr)
    if style == "journal":
        handler.setFormatter(_JournalFormatter("%(levelname)s: %(message)s" if verbosity else "%(message)s"))
    elif style == "file":
        handler.setFormatter(logging.Formatter("%(asctime)s sdfs[%(process)d]: %(levelname)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("sdfs: %(levelname)s: %(message)s" if verbosity else "sdfs: %(message)s"))
    logging.basicConfig(level=max(level, logging.DEBUG), handlers=[handler], force=True)
    service_log = style in ("journal", "file") and verbosity == 0
    for name in _LIFECYCLE_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if service_log else logging.NOTSET)


def _print_error(message: str) -> None:
    """The one line a failed command prints (priority err in the journal)."""
    prefix = "<3>" if _log_style() == "journal" else ""
    print(f"{prefix}sdfs: {message}", file=sys.stderr)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse; options from a --config file become defaults, so flags win."""
    from .config import ConfigError, load

    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None) is not None:
        try:
            defaults = load(args.config, getattr(args, "config_parser", args.parser))
        except ConfigError as error:
            args.parser.error(str(error))
        known = {action.dest for action in args.parser._actions}
        args.parser.set_defaults(**{key: value for key, value in defaults.items() if key in known})
        args = parser.parse_args(argv)
    missing = [name for name in getattr(args, "required", ()) if getattr(args, name) is None]
    if missing:
        args.parser.error(f"missing {' and '.join(m.upper() for m in missing)} (give it, or put it in --config)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.verbose)
    memory.bound_heap()  # big files pass through mount and import in chunks: their memory must go back
    try:
        return args.run(args)
    except SdfsError as error:
        log.debug("details", exc_info=True)
        _print_error(f"error: {error}")
        return error.exit_code
    except KeyboardInterrupt:
        print("sdfs: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `sdfs stats STORE | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (MemoryError, RuntimeError, OSError) as error:  # e.g. out of (GPU) memory, a full disk
        log.debug("details", exc_info=True)
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        _print_error(f"error: {type(error).__name__}: {first_line} (run with -vv for details)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
