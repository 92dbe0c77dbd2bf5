"""`sdfs import SRC... STORE`: bulk ingest without a mount.

Sources land as `cp -r SRC... DIR` would put them: a file under its own name,
a folder as a folder of that name, inside `--into` (default the root).
As `cp -a` does: symbolic links are copied as links; FIFOs, sockets and
device nodes are made again (their type, mode and device number); names that
are hard links of one file among the sources become names of one file in the
store, its content read and stored once; modes, owners and times are kept.

Memory does not grow with a file. A file is judged by its first 64 KiB and
its size (images.screen) before it is read: only possible images are read
whole (they are bounded by --max-pixels); anything else larger than
STREAM_OVER is read a chunk at a time and stored in transactions of
UPLOAD_BYTES, skipping the holes of a sparse file.

Resumable: every finished file records its source's size and mtime; a rerun
skips files whose destination carries the same pair (rsync's quick check) and
loads no model when nothing is left. Files are encoded in batches (one forward
pass per same-size group) and written in their final form, a batch per LMDB
transaction, so an interrupted import leaves every file either complete or
absent. The store lock keeps a running mount (or a second import) out.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from .codec.images import DEFAULT_MAX_PIXELS, HEAD_BYTES, max_candidate_bytes, screen
from .errors import NotACandidate, SdfsError
from .ingest import (BELOW_FLOOR, KEEP_ORIGINAL, KEPT_WHY_TEXT, NOT_SMALLER, SOURCE, Outcome, judge, kept_original_why,
                     model_for_store)
from .progress import Progress, human_bytes
from .store import CHUNK, DIR, MAX_FILE_SIZE, ROOT, SPECIAL, SYMLINK, NewFile, Store, Streamed
from .store.lock import StoreLock

log = logging.getLogger(__name__)

BATCH_BYTES = 256 << 20  # bound the memory a batch of files read whole may take
STREAM_OVER = 8 << 20  # a file that cannot be an image and is larger than this is streamed, not read whole
UPLOAD_BYTES = 16 << 20  # a streamed file goes to the store this much per transaction


@dataclass(frozen=True)
class Entry:
    source: Path
    dest: tuple[bytes, ...]  # path components inside the store
    st: os.stat_result


@dataclass
class Plan:
    dirs: list[Entry] = field(default_factory=list)
    files: list[Entry] = field(default_factory=list)  # regular files still to import
    links: list[Entry] = field(default_factory=list)  # symbolic links
    specials: list[Entry] = field(default_factory=list)  # FIFOs, sockets, device nodes
    names: list[tuple[Entry, Entry]] = field(default_factory=list)  # (another name, the first) of a hard-linked file
    already_in: int = 0
    skipped: list[str] = field(default_factory=list)  # unreadable folders and files
    # hard-linked sources seen: (st_dev, st_ino) -> (the first name's entry, whether it is already in)
    seen: dict[tuple[int, int], tuple[Entry, bool]] = field(default_factory=dict)

    @property
    def work_bytes(self) -> int:
        return sum(e.st.st_size for e in self.files)

    @property
    def anything_to_do(self) -> bool:
        return bool(self.files or self.links or self.specials or self.names)


@dataclass
class Summary:
    links: int = 0  # symbolic links
    specials: int = 0  # FIFOs, sockets, device nodes
    names: int = 0  # more names of hard-linked files
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
    mode, st = entry.st.st_mode, entry.st
    if stat.S_ISDIR(mode):
        plan.dirs.append(entry)
        return
    key = (st.st_dev, st.st_ino)
    if st.st_nlink > 1 and key in plan.seen:  # another name of a file met before (cp -a keeps hard links)
        first, first_in = plan.seen[key]
        if first_in and first.dest != entry.dest and _same_file(store, first.dest, entry.dest):
            plan.already_in += 1
        elif first.dest != entry.dest:  # the same source given twice lands once
            plan.names.append((entry, first))
        return
    if stat.S_ISLNK(mode):
        kind, already_in = plan.links, _link_already_in(store, entry)
    elif stat.S_ISREG(mode):
        if st.st_size > MAX_FILE_SIZE:
            plan.skipped.append(f"{entry.source}: larger than a store can hold ({human_bytes(MAX_FILE_SIZE)})")
            return
        kind, already_in = plan.files, _already_in(store, entry)
    else:  # FIFO, socket, character or block device
        kind, already_in = plan.specials, _special_already_in(store, entry)
    if st.st_nlink > 1:
        plan.seen[key] = (entry, already_in)
    if already_in:
        plan.already_in += 1
    else:
        kind.append(entry)


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


def _same_file(store: Store, a: tuple[bytes, ...], b: tuple[bytes, ...]) -> bool:
    ino = _lookup_path(store, a)
    return ino is not None and ino == _lookup_path(store, b)


def _special_already_in(store: Store, entry: Entry) -> bool:
    ino = _lookup_path(store, entry.dest)
    inode = store.inode(ino) if ino is not None else None
    st = entry.st
    return (inode is not None and inode.kind == SPECIAL
            and (inode.mode, inode.uid, inode.gid, inode.mtime_ns) == (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns)
            and (inode.rdev == st.st_rdev or not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode))))


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
    if getattr(args, "ray", None) is not None or getattr(args, "ray_actors", None) or getattr(args, "sources_shared", False):
        from .ray_import import check_options

        check_options(args)
    started = time.monotonic()
    with StoreLock(store_path, "sdfs import"):
        store = Store(store_path)
        try:
            _drop_leftovers(store)
            plan = Plan()
            _walk(list(args.sources), into, plan, store)
            for line in plan.skipped:
                log.warning("skipped %s", line)
            if not plan.anything_to_do and not _missing_dirs(store, plan):
                print(f"nothing to import: all {plan.already_in} files are already in {store_path} "
                      f"(same size and modification time)")
                return 1 if plan.skipped else 0
            try:
                summary = _import(args, store, plan, into)
            except OSError as error:  # the store's: a full disk, say (an unreadable source only fails itself)
                raise SdfsError(f"{error.strerror or error}; what was imported before is in the store: "
                                f"fix that, then run the same import again to finish") from None
        finally:
            store.close()
    _print_summary(summary, plan, time.monotonic() - started, store_path)
    return 1 if summary.failed or plan.skipped else 0


def _drop_leftovers(store: Store) -> None:
    """What an import or mount that died left: files streamed in but never
    named (orphans), uploads never committed. The lock says nobody uses them."""
    orphans = store.orphans()
    for ino in orphans:
        store.purge(ino)
    store.drop_abandoned_uploads()
    if orphans:
        log.info("dropped %d unfinished file(s) an interrupted import or mount left", len(orphans))


def _missing_dirs(store: Store, plan: Plan) -> bool:
    return any(_lookup_path(store, d.dest) is None for d in plan.dirs)


class _Codec:
    """The codec, loaded when the first possible image needs it: an import of
    other files never loads a model."""

    def __init__(self, args, store: Store):
        self.args, self.store, self.codec = args, store, None

    def __call__(self):
        if self.codec is None:
            from .cli import _load_codec

            self.codec = _load_codec(self.args)
            self.store.check_model(model_for_store(self.codec.vae.identity))
        return self.codec

    def outcomes(self, candidates: list[_Read]) -> dict[int, Outcome]:
        """What to store for each candidate read whole, by id(item)."""
        results = self().encode_many([item.data for item in candidates])
        return {id(item): judge(item.data, result) for item, result in zip(candidates, results)}


def _import(args, store: Store, plan: Plan, into: tuple[bytes, ...]) -> Summary:
    summary = Summary()
    dirs: dict = {}
    _ensure_dir(store, into, dirs)
    for d in plan.dirs:
        _ensure_dir(store, d.dest, dirs)
    for link in plan.links:
        _import_link(store, link, dirs, summary)
    for special in plan.specials:
        _import_special(store, special, dirs, summary)
    if plan.files:
        max_pixels = getattr(args, "max_pixels", DEFAULT_MAX_PIXELS)
        with Progress(len(plan.files), plan.work_bytes, what="importing") as progress:
            if getattr(args, "ray", None) is None:
                codec = _Codec(args, store)
                for batch in _batches(plan.files, max(1, args.batch_size), max_pixels):
                    _import_batch(codec.outcomes, max_pixels, store, batch, dirs, summary, progress)
            else:
                from .ray_import import import_files_on_ray

                import_files_on_ray(args, max_pixels, store, plan.files, dirs, summary, progress)
    for name, first in plan.names:
        _import_name(store, name, first, dirs, summary)
    for d in reversed(plan.dirs):  # after their contents, or adding entries would bump their mtime
        ino = dirs[d.dest]
        store.setattr(ino, mode=d.st.st_mode, uid=d.st.st_uid, gid=d.st.st_gid,
                      atime_ns=d.st.st_atime_ns, mtime_ns=d.st.st_mtime_ns)
    return summary


def _batches(files: list[Entry], size: int, max_pixels: int):
    """Batches of at most ``size`` files, and of BATCH_BYTES of files that may be read whole."""
    limit = max(STREAM_OVER, max_candidate_bytes(max_pixels))
    batch, nbytes = [], 0
    for entry in files:
        weight = entry.st.st_size if entry.st.st_size <= limit else 0  # a larger one is streamed
        if batch and (len(batch) >= size or nbytes + weight > BATCH_BYTES):
            yield batch
            batch, nbytes = [], 0
        batch.append(entry)
        nbytes += weight
    if batch:
        yield batch


def _replaceable(store: Store, parent: int, name: bytes, entry: Entry, summary: Summary) -> bool:
    """Clear the way for a new non-directory at ``name``: an older file there
    goes (this name of it); a folder stays, and the entry is skipped."""
    existing = store.lookup(parent, name)
    if existing is None:
        return True
    if store.inode(existing).is_dir:
        log.warning("%s: skipped: a folder of that name is in the store", entry.source)
        summary.failed += 1
        return False
    store.unlink(parent, name)
    store.purge(existing)  # only if that was its last name
    return True


def _import_link(store: Store, link: Entry, dirs: dict, summary: Summary) -> None:
    parent = _ensure_dir(store, link.dest[:-1], dirs)
    try:
        target = os.fsencode(os.readlink(link.source))
    except OSError as error:
        log.warning("%s: cannot read the link: %s", link.source, error.strerror)
        summary.failed += 1
        return
    if _replaceable(store, parent, link.dest[-1], link, summary):
        inode = store.create(parent, link.dest[-1], SYMLINK, stat.S_IFLNK | 0o777, link.st.st_uid, link.st.st_gid,
                             target)
        store.setattr(inode.ino, atime_ns=link.st.st_atime_ns, mtime_ns=link.st.st_mtime_ns)
        summary.links += 1


def _import_special(store: Store, entry: Entry, dirs: dict, summary: Summary) -> None:
    """A FIFO, socket or device node, made again as `cp -a` makes it (mknod)."""
    parent = _ensure_dir(store, entry.dest[:-1], dirs)
    st = entry.st
    if _replaceable(store, parent, entry.dest[-1], entry, summary):
        device = st.st_rdev if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else 0
        inode = store.create(parent, entry.dest[-1], SPECIAL, st.st_mode, st.st_uid, st.st_gid, rdev=device)
        store.setattr(inode.ino, atime_ns=st.st_atime_ns, mtime_ns=st.st_mtime_ns)
        summary.specials += 1


def _import_name(store: Store, entry: Entry, first: Entry, dirs: dict, summary: Summary) -> None:
    """Another name of a hard-linked file: a link to what its first name became."""
    ino = _lookup_path(store, first.dest)
    if ino is None or store.inode(ino).is_dir:
        log.warning("%s: skipped: it is a hard link of %s, which was not imported", entry.source, first.source)
        summary.failed += 1
        return
    parent = _ensure_dir(store, entry.dest[:-1], dirs)
    if store.lookup(parent, entry.dest[-1]) == ino:
        return  # already a name of it
    if _replaceable(store, parent, entry.dest[-1], entry, summary):
        store.link(ino, parent, entry.dest[-1])
        summary.names += 1


@dataclass
class _Read:
    """A source file as far as it was read: whole (``data``) or streamed into the store (``content``)."""

    entry: Entry
    head: bytes
    size: int
    reason: NotACandidate | None  # why it cannot be an image; None: a candidate, read whole
    data: bytes | None = None
    content: Streamed | None = None


def _import_batch(encode, max_pixels: int, store: Store, batch: list[Entry], dirs: dict, summary: Summary,
                  progress, deferred: list[Entry] | None = None) -> None:
    """Read and store ``batch``; ``encode`` gives the candidates' outcomes.
    With ``deferred``, candidates are only screened, and go there instead."""
    done = []
    try:
        for entry in batch:
            try:
                item = _read_source(store, entry, max_pixels, progress, whole=deferred is None)
            except SourceError as error:  # the store's own errors end the import (run_import)
                log.warning("%s: cannot read: %s", entry.source, error.strerror or error)
                summary.failed += 1
                progress.advance(files=1)
                continue
            if item.reason is None and deferred is not None:
                deferred.append(entry)
            else:
                done.append(item)
        candidates = [item for item in done if item.reason is None]
        _store_batch(store, done, encode(candidates) if candidates else {}, dirs, summary)
    except BaseException:
        for item in done:  # streamed in but never named: they go now rather than at the next start
            if item.content is not None:
                store.purge(item.content.ino)
        raise
    for item in done:
        progress.advance(files=1)


def _store_batch(store: Store, items: list[_Read], outcomes: dict[int, Outcome], dirs: dict,
                 summary: Summary) -> None:
    """Commit ``items`` in one transaction; ``outcomes`` (by id(item)) says what
    became of the candidates, the others are judged by their head."""
    new_files = []
    for item in items:
        entry, st = item.entry, item.entry.st
        # judged by its head and size: only the verdict and log level are used (its bytes stay as they are)
        outcome = outcomes.get(id(item)) or judge(item.head, item.reason)
        log.log(outcome.log_level, "%s: %s", entry.source, outcome.verdict)
        parent = _ensure_dir(store, entry.dest[:-1], dirs)
        existing = store.lookup(parent, entry.dest[-1])
        if existing is not None and store.inode(existing).is_dir:
            log.warning("%s: skipped: a folder of that name is in the store", entry.source)
            summary.failed += 1
            if item.content is not None:
                store.purge(item.content.ino)
            continue
        notes = {**outcome.notes(item.size), SOURCE: source_mark(st)}
        latent = outcome.record is not None
        new_files.append(NewFile(parent, entry.dest[-1], st.st_mode, st.st_uid, st.st_gid, st.st_atime_ns,
                                 st.st_mtime_ns, outcome.record if latent else item.data or b"",
                                 outcome.output_length if latent else None, notes, content=item.content))
        if latent:
            summary.latent += 1
        elif outcome.verdict.startswith(KEEP_ORIGINAL):
            if kept_original_why(outcome.verdict) == NOT_SMALLER:
                summary.kept_not_smaller += 1
            else:
                summary.kept_below_floor += 1
        else:  # STORED_VERBATIM
            summary.verbatim += 1
        summary.bytes_in += item.size
        summary.bytes_stored += len(outcome.record) if latent else (
            item.content.stored if item.content is not None else len(item.data))
    store.put_files(new_files)  # one transaction: the batch is in, or (after a crash) absent


# -- reading a source in bounded memory


class SourceError(OSError):
    """A source file could not be read: that file fails, the import goes on."""


def _open_regular(path: Path) -> tuple[int, int]:
    """A descriptor of the regular file at ``path``, and its size."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO put there meanwhile must not block
    except OSError as error:
        raise SourceError(error.errno, error.strerror) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise SourceError(errno.EINVAL, "it is no longer a regular file")
    return fd, st.st_size


