"""`sdfs import --ray`: the encode spread over a Ray cluster, the store
written by one process.

What scales is the encode (a forward pass per image on a GPU); what does not
is the store (one LMDB writer). So the driver, the `sdfs import` process,
does everything a plain import does except the encode: it lists and skips
sources, screens them by their head, stores the files that cannot be images,
and commits the results with `Store.put_files`, a transaction for each block
of batches that comes back. Ray Data carries the possible images to a pool
of encoder actors (one per GPU), each holding a loaded Codec, and streams
back what `judge` decided.

Where the bytes come from: with ``--sources-shared`` (every node sees the same
paths) the actors read the files themselves; otherwise tasks pinned to the
driver's node read them and Ray's object store ships them.

Failures: Ray Data restarts an actor that dies and runs its batch again; the
driver commits a file at most once (a key seen before is dropped) and reports
files no result came back for, which a rerun imports (the quick check skips
the rest).

Ray is an optional extra (``pip install 'sdfs[ray]'``): nothing else in sdfs
imports this module.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from .errors import SdfsError
from .ingest import Outcome, judge, model_for_store

log = logging.getLogger(__name__)

INSTALL_HINT = "--ray needs Ray, an optional extra: pip install 'sdfs[ray]'"
LOCAL = "local"  # --ray without an address: a Ray instance of this machine's own, for this import
BLOCK_FILES = 256  # files in a block of work that Ray carries (see blocks)
BLOCKS_PER_ACTOR = 4  # at least, where there are enough files: no actor idles while another has a long queue
BLOCK_BYTES = 64 << 20  # and their bytes, read whole, unless one batch alone is larger
INIT_DEATHS_TOLERATED = 5  # actors that crash while loading the model (out of memory, say), in a row, before giving up


def require_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (the extra installs ray[data]: pyarrow and friends)
    except ImportError:
        raise SdfsError(INSTALL_HINT) from None
    return ray


@dataclass(frozen=True)
class CodecOptions:
    """What an actor needs to load the codec the driver would have loaded."""

    model: str
    device: str
    decoder: str
    fast_decoder_model: str
    quality: str
    fidelity_floor: str
    max_pixels: int

    @classmethod
    def from_args(cls, args) -> "CodecOptions":
        return cls(**{name: getattr(args, name) for name in cls.__dataclass_fields__})

    def load(self):
        import argparse

        from .cli import _load_codec

        return _load_codec(argparse.Namespace(**asdict(self)))


@dataclass(frozen=True)
class Encoded:
    """What came back for one source: its outcome, or why it could not be read."""

    key: int  # the source's index in the list given to `encode`
    outcome: Outcome | None  # None: the worker could not read the file (error says why)
    original: bytes  # the file's bytes where the outcome keeps them (not a latent), else b""
    size: int  # bytes the worker read
    error: str
    codec_failed: bool  # the error is the worker's codec's (said once per worker), not this file's
    model: str  # the worker's VAE as the store's meta.model (JSON)
    worker: str  # which actor: host, pid


# -- on the workers


def _read_candidate(path: str) -> bytes:
    from .importer import _open_regular, _read_to_end

    fd, _ = _open_regular(Path(path))
    try:
        return _read_to_end(fd, b"")
    finally:
        os.close(fd)


def _read_group(paths) -> tuple[list[bytes], list[str]]:
    """The files at ``paths``: their bytes, or (b"" and) why they could not be read."""
    data, errors = [], []
    for path in paths:
        try:
            data.append(_read_candidate(str(path)))
            errors.append("")
        except OSError as error:
            data.append(b"")
            errors.append(error.strerror or str(error))
    return data, errors


def read_sources(rows: dict) -> dict:
    """Ray Data stage pinned to the driver's node: each row's paths -> bytes, or the error."""
    read = [_read_group(paths) for paths in rows["paths"]]
    return {"keys": rows["keys"], "groups": rows["groups"], "data": [data for data, _ in read],
            "errors": [errors for _, errors in read]}


class RayEncoder:
    """One encoder actor: loads the codec once, encodes and judges batches.

    It never raises: Ray would run a failed batch again forever (and print a
    traceback each time). A codec that cannot load or a batch that cannot be
    encoded (out of GPU memory, say) comes back as an error in every row,
    which the driver says once per worker; those files wait for a rerun."""

    COLUMNS = ("key", "verdict", "record", "latent", "output_length", "log_level", "original", "size", "error",
               "codec_failed", "model", "worker")

    def __init__(self, options: dict):
        started = time.monotonic()
        self.worker = f"{socket.gethostname()} pid {os.getpid()}"
        self.codec, self.model, self.broken = None, "", ""
        try:
            import ray

            if ray.get_gpu_ids() and options["device"].startswith("cuda:"):
                options = {**options, "device": "cuda"}  # Ray shows each GPU actor one GPU: its own, as cuda:0
            self.codec = CodecOptions(**options).load()
            self.model = json.dumps(model_for_store(self.codec.vae.identity), sort_keys=True)
            log.info("%s: codec loaded in %.1f s", self.worker, time.monotonic() - started)
        except Exception as error:  # noqa: BLE001 (see the class's docstring)
            self.broken = f"cannot load the codec: {_first_line(error)}"

    def __call__(self, rows: dict) -> dict:
        """Each row is a block: batches of the import (importer._batches,
        bounded in files and bytes) one after another, ``groups`` saying how
        many files each has. One row comes back per file."""
        columns = {name: [] for name in self.COLUMNS}
        for i, keys in enumerate(rows["keys"]):
            keys = [int(k) for k in keys]
            if "data" in rows:  # read on the driver's node
                blobs, errors = [bytes(b) for b in rows["data"][i]], [str(e) for e in rows["errors"][i]]
            else:  # --sources-shared: read here
                blobs, errors = _read_group(rows["paths"][i])
            start = 0
            for size in rows["groups"][i]:
                end = start + int(size)
                for name, values in self._encode(keys[start:end], blobs[start:end], errors[start:end]).items():
                    columns[name].extend(values)
                start = end
        return columns

    def _encode(self, keys: list[int], blobs: list[bytes], errors: list[str]) -> dict:
        if self.broken:
            return self._rows(keys, blobs, [self.broken] * len(keys), {}, codec_failed=True)
        readable = [i for i, error in enumerate(errors) if not error]
        try:
            results = self.codec.encode_many([blobs[i] for i in readable]) if readable else []
        except Exception as error:  # noqa: BLE001
            why = f"cannot encode a batch of {len(readable)}: {_first_line(error)}"
            return self._rows(keys, blobs, [why] * len(keys), {}, codec_failed=True)
        outcomes = {i: judge(blobs[i], result) for i, result in zip(readable, results)}
        return self._rows(keys, blobs, errors, outcomes, codec_failed=False)

    def _rows(self, keys: list[int], blobs: list[bytes], errors: list[str], outcomes: dict[int, Outcome],
              codec_failed: bool) -> dict:
        columns = {name: [] for name in self.COLUMNS}
        for i, key in enumerate(keys):
            outcome = outcomes.get(i)
            latent = outcome is not None and outcome.record is not None
            row = dict(key=key, verdict=outcome.verdict if outcome else "",
                       record=outcome.record if latent else b"", latent=latent,
                       output_length=outcome.output_length if outcome else 0,
                       log_level=outcome.log_level if outcome else logging.WARNING,
                       original=b"" if latent or outcome is None else blobs[i], size=len(blobs[i]),
                       error=errors[i], codec_failed=codec_failed, model=self.model, worker=self.worker)
            for name, value in row.items():
                columns[name].append(value)
        return columns


# -- on the driver


@contextmanager
def connected(address: str, verbose: int):
    """Ray, joined to the cluster at ``address`` ("auto", HOST:PORT, ray://...)
    or to a local instance started for this import (LOCAL), until the block ends."""
    ray = require_ray()
    quiet = verbose == 0
    options = dict(include_dashboard=False, log_to_driver=not quiet,
                   logging_level=logging.ERROR if quiet else logging.INFO)
    reaper = None
    if quiet:  # Ray's C++ side logs to stderr past Python's logging (a warning for every import); -v shows it
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    try:
        if address == LOCAL:  # what this instance starts must end with this process, even on kill -9
            reaper = subprocess.Popen([sys.executable, "-m", "sdfs.reaper", str(os.getpid())], stdin=subprocess.PIPE,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            ray.init(address="local", **options)  # not RAY_ADDRESS's cluster, nor one `ray start` left running
        else:
            ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as error:
        if reaper is not None:
            reaper.stdin.close()
        raise SdfsError(f"cannot join the Ray cluster at {address}: {_first_line(error)}; start one with `ray start --head` "
                        f"on its head node, or give --ray without an address for a local one") from None
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = verbose > 1  # sdfs's own progress line says how far it is
    context.print_on_execution_start = False
    if quiet:  # Ray Data's own loggers do not propagate to ours
        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield ray
    finally:
        ray.shutdown()
        if reaper is not None:
            reaper.stdin.close()


def resources(ray, device: str, actors: int | None) -> tuple[int, dict]:
    """How many encoder actors, and what each asks Ray for: a GPU each where
    the cluster has GPUs (and --device is not cpu), else a share of a node's CPUs."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if device.startswith("cuda") and not gpus:
        raise SdfsError(f"--device {device}: the Ray cluster has no GPU; leave --device out, or give cpu")
    use_gpus = gpus > 0 and not device.startswith("cpu")
    count = actors or (gpus if use_gpus else 1)
    if use_gpus:
        return count, {"num_gpus": 1}
    node_cpus = [int(node["Resources"].get("CPU", 0)) for node in ray.nodes() if node.get("Alive")]
    largest, total = max(node_cpus, default=1), sum(node_cpus) or 1
    return count, {"num_cpus": max(1, min(largest, total // count))}  # an actor lives on one node


def live_actors(ray) -> int | None:
    """Encoder actors alive now (GCS's actor table; None where Ray cannot say)."""
    try:
        from ray._private import state

        job = ray.get_runtime_context().get_job_id()
        return sum(1 for actor in state.actors().values()
                   if actor.get("State") == "ALIVE" and RayEncoder.__name__ in str(actor.get("ActorClassName"))
                   and actor.get("JobID") == job)
    except Exception:  # a private API: the count is a nicety, never a failure
        return None


def encode(ray, entries: list, groups: list[list[int]], options: CodecOptions, actors: int | None,
           sources_shared: bool) -> Iterator[list[Encoded]]:
    """Encode the sources ``entries`` (importer.Entry) on the cluster, in the
    batches ``groups`` (lists of indices into ``entries``). Yields the results
    as they come, in no set order; after a failure Ray may repeat some."""
    from ray.data import ActorPoolStrategy, DataContext

    count, per_actor = resources(ray, options.device, actors)
    rows = [{"keys": [key for group in block for key in group], "groups": [len(group) for group in block],
             # sent whole: workers of a cluster started elsewhere do not share this process's folder
             "paths": [os.path.abspath(entries[key].source) for group in block for key in group]}
            for block in blocks(groups, [entry.st.st_size for entry in entries], count)]
    context = DataContext.get_current()
    if hasattr(context, "max_consecutive_actor_init_deaths"):  # Ray >= 2.5x: else one OOM while loading ends it all
        context.max_consecutive_actor_init_deaths = INIT_DEATHS_TOLERATED
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows))  # a row a block
    if not sources_shared:  # read where the files are: on this node (each node offers a resource named after its address)
        here = {f"node:{ray.util.get_node_ip_address()}": 0.001}
        dataset = dataset.map_batches(read_sources, batch_size=1, num_cpus=0, resources=here)
    dataset = dataset.map_batches(RayEncoder, fn_constructor_kwargs={"options": asdict(options)},
                                  batch_size=1, compute=ActorPoolStrategy(size=count), **per_actor)
    log.info("encoding %d files on Ray: %d actor(s), each with %s", len(entries), count,
             ", ".join(f"{v} {k.removeprefix('num_')}" for k, v in per_actor.items()))
    try:
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
            yield [_encoded(batch, i) for i in range(len(batch["key"]))]
    except Exception as error:  # noqa: BLE001  Ray's, and Ray Data's own (not all are RayError); ours end the generator elsewhere
        if isinstance(error, SdfsError):
            raise
        raise SdfsError(f"the Ray encode failed: {_first_line(error)}; what was committed stays: "
                        f"run the same import again to finish") from None


def blocks(groups: list[list[int]], sizes: list[int], actors: int) -> list[list[list[int]]]:
    """The batches ``groups`` (of keys, whose files have ``sizes``) packed in
    blocks of whole batches: up to BLOCK_FILES files and BLOCK_BYTES (a batch
    at least), and small enough that each of the ``actors`` gets a few.
    Ray Data pays for each block (a task, objects, the driver's bookkeeping):
    a block a batch of 8 capped one driver at 700 results/s on this machine
    (bench/ray_import.py). A killed actor's block is what runs again."""
    share = -(-len(sizes) // (BLOCKS_PER_ACTOR * max(1, actors)))
    cap = max(1, min(BLOCK_FILES, share))
    packed, block, files, nbytes = [], [], 0, 0
    for group in groups:
        weight = sum(sizes[key] for key in group)
        if block and (files + len(group) > cap or nbytes + weight > BLOCK_BYTES):
            packed.append(block)
            block, files, nbytes = [], 0, 0
        block.append(group)
        files += len(group)
        nbytes += weight
    if block:
        packed.append(block)
    return packed


def _encoded(batch: dict, i: int) -> Encoded:
    error = str(batch["error"][i])
    latent = bool(batch["latent"][i])
    outcome = None if error else Outcome(str(batch["verdict"][i]), bytes(batch["record"][i]) if latent else None,
                                         int(batch["output_length"][i]), int(batch["log_level"][i]))
    return Encoded(int(batch["key"][i]), outcome, bytes(batch["original"][i]), int(batch["size"][i]), error,
                   bool(batch["codec_failed"][i]), str(batch["model"][i]), str(batch["worker"][i]))


def _first_line(error: BaseException) -> str:
    """The user's part of a Ray error: the innermost cause's message."""
    cause = getattr(error, "cause", None) or error.__cause__
    text = str(cause if cause is not None else error).strip()
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith(("Traceback", "  "))]
    return lines[-1] if lines else type(error).__name__
