"""`sdfs import SRC... STORE`: bulk ingest without a mount.

Sources land as `cp -r SRC... DIR` would put them: a file under its own name,
a folder as a folder of that name, inside `--into` (default the root).
Symbolic links are copied as links; sockets, FIFOs and devices are skipped.
Modes, owners and times are kept, as `cp -a` keeps them.

Resumable: every finished file records its source's size and mtime; a rerun
skips files whose destination carries the same pair (rsync's quick check) and
loads no model when nothing is left. Files are encoded in batches (one forward
pass per same-size group) and written in their final form, a batch per LMDB
transaction, so an interrupted import leaves every file either complete or
absent. The store lock keeps a running mount (or a second import) out.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import SdfsError
from .ingest import BELOW_FLOOR, KEEP_ORIGINAL, KEPT_WHY_TEXT, NOT_SMALLER, SOURCE, judge, kept_original_why, model_for_store
from .progress import Progress, human_bytes
from .store import DIR, ROOT, SYMLINK, NewFile, Store
from .store.lock import StoreLock

log = logging.getLogger(__name__)

BATCH_BYTES = 256 << 20  # bound the memory a batch of large files may take


@dataclass(frozen=True)
class Entry:
    source: Path
    dest: tuple[bytes, ...]  # path components inside the store
    st: os.stat_result


@dataclass
class Plan:
    dirs: list[Entry] = field(default_factory=list)
    files: list[Entry] = field(default_factory=list)  # regular files still to import
    links: list[Entry] = field(default_factory=list)
    already_in: int = 0
    skipped: list[str] = field(default_factory=list)  # special files, unreadable folders

    @property
    def work_bytes(self) -> int:
        return sum(e.st.st_size for e in self.files)


@dataclass
class Summary:
    latent: int = 0
    kept_below_floor: int = 0  # images the fidelity guard kept as they were
    kept_not_smaller: int = 0  # images whose latent record would not have been smaller
    verbatim: int = 0
    failed: int = 0
    bytes_in: int = 0
    bytes_stored: int = 0


def _name(part: str) -> bytes:
    return os.fsencode(part)


def source_mark(st: os.stat_result) -> bytes:
    return f"{st.st_size} {st.st_mtime_ns}".encode()


def _walk(sources: list[Path], into: tuple[bytes, ...], plan: Plan, store: Store) -> None:
    for source in sources:
        try:
            st = os.lstat(source)
        except OSError as error:
            raise SdfsError(f"cannot read {source}: {error.strerror}") from None
        name = source.resolve().name if source.name in ("", ".", "..") else source.name
        if not name:
            raise SdfsError(f"cannot import {source} as a folder of the store: give the folders inside it instead")
        top = into + (_name(name),)
        _plan_one(Entry(source, top, st), plan, store)
        if stat.S_ISDIR(st.st_mode):
            for folder, dirnames, filenames in os.walk(source, onerror=lambda e: plan.skipped.append(f"{e.filename}: {e.strerror}")):
                base = top + tuple(_name(p) for p in Path(folder).relative_to(source).parts)
                for name in sorted(dirnames) + sorted(filenames):
                    path = Path(folder) / name
                    try:
                        entry = Entry(path, base + (_name(name),), os.lstat(path))
                    except OSError as error:
                        plan.skipped.append(f"{path}: {error.strerror}")
                        continue
                    _plan_one(entry, plan, store)
                dirnames.sort()


def _plan_one(entry: Entry, plan: Plan, store: Store) -> None:
    mode = entry.st.st_mode
    if stat.S_ISDIR(mode):
        plan.dirs.append(entry)
    elif stat.S_ISLNK(mode):
        if _link_already_in(store, entry):
            plan.already_in += 1
        else:
            plan.links.append(entry)
    elif stat.S_ISREG(mode):
        if _already_in(store, entry):
            plan.already_in += 1
        else:
            plan.files.append(entry)
    else:
        plan.skipped.append(f"{entry.source}: not a regular file, folder or link")


def _lookup_path(store: Store, parts: tuple[bytes, ...]) -> int | None:
    ino = ROOT
    for part in parts:
        ino = store.lookup(ino, part)
        if ino is None:
            return None
    return ino


def _already_in(store: Store, entry: Entry) -> bool:
    ino = _lookup_path(store, entry.dest)
    return ino is not None and store.get_xattr(ino, SOURCE) == source_mark(entry.st)


def _link_already_in(store: Store, entry: Entry) -> bool:
    ino = _lookup_path(store, entry.dest)
    if ino is None or store.inode(ino).kind != SYMLINK:
        return False
    try:
        return store.read_raw(ino) == os.fsencode(os.readlink(entry.source))
    except OSError:
        return False


def _ensure_dir(store: Store, parts: tuple[bytes, ...], cache: dict) -> int:
    """Ino of the folder at ``parts``, creating missing folders (mode 0755)."""
    if parts in cache:
        return cache[parts]
    if not parts:
        return ROOT
    parent = _ensure_dir(store, parts[:-1], cache)
    ino = store.lookup(parent, parts[-1])
    if ino is None:
        ino = store.create(parent, parts[-1], DIR, stat.S_IFDIR | 0o755, os.getuid(), os.getgid()).ino
    elif not store.inode(ino).is_dir:
        raise SdfsError(f"cannot import into /{b'/'.join(parts).decode(errors='replace')}: a file of that name is in the store")
    cache[parts] = ino
    return ino


def _display(parts: tuple[bytes, ...]) -> str:
    return "/" + b"/".join(parts).decode("utf-8", "replace")


def run_import(args) -> int:
    store_path = Path(args.store)
    if store_path.exists() and not store_path.is_dir():
        raise SdfsError(f"{store_path} is not a folder; give the store folder last: sdfs import SRC... STORE")
    into = tuple(_name(p) for p in Path("/" + args.into).parts[1:])
    if b".." in into or b"." in into:
        raise SdfsError(f"--into {args.into}: give a folder path inside the store without . or .. parts")
    started = time.monotonic()
    with StoreLock(store_path, "sdfs import"):
        store = Store(store_path)
        try:
            plan = Plan()
            _walk(list(args.sources), into, plan, store)
            for line in plan.skipped:
                log.warning("skipped %s", line)
            if not plan.files and not plan.links and not _missing_dirs(store, plan):
                print(f"nothing to import: all {plan.already_in} files are already in {store_path} "
                      f"(same size and modification time)")
                return 1 if plan.skipped else 0
            summary = _import(args, store, plan, into)
        finally:
            store.close()
    _print_summary(summary, plan, time.monotonic() - started, store_path)
    return 1 if summary.failed or plan.skipped else 0


def _missing_dirs(store: Store, plan: Plan) -> bool:
    return any(_lookup_path(store, d.dest) is None for d in plan.dirs)


def _import(args, store: Store, plan: Plan, into: tuple[bytes, ...]) -> Summary:
    summary = Summary()
    dirs: dict = {}
    _ensure_dir(store, into, dirs)
    for d in plan.dirs:
        _ensure_dir(store, d.dest, dirs)
    for link in plan.links:
        _import_link(store, link, dirs)
    if plan.files:
        from .cli import _load_codec

        codec = _load_codec(args)
        store.check_model(model_for_store(codec.vae.identity))
        with Progress(len(plan.files), plan.work_bytes, what="importing") as progress:
            for batch in _batches(plan.files, max(1, args.batch_size)):
                _import_batch(codec, store, batch, dirs, summary, progress)
    for d in reversed(plan.dirs):  # after their contents, or adding entries would bump their mtime
        ino = dirs[d.dest]
        store.setattr(ino, mode=d.st.st_mode, uid=d.st.st_uid, gid=d.st.st_gid,
                      atime_ns=d.st.st_atime_ns, mtime_ns=d.st.st_mtime_ns)
    return summary


def _batches(files: list[Entry], size: int):
    batch, nbytes = [], 0
    for entry in files:
        if batch and (len(batch) >= size or nbytes + entry.st.st_size > BATCH_BYTES):
            yield batch
            batch, nbytes = [], 0
        batch.append(entry)
        nbytes += entry.st.st_size
    if batch:
        yield batch


def _import_link(store: Store, link: Entry, dirs: dict) -> None:
    parent = _ensure_dir(store, link.dest[:-1], dirs)
    target = os.fsencode(os.readlink(link.source))
    existing = store.lookup(parent, link.dest[-1])
    if existing is not None:
        if store.inode(existing).is_dir:
            log.warning("skipped %s: a folder of that name is in the store", link.source)
            return
        store.unlink(parent, link.dest[-1])
        store.purge(existing)
    inode = store.create(parent, link.dest[-1], SYMLINK, stat.S_IFLNK | 0o777, link.st.st_uid, link.st.st_gid, target)
    store.setattr(inode.ino, atime_ns=link.st.st_atime_ns, mtime_ns=link.st.st_mtime_ns)


def _import_batch(codec, store: Store, batch: list[Entry], dirs: dict, summary: Summary, progress) -> None:
    readable, datas = [], []
    for entry in batch:
        try:
            datas.append(entry.source.read_bytes())
            readable.append(entry)
        except OSError as error:
            log.warning("%s: cannot read: %s", entry.source, error.strerror)
            summary.failed += 1
            progress.advance(files=1, nbytes=entry.st.st_size)
    new_files = []
    for entry, data, result in zip(readable, datas, codec.encode_many(datas)):
        outcome = judge(data, result)
        log.log(outcome.log_level, "%s: %s", entry.source, outcome.verdict)
        parent = _ensure_dir(store, entry.dest[:-1], dirs)
        existing = store.lookup(parent, entry.dest[-1])
        if existing is not None and store.inode(existing).is_dir:
            log.warning("%s: skipped: a folder of that name is in the store", entry.source)
            summary.failed += 1
            continue
        st = entry.st
        notes = {**outcome.notes(len(data)), SOURCE: source_mark(st)}
        new_files.append(NewFile(parent, entry.dest[-1], st.st_mode, st.st_uid, st.st_gid, st.st_atime_ns,
                                 st.st_mtime_ns, outcome.record if outcome.record is not None else data,
                                 outcome.output_length if outcome.record is not None else None, notes))
        if outcome.record is not None:
            summary.latent += 1
        elif outcome.verdict.startswith(KEEP_ORIGINAL):
            if kept_original_why(outcome.verdict) == NOT_SMALLER:
                summary.kept_not_smaller += 1
            else:
                summary.kept_below_floor += 1
        else:  # STORED_VERBATIM
            summary.verbatim += 1
        summary.bytes_in += len(data)
        summary.bytes_stored += len(new_files[-1].data)
    store.put_files(new_files)  # one transaction: the batch is in, or (after a crash) absent
    for entry in readable:
        progress.advance(files=1, nbytes=entry.st.st_size)


def _print_summary(s: Summary, plan: Plan, seconds: float, store_path: Path) -> None:
    done = s.latent + s.kept_below_floor + s.kept_not_smaller + s.verbatim
    ratio = f", {s.bytes_in / s.bytes_stored:.1f}x smaller" if s.bytes_stored else ""
    kept = [f"{n} kept original ({KEPT_WHY_TEXT[why]})"
            for n, why in ((s.kept_below_floor, BELOW_FLOOR), (s.kept_not_smaller, NOT_SMALLER)) if n]
    print(f"imported {done} files into {store_path} in {seconds:.1f} s: {s.latent} as latents, "
          + ", ".join(kept or ["0 kept original"]) + f", {s.verbatim} verbatim (not images sdfs takes)")
    print(f"  {human_bytes(s.bytes_in)} read, {human_bytes(s.bytes_stored)} stored{ratio}; "
          f"{plan.already_in} already in; {len(plan.links)} links; {s.failed + len(plan.skipped)} skipped or failed",
          file=sys.stdout)