def _read_source(store: Store, entry: Entry, max_pixels: int, progress, whole: bool = True) -> _Read:
    """Read a file whole if it may be an image (or is small), else stream it
    into the store. ``whole`` False: of a possible image, read only the head."""
    fd, size = _open_regular(entry.source)
    try:
        head = _pread_full(fd, HEAD_BYTES, 0)
        try:
            screen(head, size, max_pixels)
            reason = None
        except NotACandidate as why:
            reason = why
        if reason is None and not whole:
            return _Read(entry, head, size, reason)
        if reason is None or size <= STREAM_OVER:
            data = _read_to_end(fd, head)
            progress.advance(nbytes=size)
            return _Read(entry, head, len(data), reason, data=data)
        pieces = _Pieces(fd, progress)
        content = store.put_content(pieces, UPLOAD_BYTES)
        # a file can end in a hole: its size when opened says how long (bytes
        # appended since were not read, and must not appear as zeros)
        content = replace(content, size=max(content.size, size))
        progress.advance(nbytes=max(0, size - pieces.reported))
        return _Read(entry, head, content.size, reason, content=content)
    finally:
        os.close(fd)


def _pread(fd: int, size: int, offset: int) -> bytes:
    try:
        return os.pread(fd, size, offset)
    except OSError as error:
        raise SourceError(error.errno, error.strerror) from None


