"""The driver's side of `sdfs import --ray`: what may run, and what comes back
from the encoder actors (sdfs.cluster), committed as a plain import commits.

The driver trusts nothing a worker sends it blindly: a file whose result came
twice (Ray repeats a batch whose actor died) is committed once; a result made
with another VAE than the store's is refused, naming the worker; files no
result came back for are counted as failed, for a rerun to finish.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time

from . import cluster
from .errors import ModelMismatch, SdfsError
from .importer import Entry, Summary, _batches, _import_batch, _Read, _store_batch
from .store import Store

log = logging.getLogger(__name__)

_HOST_PORT = re.compile(r"^[\w.\-]+:\d+$|^\[[0-9a-fA-F:]+\]:\d+$")


def check_options(args) -> None:
    """Refuse, before any file is read, what cannot work."""
    if args.ray is None:
        raise SdfsError("--ray-actors and --sources-shared go with --ray: add --ray")
    cluster.require_ray()
    address = args.ray
    if address not in (cluster.LOCAL, "auto") and not address.startswith("ray://") and not _HOST_PORT.match(address):
        taken = " (--ray took the word after it as its address: write --ray=ADDRESS, or put --ray last)" \
            if os.path.exists(address) else ""
        raise SdfsError(f"--ray {address}: not a Ray address; give local, auto, HOST:PORT or ray://HOST:PORT{taken}")
    through_client = address.startswith("ray://") or (
        address == "auto" and os.environ.get("RAY_ADDRESS", "").startswith("ray://"))
    if through_client and not args.sources_shared:
        raise SdfsError(f"--ray {address}: through Ray Client the driver runs on the head node, which cannot read "
                        f"this machine's files: put the sources where every node sees them and add --sources-shared")
    if args.ray_actors is not None and args.ray_actors < 1:
        raise SdfsError("--ray-actors must be at least 1")
    for option in ("model", "fast_decoder_model"):  # a local path, as the workers' processes will see it
        if os.path.exists(getattr(args, option)):
            setattr(args, option, os.path.abspath(getattr(args, option)))


def import_files_on_ray(args, max_pixels: int, store: Store, files: list[Entry], dirs: dict, summary: Summary,
                        progress) -> None:
    """The files, with the possible images encoded on Ray: the others are
    stored first, here, as a plain import stores them; then the results are
    committed as they come, a transaction per block of batches that comes back."""
    candidates: list[Entry] = []
    size = max(1, args.batch_size)
    for batch in _batches(files, size, max_pixels):
        _import_batch(None, max_pixels, store, batch, dirs, summary, progress, deferred=candidates)
    if not candidates:  # nothing to encode: Ray is not even started
        return
    index = {id(entry): key for key, entry in enumerate(candidates)}
    groups = [[index[id(entry)] for entry in batch] for batch in _batches(candidates, size, max_pixels)]
    commits = _Commits(store, candidates, dirs, summary, progress)
    with cluster.connected(args.ray, args.verbose) as ray:
        shown_at = 0.0
        for results in cluster.encode(ray, candidates, groups, cluster.CodecOptions.from_args(args), args.ray_actors,
                                      args.sources_shared):
            commits.commit(results)
            if time.monotonic() - shown_at > 2:  # a look at the actor table costs a call to Ray's GCS
                shown_at, live = time.monotonic(), cluster.live_actors(ray)
                progress.status = "" if live is None else f"{live} encoder actor{'s' if live != 1 else ''} live"
    commits.finish()


class _Commits:
    def __init__(self, store: Store, candidates: list[Entry], dirs: dict, summary: Summary, progress):
        self.store, self.candidates, self.dirs, self.summary, self.progress = store, candidates, dirs, summary, progress
        self.done: set[int] = set()  # keys with a result taken (committed or failed)
        self.models: dict[str, str | None] = {}  # a worker's model -> why the store refuses it (None: it does not)
        self.accepted = False  # a result was committed: the store's model is settled
        self.said: set[tuple[str, str]] = set()  # (worker, trouble) said once

    def commit(self, results: list[cluster.Encoded]) -> None:
        items, outcomes = [], {}
        for result in results:
            entry = self.candidates[result.key]
            if result.key in self.done:  # a batch Ray ran again: the first result stands
                log.debug("%s: a second result came back; the first is kept", entry.source)
                continue
            self.done.add(result.key)
            trouble = self._trouble(result)
            if trouble:
                self.summary.failed += 1
                self.progress.advance(files=1, nbytes=entry.st.st_size)
                continue
            item = _Read(entry, b"", result.size, None, data=result.original)
            outcomes[id(item)] = result.outcome
            items.append(item)
        if items:
            _store_batch(self.store, items, outcomes, self.dirs, self.summary)
            self.accepted = True
            self.progress.advance(files=len(items), nbytes=sum(item.entry.st.st_size for item in items))

    def _trouble(self, result: cluster.Encoded) -> bool:
        """Whether ``result`` cannot be committed (said once per worker and kind of trouble)."""
        if result.outcome is None and not result.codec_failed:  # this file's own
            log.warning("%s: cannot read (on %s): %s", self.candidates[result.key].source, result.worker, result.error)
            return True
        if result.outcome is None:
            self._say(result.worker, "codec", f"{result.error}; its files are left out: fix that, then run the same "
                                              f"import again")
            return True
        why = self._refusal(result.model)
        if why is None:
            return False
        message = f"it encodes with another VAE than the store's, so its results are not committed: {why}"
        if not self.accepted:  # the first results are another VAE's: most likely every worker's (--model)
            raise ModelMismatch(f"{result.worker}: {message}")
        self._say(result.worker, "model", message)
        return True

    def _refusal(self, model: str) -> str | None:
        if model not in self.models:
            try:
                self.store.check_model(json.loads(model))  # a store without a model takes the first one
                self.models[model] = None
            except ModelMismatch as error:
                self.models[model] = str(error)
        return self.models[model]

    def _say(self, worker: str, kind: str, message: str) -> None:
        if (worker, kind) not in self.said:
            self.said.add((worker, kind))
            log.error("%s: %s", worker, message)

    def finish(self) -> None:
        missing = len(self.candidates) - len(self.done)
        if missing:
            self.summary.failed += missing
            self.progress.advance(files=missing)
            log.error("no result came back for %d file(s): run the same import again to finish them", missing)