def _pread_full(fd: int, size: int, offset: int) -> bytes:
    """``size`` bytes at ``offset``, fewer only at the end of the file."""
    data = _pread(fd, size, offset)
    if len(data) == size or not data:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        more = _pread(fd, size - got, offset + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _read_to_end(fd: int, head: bytes) -> bytes:
    parts, offset = [head], len(head)
    while True:
        more = _pread(fd, CHUNK, offset)
        if not more:
            return b"".join(parts) if len(parts) > 1 else head
        parts.append(more)
        offset += len(more)


class _Pieces:
    """A file's chunks as (index, bytes), read one at a time, skipping holes
    (SEEK_DATA/SEEK_HOLE where the filesystem reports them, else reading
    every chunk; all-zero ones are holes to the store either way)."""

    def __init__(self, fd: int, progress):
        self.fd, self.progress = fd, progress
        self.reported = 0  # bytes of the file the progress line has been told of

    def __iter__(self):
        index = 0
        while True:
            data, hole = self._data_from(index * CHUNK)
            if data is None:
                return
            index = max(index, data // CHUNK)
            while hole is None or index * CHUNK < hole:
                piece = _pread_full(self.fd, CHUNK, index * CHUNK)
                if piece:
                    yield index, piece
                self._report(index * CHUNK + len(piece))
                if len(piece) < CHUNK:
                    return
                index += 1

    def _data_from(self, offset: int) -> tuple[int | None, int | None]:
        """(where the next data starts, where the hole after it starts): (None, _) past the
        last data; (offset, None) where the filesystem cannot say."""
        try:
            data = os.lseek(self.fd, offset, os.SEEK_DATA)
            hole = os.lseek(self.fd, data, os.SEEK_HOLE)
            return data, hole if hole > data else None  # (a hole right at data would stop the reading)
        except OSError as error:
            if error.errno == errno.ENXIO:  # no data at or after offset
                return None, None
            return offset, None  # SEEK_DATA unsupported here: read everything
        except AttributeError:  # a platform without SEEK_DATA
            return offset, None

    def _report(self, position: int) -> None:
        if position > self.reported:
            self.progress.advance(nbytes=position - self.reported)
            self.reported = position


def _print_summary(s: Summary, plan: Plan, seconds: float, store_path: Path) -> None:
    done = s.latent + s.kept_below_floor + s.kept_not_smaller + s.verbatim
    ratio = f", {s.bytes_in / s.bytes_stored:.1f}x smaller" if s.bytes_stored else ""
    kept = [f"{n} kept original ({KEPT_WHY_TEXT[why]})"
            for n, why in ((s.kept_below_floor, BELOW_FLOOR), (s.kept_not_smaller, NOT_SMALLER)) if n]
    print(f"imported {done} files into {store_path} in {seconds:.1f} s: {s.latent} as latents, "
          + ", ".join(kept or ["0 kept original"]) + f", {s.verbatim} verbatim (not images sdfs takes)")
    print(f"  {human_bytes(s.bytes_in)} read, {human_bytes(s.bytes_stored)} stored{ratio}; "
          f"{plan.already_in} already in; {s.links} symbolic links, {s.specials} special files, "
          f"{s.names} more names of hard-linked files; {s.failed + len(plan.skipped)} skipped or failed",
          file=sys.stdout)
