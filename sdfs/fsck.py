"""``sdfs fsck STORE [--decode] [--repair] [--json]``: check a store, like
e2fsck or ``restic check``.

The check reads one consistent LMDB snapshot, opened read-only, so it runs
beside a mount. It verifies every invariant listed in docs/FORMAT.md
("Checking a store"): the meta records, that every inode unpacks, that every
directory entry leads somewhere, link counts (hard links included) and
directory parents, that every inode is reachable from the root, that each
file's mode matches its kind (FIFOs, sockets and device nodes included), that
each file's chunks fit its size (holes read as zeros) and its record matches
it (checksum, model, output length), that no superseded chunk or stray upload
is left behind, and that no data belongs to an inode that does not exist.
``--decode`` also decodes every latent record with the model and checks its
length.

``--repair`` takes the store's writer lock (so it refuses while the store is
mounted), applies every fix in write transactions and checks again. Nothing
is silently thrown away: inodes no entry reaches are moved to
``/lost+found/#INO``; a file whose record is corrupt gets its name moved to
``/lost+found/#INO.corrupt-record`` and holds the record's raw bytes.

Exit codes (like e2fsck), for scripts:
  0  no problems
  1  problems were found and all of them repaired
  4  problems remain (not repaired, or not repairable)
  8  the check itself could not run (store missing, locked, unreadable,
     model unavailable for --decode)
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import struct
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from typing import Callable, NamedTuple

import lmdb

from .errors import SdfsError
from .progress import Progress
from .store import CHUNK, DIR, KIND_NAMES, LATENT, PENDING, ROOT, SPECIAL, SYMLINK, VERBATIM, Inode, Store
from .store.store import CONTENT_KINDS, INODE_SIZES, _chunk_key, _key, chunk_key_parts, now_ns

EXIT_CLEAN, EXIT_REPAIRED, EXIT_LEFT, EXIT_FAILED = 0, 1, 4, 8
LOST_FOUND = b"lost+found"
REPAIR_ROUNDS = 4  # a fix can reveal another (a removed entry leaves a lost inode); stop if they never settle
DECODE_BATCH = 8

# kind -> what --repair does about it, for the summary line
ACTIONS = {
    "meta": "fix store metadata",
    "bad-inode": "rebuild unreadable inodes",
    "missing-root": "recreate the root directory",
    "dangling-entry": "remove dangling entries",
    "directory-link": "remove extra entries of directories",
    "nlink": "correct link counts",
    "dirparent": "rewrite directory parents",
    "lost": "move lost inodes to /lost+found",
    "unlinked": "purge unlinked inodes",
    "content": "fix file sizes and chunks",
    "leftover": "delete superseded chunks",
    "upload": "delete stray uploads",
    "file-type": "fix file types and device numbers",
    "missing-record": "move files without a record to /lost+found",
    "corrupt-record": "move files with a corrupt record to /lost+found",
    "record-model": "nothing (another model)",
    "queue": "fix the encode queue and orphan list",
    "orphaned-data": "delete data of missing inodes",
    "malformed-key": "delete malformed keys",
    "decode": "nothing (decode failures)",
}

# fixes run in this order inside one repair round, each in its own transaction:
# rebuild what others rely on, remove bad entries, set counts from the good
# ones, then moves (which change counts by a delta, so they come after)
PHASE_META, PHASE_INODES, PHASE_ENTRIES, PHASE_COUNTS, PHASE_CONTENT, PHASE_MOVES, PHASE_CLEANUP = range(7)


@dataclass
class Problem:
    kind: str
    ino: int | None
    path: str | None
    detail: str
    repair: str | None  # what --repair does; None when it cannot
    fix: Callable | None = field(default=None, repr=False, compare=False)  # fix(txn), run by --repair
    phase: int = field(default=PHASE_CLEANUP, repr=False, compare=False)

    def where(self) -> str:
        if self.path is not None:
            return self.path if self.ino is None else f"{self.path} (inode {self.ino})"
        return f"inode {self.ino}" if self.ino is not None else "store"

    def line(self, repaired: bool = False) -> str:
        if repaired:
            return f"{self.where()}: {self.detail}; repaired: {self.repair}"
        todo = f"--repair will {self.repair}" if self.repair else "not repairable by fsck"
        return f"{self.where()}: {self.detail}; {todo}"

    def to_json(self) -> dict:
        return {"kind": self.kind, "ino": self.ino, "path": self.path, "detail": self.detail, "repair": self.repair}


class Chunk(NamedTuple):
    index: int
    version: int  # 0 for a version-1 key (ino | index)
    length: int
    key: bytes


class Entry(NamedTuple):
    parent: int
    name: bytes
    child: int


@dataclass
class RecordInfo:
    length: int
    output_length: int | None = None
    model: dict | None = None  # the record's latent space, comparable to meta.model
    error: str | None = None


@dataclass
class Snapshot:
    """Everything fsck needs from one read transaction; no file bytes."""

    meta: dict[bytes, bytes] = field(default_factory=dict)
    inodes: dict[int, Inode] = field(default_factory=dict)
    bad_inodes: dict[int, str] = field(default_factory=dict)  # ino -> why it does not unpack
    entries: list[Entry] = field(default_factory=list)
    dirparents: dict[int, int] = field(default_factory=dict)
    chunks: dict[int, list[Chunk]] = field(default_factory=lambda: defaultdict(list))  # ino -> its chunks, in key order
    uploads: dict[int, int] = field(default_factory=dict)  # ino -> version of its upload in progress
    records: dict[int, RecordInfo] = field(default_factory=dict)
    pending: set[int] = field(default_factory=set)
    orphans: set[int] = field(default_factory=set)
    xattrs: dict[int, list[bytes]] = field(default_factory=lambda: defaultdict(list))
    malformed: list[tuple[str, bytes]] = field(default_factory=list)  # (db, key)


@dataclass
class Report:
    inodes: int
    records: int
    found: list[Problem]
    remaining: list[Problem]
    repaired: bool = False
    decoded: int = 0

    @property
    def exit_code(self) -> int:
        if self.remaining:
            return EXIT_LEFT
        return EXIT_REPAIRED if self.found else EXIT_CLEAN


# -- entry point


def run_fsck(args: argparse.Namespace) -> int:
    try:
        report = _check_or_repair(args)
    except SdfsError as error:
        print(f"sdfs: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except (lmdb.Error, OSError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        print(f"sdfs: error: cannot check {args.store}: {first_line}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(_report_json(args.store, report), indent=2))
    else:
        _print_report(args.store, report, args.repair)
    return report.exit_code


def _check_or_repair(args) -> Report:
    store = Store(args.store, readonly=True)  # refuses a missing or foreign store before any lock file is made
    try:
        if not args.repair:
            snapshot = scan(store)
            problems = find_problems(store, snapshot)
            if args.decode:
                problems += decode_problems(store, args)
            return Report(len(snapshot.inodes) + len(snapshot.bad_inodes), len(snapshot.records), problems, problems)
    finally:
        store.close()

    from .store.lock import StoreLock

    with StoreLock(args.store, "fsck --repair"):
        store = Store(args.store)
        try:
            return repair(store, args.decode and args)
        finally:
            store.close()


def repair(store: Store, decode_args=None) -> Report:
    """Check, fix, check again until nothing fixable is left."""
    snapshot = scan(store)
    counts = (len(snapshot.inodes) + len(snapshot.bad_inodes), len(snapshot.records))
    problems = find_problems(store, snapshot)
    found = list(problems)
    applied = 0
    for _ in range(REPAIR_ROUNDS):
        fixable = sorted((p for p in problems if p.fix), key=lambda p: p.phase)
        if not fixable:
            break
        for problem in fixable:
            store.write(problem.fix)
        applied += len(fixable)
        problems = find_problems(store, scan(store))
        seen = {(p.kind, p.ino, p.detail) for p in found}
        found += [p for p in problems if (p.kind, p.ino, p.detail) not in seen]  # revealed by a fix
    if decode_args:
        decoded = decode_problems(store, decode_args)
        found += decoded
        problems = problems + decoded
    return Report(*counts, found, problems, repaired=applied > 0)


# -- reading the snapshot


def _ino(key: bytes) -> int:
    return int.from_bytes(key[:8], "big")


def scan(store: Store) -> Snapshot:
    from .codec import container  # imports torch; only the store layer must stay free of it

    snap = Snapshot()
    db = store.db
    with store.reading() as txn:
        total = txn.stat(db["inodes"])["entries"] + txn.stat(db["records"])["entries"]
        with Progress(total, what="scanning") as progress:
            snap.meta = dict(txn.cursor(db=db["meta"]))
            for key, value in txn.cursor(db=db["inodes"]):
                progress.advance(files=1, nbytes=len(value))
                if len(key) != 8:
                    snap.malformed.append(("inodes", key))
                    continue
                _scan_inode(snap, _ino(key), value)
            for key, value in txn.cursor(db=db["records"]):
                progress.advance(files=1, nbytes=len(value))
                if len(key) != 8:
                    snap.malformed.append(("records", key))
                    continue
                snap.records[_ino(key)] = _record_info(container, value)
            for key, value in txn.cursor(db=db["dirents"]):
                if len(key) <= 8 or len(value) != 8:
                    snap.malformed.append(("dirents", key))
                    continue
                snap.entries.append(Entry(_ino(key), key[8:], _ino(value)))
            for key, value in txn.cursor(db=db["dirparents"]):
                if len(key) != 8 or len(value) != 8:
                    snap.malformed.append(("dirparents", key))
                    continue
                snap.dirparents[_ino(key)] = _ino(value)
            for key, value in txn.cursor(db=db["chunks"]):
                if len(key) not in CHUNK_KEY_SIZES:
                    snap.malformed.append(("chunks", key))
                    continue
                _, index, version = chunk_key_parts(key)
                snap.chunks[_ino(key)].append(Chunk(index, version, len(value), key))
            if db["uploads"] is not None:  # absent from a version-1 store opened read-only
                for key, value in txn.cursor(db=db["uploads"]):
                    if len(key) != 8 or len(value) != 8:
                        snap.malformed.append(("uploads", key))
                        continue
                    snap.uploads[_ino(key)] = int.from_bytes(value, "big")
            for name, found in (("pending", snap.pending), ("orphans", snap.orphans)):
                for key in txn.cursor(db=db[name]).iternext(values=False):
                    if len(key) != 8:
                        snap.malformed.append((name, key))
                        continue
                    found.add(_ino(key))
            for key in txn.cursor(db=db["xattrs"]).iternext(values=False):
                if len(key) <= 8:
                    snap.malformed.append(("xattrs", key))
                    continue
                snap.xattrs[_ino(key)].append(key[8:])
    return snap


def _scan_inode(snap: Snapshot, ino: int, value: bytes) -> None:
    try:
        inode = Inode.unpack(ino, value)
    except struct.error:
        new, old = INODE_SIZES
        snap.bad_inodes[ino] = f"inode is {len(value)} bytes long, not {new} (or {old} from format 1)"
        return
    if inode.kind not in KIND_NAMES:
        snap.bad_inodes[ino] = f"inode has unknown kind {inode.kind}"
        return
    snap.inodes[ino] = inode


CHUNK_KEY_SIZES = (20, 12)  # ino | index | version; version-1 stores: ino | index (read as version 0)


def _record_info(container, value: bytes) -> RecordInfo:
    try:
        record = container.unpack(value)
    except SdfsError as error:
        return RecordInfo(len(value), error=str(error))
    model = record.model
    space = {
        "weights_sha256": model.weights_sha256.hex(),
        "scaling_factor": round(model.scaling_factor, 6),
        "latent_channels": model.latent_channels,
        "spatial_factor": model.spatial_factor,
    }
    return RecordInfo(len(value), record.output_length, {"name": model.name, **space})


# -- finding problems


class Checker:
    """Derives every problem from one snapshot; each problem carries its fix."""

    def __init__(self, store: Store, snap: Snapshot):
        self.store = store
        self.snap = snap
        self.db = store.db
        self.problems: list[Problem] = []
        self.inodes = dict(snap.inodes)  # with planned rebuilds, so later checks see what repair leaves
        self.links: dict[int, list[Entry]] = defaultdict(list)  # child -> its valid entries
        self.children: dict[int, list[Entry]] = defaultdict(list)  # parent -> its valid entries
        self.paths: dict[int, str] = {}
        self.moved: set[int] = set()  # inodes a fix moves to lost+found (they get counts of their own)
        self.bad_entries: list[tuple[Entry, str]] = []
        self.reattached: set[int] = set()  # everything in the lost subtrees that repair moves

    def add(self, kind, ino, detail, repair=None, fix=None, phase=PHASE_CLEANUP, path=...):
        if path is ...:
            path = self.paths.get(ino) if ino is not None else None
        self.problems.append(Problem(kind, ino, path, detail, repair, fix, phase))

    def run(self) -> list[Problem]:
        self.check_inodes()
        self.check_entries()
        self.walk_from_root()
        self.report_bad_entries()
        self.check_meta()
        self.check_content()
        self.check_unreachable()
        self.check_counts()
        self.check_queues()
        self.check_orphaned_data()
        return self.problems

    # meta

    def check_meta(self) -> None:
        meta = self.snap.meta
        highest = max([*self.inodes, *self.snap.bad_inodes, ROOT])
        raw = meta.get(b"next_ino")
        next_ino = int.from_bytes(raw, "big") if raw and len(raw) == 8 else None
        if next_ino is None or next_ino <= highest:
            seen = "missing" if next_ino is None else str(next_ino)
            self.add("meta", None, f"meta next_ino is {seen}, not above the highest inode {highest}",
                     f"set it to {highest + 1}",
                     lambda txn: txn.put(b"next_ino", _key(highest + 1), db=self.db["meta"]), PHASE_META)
        self.model = self._meta_model()

    def _meta_model(self) -> dict | None:
        raw = self.snap.meta.get(b"model")
        latent_models = {json.dumps(r.model, sort_keys=True) for r in self.snap.records.values() if r.model}
        try:
            model = json.loads(raw) if raw else None
            if latent_models and model is not None and not isinstance(model.get("weights_sha256"), str):
                raise ValueError("no weights_sha256")
        except (ValueError, AttributeError) as error:
            problem = f"meta model is not valid JSON of a VAE identity ({error})"
        else:
            if model is not None or not latent_models:
                return model
            problem = "meta model is missing but the store holds latent records"
        if len(latent_models) == 1:
            value = next(iter(latent_models)).encode()
            self.add("meta", None, problem, "rewrite it from the records' VAE identity",
                     lambda txn: txn.put(b"model", value, db=self.db["meta"]), PHASE_META)
            return json.loads(value)
        why = "the records name several VAEs" if latent_models else "no record names the VAE"
        self.add("meta", None, f"{problem}; {why}")
        return None

    # inodes

    def check_inodes(self) -> None:
        if ROOT not in self.snap.inodes and ROOT not in self.snap.bad_inodes:
            t = now_ns()
            root = Inode(ROOT, DIR, 0o40755, os.getuid(), os.getgid(), 2, 0, t, t, t, 0, 0)
            self.inodes[ROOT] = root
            self.add("missing-root", ROOT, "the root directory's inode is missing", "recreate it (mode 0755)",
                     self._put_inode_fix(root), PHASE_INODES, path="/")
        elif ROOT in self.snap.inodes and not self.snap.inodes[ROOT].is_dir:
            self.add("missing-root", ROOT, "the root inode is not a directory", path="/")
        for ino, why in self.snap.bad_inodes.items():
            rebuilt, what = self._rebuilt(ino)
            self.inodes[ino] = rebuilt
            self.add("bad-inode", ino, why, f"rebuild it as {what}", self._put_inode_fix(rebuilt), PHASE_INODES)

    def _rebuilt(self, ino: int) -> tuple[Inode, str]:
        """What an unreadable inode most likely was, judged by what refers to it."""
        t = now_ns()
        base = Inode(ino, VERBATIM, 0o100600, os.getuid(), os.getgid(), 1, 0, t, t, t, 0, 1)
        has_children = any(e.parent == ino for e in self.snap.entries)
        record = self.snap.records.get(ino)
        if has_children or ino == ROOT:
            return replace(base, kind=DIR, mode=0o40700, nlink=2), "a directory (mode 0700)"
        if record and record.error is None:
            return replace(base, kind=LATENT, size=record.output_length, stored=record.length), "a latent file (mode 0600)"
        upload = self.snap.uploads.get(ino)
        content = [c for c in self.snap.chunks.get(ino, ()) if c.version != upload]
        generation = max([1, *(c.version for c in content)])  # every chunk it has becomes its content
        size = max((c.index * CHUNK + c.length for c in content), default=0)
        stored = sum(c.length for c in _live(content, generation).values())
        holes = "" if stored == size else f", {size:,} bytes long with holes"
        return (replace(base, size=size, stored=stored, generation=generation),
                f"a verbatim file of its {stored:,} stored bytes{holes} (mode 0600)")

    def _put_inode_fix(self, inode: Inode):
        return lambda txn: txn.put(_key(inode.ino), inode.pack(), db=self.db["inodes"])

    # entries and the tree

    def check_entries(self) -> None:
        by_child: dict[int, list[Entry]] = defaultdict(list)
        for entry in self.snap.entries:
            why = self._entry_problem(entry)
            if why:
                self.bad_entries.append((entry, why))
                continue
            by_child[entry.child].append(entry)
        for child, entries in by_child.items():
            if self.inodes[child].is_dir and len(entries) > 1:
                keep = next((e for e in entries if self.snap.dirparents.get(child) == e.parent), entries[0])
                for extra in entries:
                    if extra is not keep:
                        self.add("directory-link", child,
                                 f"directory has a second entry {_show(extra.name)!r} in directory {extra.parent}",
                                 "remove that entry", self._remove_entry_fix(extra), PHASE_ENTRIES)
                entries = [keep]
            self.links[child] = entries
            for entry in entries:
                self.children[entry.parent].append(entry)

    def _entry_problem(self, entry: Entry) -> str | None:
        parent = self.inodes.get(entry.parent)
        if parent is None:
            return "whose directory does not exist"
        if not parent.is_dir:
            return f"whose parent is a {KIND_NAMES[parent.kind]} file, not a directory"
        if entry.name in (b"", b".", b"..") or b"/" in entry.name or b"\0" in entry.name:
            return "has an invalid name"
        if entry.child not in self.inodes:
            return f"points at missing inode {entry.child}"
        if entry.child == ROOT:
            return "points at the root directory"
        return None

    def _remove_entry_fix(self, entry: Entry):
        key = _key(entry.parent) + entry.name

        def fix(txn):
            if txn.get(key, db=self.db["dirents"]) == _key(entry.child):
                txn.delete(key, db=self.db["dirents"])

        return fix

    def walk_from_root(self) -> None:
        """Paths of everything the root reaches (breadth first, no loops)."""
        self.paths = {ROOT: "/"}
        todo = [ROOT]
        while todo:
            parent = todo.pop()
            for entry in self.children.get(parent, ()):
                if entry.child not in self.paths:
                    self.paths[entry.child] = self.paths[parent].rstrip("/") + "/" + _show(entry.name)
                    todo.append(entry.child)

    def report_bad_entries(self) -> None:
        for entry, why in self.bad_entries:
            parent_path = self.paths.get(entry.parent)
            path = parent_path.rstrip("/") + "/" + _show(entry.name) if parent_path else None
            where = "" if path else f" {_show(entry.name)!r} in directory {entry.parent}"
            self.add("dangling-entry", entry.child, f"entry{where} {why}", "remove the entry",
                     self._remove_entry_fix(entry), PHASE_ENTRIES, path=path)

    # content

    def check_content(self) -> None:
        for ino, inode in self.inodes.items():
            self._check_type(inode)
            if inode.kind == LATENT:
                self._check_latent(inode)
            elif inode.kind in CONTENT_KINDS:
                self._check_chunks(inode)
            elif inode.size or inode.stored:  # directories and special files hold no bytes
                self.add("content", ino, f"{_what(inode)} has size {inode.size:,} and stored {inode.stored:,}; "
                         f"it holds no bytes", "set both to 0", self._set_fix(ino, size=0, stored=0), PHASE_CONTENT)
            if inode.kind in CONTENT_KINDS or inode.kind == LATENT:
                self._check_stray_uploads(inode)
        self._check_upload_entries()

    def _check_type(self, inode: Inode) -> None:
        """The mode's file type is what the kernel sees (st_mode); the kind is
        what the store does with the inode. The kind wins: a special file's
        type is a guess, a character device if it has a device number."""
        types = FILE_TYPES[inode.kind]
        mode = inode.mode
        if stat.S_IFMT(mode) not in types:
            if inode.kind == SPECIAL:
                fixed = (stat.S_IFCHR if inode.rdev else stat.S_IFIFO) | stat.S_IMODE(mode)
            else:
                fixed = types[0] | stat.S_IMODE(mode)
            self.add("file-type", inode.ino, f"mode {mode:o} makes it a {_type_name(mode)}, but it is a "
                     f"{_KIND_TEXT.get(inode.kind, KIND_NAMES[inode.kind] + ' file')}",
                     f"make it a {_type_name(fixed)} (mode {fixed:o})",
                     self._set_fix(inode.ino, mode=fixed), PHASE_CONTENT)
            mode = fixed
        if inode.rdev and not (inode.kind == SPECIAL and stat.S_IFMT(mode) in (stat.S_IFCHR, stat.S_IFBLK)):
            what = _what(replace(inode, mode=mode))
            self.add("file-type", inode.ino, f"{what} has device number {inode.rdev:#x}; only character and block "
                     f"devices have one", "set it to 0", self._set_fix(inode.ino, rdev=0),
                     PHASE_CONTENT)

    def _check_chunks(self, inode: Inode) -> None:
        """The hole rule (docs/FORMAT.md): per index, the chunk of the highest
        version up to the generation is the content; it must lie inside the
        size; missing or short chunks read as zeros."""
        ino = inode.ino
        chunks = [c for c in self.snap.chunks.get(ino, ()) if c.version <= inode.generation]
        live = _live(chunks, inode.generation)
        leftover = [c for c in chunks if live[c.index] is not c]
        if leftover:
            self.add("leftover", ino, f"{_chunks_text(leftover)} replaced by a newer version {_are(leftover)} still "
                     f"stored; a commit deletes what it replaces",
                     "delete them", self._delete_chunks_fix([c.key for c in leftover]), PHASE_CONTENT)
        for chunk in live.values():
            if chunk.length > CHUNK:
                self.add("content", ino, f"chunk {chunk.index} holds {chunk.length:,} bytes, more than a chunk's "
                         f"{CHUNK:,}",
                         "split it into chunks of 1 MiB", self._chunks_fix(ino), PHASE_CONTENT)
        end = max((c.index * CHUNK + c.length for c in live.values()), default=0)
        past = [c for c in live.values() if c.index * CHUNK + c.length > inode.size]
        what = _what(inode)
        if inode.kind == SYMLINK and end != inode.size:  # a target has no holes: it is exactly its bytes
            self.add("content", ino, f"{what} of size {inode.size:,} has a target of {end:,} stored bytes",
                     f"set its size to {end:,}", self._chunks_fix(ino), PHASE_CONTENT)
        elif past:
            self.add("content", ino, f"{what} of size {inode.size:,} has {_count(len(past), 'chunk')} past its size "
                     f"(the last ends at byte {end:,})", f"set its size to {end:,}, keeping every stored byte",
                     self._chunks_fix(ino), PHASE_CONTENT)
        held = sum(c.length for c in live.values())
        if inode.stored != held:
            self.add("content", ino, f"stored is {inode.stored:,} but its chunks hold {held:,} bytes",
                     f"set stored to {held:,}", self._chunks_fix(ino), PHASE_CONTENT)

    def _upload_in_progress(self, inode: Inode) -> int | None:
        """The version of a writer's upload to this file, if the uploads table names a valid one."""
        version = self.snap.uploads.get(inode.ino)
        if version is not None and inode.kind in WRITABLE and version > inode.generation:
            return version
        return None

    def _check_stray_uploads(self, inode: Inode) -> None:
        """Chunks above the generation are a writer's upload only while the
        uploads table names their version; otherwise nobody will commit or
        drop them (a mount drops only what the table names)."""
        upload = self._upload_in_progress(inode)
        stray = [c for c in self.snap.chunks.get(inode.ino, ()) if c.version > inode.generation and c.version != upload]
        if stray:
            versions = ", ".join(str(v) for v in sorted({c.version for c in stray}))
            self.add("upload", inode.ino, f"{_chunks_text(stray)} of version {versions}, above the file's generation "
                     f"{inode.generation}, belong{'s' if len(stray) == 1 else ''} to no upload in progress",
                     "delete them", self._delete_chunks_fix([c.key for c in stray]), PHASE_CLEANUP)

    def _check_upload_entries(self) -> None:
        for ino, version in sorted(self.snap.uploads.items()):
            inode = self.inodes.get(ino)
            if inode is None:
                continue  # data of a missing inode: check_orphaned_data
            if inode.kind not in WRITABLE:
                why = f"names a {_what(inode)}, which is never written through uploads"
            elif version <= inode.generation:
                why = (f"names version {version}, not above the file's generation {inode.generation} "
                       f"(its commit should have removed the entry)")
            else:
                continue
            self.add("upload", ino, f"uploads entry {why}", "delete the entry",
                     self._delete_keys_fix("uploads", _key(ino)), PHASE_CLEANUP)

    def _check_latent(self, inode: Inode) -> None:
        record = self.snap.records.get(inode.ino)
        if record is None:
            self._move_as_file(inode, "missing-record", "latent file has no record", "missing-record")
        elif record.error:
            self._move_as_file(inode, "corrupt-record", f"latent record is corrupt ({record.error})", "corrupt-record")
        elif self.model is not None and _latent_space(record.model) != _latent_space(self.model):
            self.add("record-model", inode.ino,
                     f"record was encoded with VAE {record.model['name']} (weights {record.model['weights_sha256'][:12]}),"
                     f" not the store's {self.model.get('name')} (weights {self.model['weights_sha256'][:12]}); it cannot be read")
        elif record.output_length != inode.size or record.length != inode.stored:
            self.add("content", inode.ino,
                     f"inode says size {inode.size:,}, stored {inode.stored:,}; its record decodes to "
                     f"{record.output_length:,} bytes and is {record.length:,} bytes long",
                     f"set size {record.output_length:,}, stored {record.length:,}",
                     self._set_fix(inode.ino, size=record.output_length, stored=record.length), PHASE_CONTENT)

    def _move_as_file(self, inode: Inode, kind: str, detail: str, suffix: str) -> None:
        """A latent that cannot be decoded: keep its bytes as a plain file under
        lost+found, so its old name stops failing with EIO and nothing is lost."""
        name = f"#{inode.ino}.{suffix}".encode()
        held = self.snap.records.get(inode.ino)
        what = f"its {held.length:,} raw record bytes" if held else "no bytes"
        self.moved.add(inode.ino)
        self.add(kind, inode.ino, detail,
                 f"move it to /lost+found/{name.decode()} as a verbatim file holding {what}",
                 self._record_to_file_fix(inode.ino, name, suffix), PHASE_MOVES)

    def check_unreachable(self) -> None:
        reached = set(self.paths)
        lost = {ino for ino, inode in self.inodes.items()
                if ino not in reached and ino not in self.moved
                and (inode.nlink > 0 or self.children.get(ino) or ino in self.links)}
        unlinked = [ino for ino, inode in self.inodes.items()
                    if ino not in reached and ino not in lost and ino not in self.moved and ino not in self.snap.orphans]
        for top, entries in self._lost_tops(lost):
            inode = self.inodes[top]
            what = "directory" if inode.is_dir else f"{KIND_NAMES[inode.kind]} file"
            self.moved.add(top)
            self.add("lost", top, f"{what} with {inode.nlink} link(s) is not reachable from the root",
                     f"move it to /lost+found/#{top}", self._lost_fix(top, entries), PHASE_MOVES)
        for ino in unlinked:
            self.add("unlinked", ino, "inode has no links and is not in the orphan list",
                     "purge it, as a mount would", self._purge_fix(ino), PHASE_CLEANUP)

    def _lost_tops(self, lost: set[int]):
        """The tops of lost subtrees; moving them reattaches the rest. Inside a
        cycle of directories every member has a parent, so one is cut out."""
        tops = [(ino, []) for ino in sorted(lost) if not self.links.get(ino)]
        attached = self.reattached
        todo = [ino for ino, _ in tops]
        while True:
            while todo:
                parent = todo.pop()
                attached.add(parent)
                todo += [e.child for e in self.children.get(parent, ()) if e.child not in attached]
            rest = sorted(lost - attached)
            if not rest:
                return tops
            top = rest[0]
            tops.append((top, list(self.links.get(top, ()))))
            todo = [top]

    # counts

    def check_counts(self) -> None:
        for ino, inode in self.inodes.items():
            if ino in self.moved and not inode.is_dir:
                continue  # the move gives it exactly one link
            if ino not in self.paths and ino not in self.reattached:
                continue  # no name: an orphan waiting for its last close, or purged above
            if inode.is_dir:
                expected = 2 + sum(self.inodes[e.child].is_dir for e in self.children.get(ino, ()))
            else:
                expected = len(self.links[ino])
            if inode.nlink != expected:
                self.add("nlink", ino, f"link count is {inode.nlink}, but {_links_text(inode, expected)}",
                         f"set it to {expected}", self._set_fix(ino, nlink=expected), PHASE_COUNTS)
        self._check_dirparents()

    def _check_dirparents(self) -> None:
        for ino, inode in self.inodes.items():
            if not inode.is_dir or ino == ROOT or ino in self.moved:
                continue
            entries = self.links.get(ino)
            if not entries:
                continue
            parent = entries[0].parent
            if self.snap.dirparents.get(ino) != parent:
                self.add("dirparent", ino,
                         f"directory parent is recorded as {self.snap.dirparents.get(ino)} but its entry is in {parent}",
                         f"record {parent}",
                         lambda txn, ino=ino, parent=parent: txn.put(_key(ino), _key(parent), db=self.db["dirparents"]),
                         PHASE_COUNTS)
        for ino, parent in self.snap.dirparents.items():
            inode = self.inodes.get(ino)
            if inode is None or not inode.is_dir or ino == ROOT:
                what = "missing inode" if inode is None else ("the root" if ino == ROOT else "a file")
                self.add("dirparent", ino, f"directory parent recorded for {what}", "delete it",
                         self._delete_keys_fix("dirparents", _key(ino)), PHASE_CLEANUP)

    # queues

    def check_queues(self) -> None:
        for ino, inode in self.inodes.items():
            if inode.kind == PENDING and ino not in self.snap.pending and ino not in self.moved:
                self.add("queue", ino, "pending file is not in the encode queue", "queue it for encoding",
                         lambda txn, ino=ino: txn.put(_key(ino), b"", db=self.db["pending"]), PHASE_CLEANUP)
        for ino in sorted(self.snap.pending):
            inode = self.inodes.get(ino)
            if inode is not None and inode.kind != PENDING:
                self.add("queue", ino, f"{KIND_NAMES[inode.kind]} file is in the encode queue", "dequeue it",
                         self._delete_keys_fix("pending", _key(ino)), PHASE_CLEANUP)
        for ino in sorted(self.snap.orphans):
            inode = self.inodes.get(ino)
            if inode is not None and (self.links.get(ino) or ino in self.paths or ino in self.moved):
                self.add("queue", ino, "file with links is in the orphan list", "remove it from the list",
                         self._delete_keys_fix("orphans", _key(ino)), PHASE_CLEANUP)

    # data of inodes that do not exist

    def check_orphaned_data(self) -> None:
        for name, key in self.snap.malformed:
            self.add("malformed-key", None, f"{name} key {key[:24].hex()} has the wrong shape", "delete it",
                     self._delete_keys_fix(name, key), PHASE_CLEANUP)
        owners = {**self.inodes}
        for ino, chunks in sorted(self.snap.chunks.items()):
            inode = owners.get(ino)
            if inode is None or inode.kind in (DIR, SPECIAL):
                holder = "missing inode" if inode is None else _what(inode)
                self.add("orphaned-data", ino, f"{_chunks_text(chunks)} of a {holder}", "delete them",
                         self._delete_prefix_fix("chunks", _key(ino)), PHASE_CLEANUP)
            elif inode.kind == LATENT:  # its bytes are its record; only a writer's upload may sit in chunks
                held = [c for c in chunks if c.version <= inode.generation]
                if held:
                    self.add("orphaned-data", ino, f"{_chunks_text(held)} of a latent file, whose bytes are its record",
                             "delete them",
                             self._delete_chunks_fix([c.key for c in held]), PHASE_CLEANUP)
        for ino, record in sorted(self.snap.records.items()):
            inode = owners.get(ino)
            if (inode is None or inode.kind != LATENT) and ino not in self.snap.bad_inodes:
                holder = "missing inode" if inode is None else f"{KIND_NAMES[inode.kind]} file"
                self.add("orphaned-data", ino, f"record of {record.length:,} bytes belongs to a {holder}",
                         "delete it", self._delete_keys_fix("records", _key(ino)), PHASE_CLEANUP)
        for ino, names in sorted(self.snap.xattrs.items()):
            if ino not in owners:
                self.add("orphaned-data", ino, f"{len(names)} xattr(s) of a missing inode", "delete them",
                         self._delete_prefix_fix("xattrs", _key(ino)), PHASE_CLEANUP)
        for name, inos in (("pending", self.snap.pending), ("orphans", self.snap.orphans),
                           ("uploads", set(self.snap.uploads))):
            for ino in sorted(inos - owners.keys()):
                self.add("orphaned-data", ino, f"{name} entry of a missing inode", "delete it",
                         self._delete_keys_fix(name, _key(ino)), PHASE_CLEANUP)

    # fixes: each runs in its own write transaction and re-reads what it changes

    def _inode_in(self, txn, ino: int) -> Inode | None:
        data = txn.get(_key(ino), db=self.db["inodes"])
        try:
            return Inode.unpack(ino, data) if data else None
        except struct.error:
            return None

    def _put(self, txn, inode: Inode) -> None:
        txn.put(_key(inode.ino), inode.pack(), db=self.db["inodes"])

    def _set_fix(self, ino: int, **changes):
        def fix(txn):
            inode = self._inode_in(txn, ino)
            if inode is not None:
                self._put(txn, replace(inode, **changes))

        return fix

    def _delete_keys_fix(self, db: str, key: bytes):
        return lambda txn: txn.delete(key, db=self.db[db])

    def _delete_prefix_fix(self, db: str, prefix: bytes):
        return lambda txn: _delete_prefix(txn, self.db[db], prefix)

    def _delete_chunks_fix(self, keys: list[bytes]):
        def fix(txn):
            for key in keys:
                txn.delete(key, db=self.db["chunks"])

        return fix

    def _chunks_fix(self, ino: int):
        """Bring a file's chunks and inode to the rule, whichever of its
        problems is fixed first (running it again changes nothing): chunks over
        1 MiB split, the size extended over every chunk (a symlink's set to its
        target's length), stored set to the bytes held."""

        def fix(txn):
            inode = self._inode_in(txn, ino)
            if inode is None or inode.kind not in CONTENT_KINDS:
                return
            chunks = self.db["chunks"]
            live = self._live_keys(txn, inode)
            if any(len(txn.get(key, db=chunks)) > CHUNK for key in live.values()):
                _split_oversized(txn, chunks, ino, inode.generation, live)
                live = self._live_keys(txn, inode)
            lengths = {index: len(txn.get(key, db=chunks)) for index, key in live.items()}
            end = max((index * CHUNK + n for index, n in lengths.items()), default=0)
            size = end if inode.kind == SYMLINK else max(inode.size, end)
            self._put(txn, replace(inode, size=size, stored=sum(lengths.values())))

        return fix

    def _live_keys(self, txn, inode: Inode) -> dict[int, bytes]:
        """index -> key of the chunk a read uses (keys sort by version: the last one up to the generation)."""
        live = {}
        for index, version, key in self.store._chunks_of(txn, inode.ino):
            if version <= inode.generation:
                live[index] = key
        return live

    def _record_to_file_fix(self, ino: int, name: bytes, suffix: str):
        entries = list(self.links.get(ino, ()))

        def fix(txn):
            inode = self._inode_in(txn, ino)
            if inode is None or inode.kind != LATENT:
                return
            raw = txn.get(_key(ino), db=self.db["records"]) or b""
            self.store._delete_content(txn, ino)
            txn.delete(_key(ino), db=self.db["uploads"])  # repair runs unmounted: no writer will commit it
            generation = inode.generation + 1
            stored = self.store._put_chunks(txn, ino, raw, generation)[1]
            for entry in entries:
                key = _key(entry.parent) + entry.name
                if txn.get(key, db=self.db["dirents"]) == _key(ino):
                    txn.delete(key, db=self.db["dirents"])
            self._link_into_lost_found(txn, ino, name, is_dir=False)
            txn.delete(_key(ino), db=self.db["pending"])
            txn.delete(_key(ino), db=self.db["orphans"])
            verdict = f"fsck: the latent record was {suffix.split('-')[0]}; these are its raw bytes"
            txn.put(_key(ino) + b"sdfs.verdict", verdict.encode(), db=self.db["xattrs"])
            self._put(txn, replace(inode, kind=VERBATIM, size=len(raw), stored=stored, nlink=1,
                                   ctime_ns=now_ns(), generation=generation))

        return fix

    def _lost_fix(self, ino: int, cut_entries: list[Entry]):
        def fix(txn):
            inode = self._inode_in(txn, ino)
            if inode is None:
                return
            for entry in cut_entries:  # a directory cut out of a cycle leaves its old parent
                key = _key(entry.parent) + entry.name
                if txn.get(key, db=self.db["dirents"]) == _key(ino):
                    txn.delete(key, db=self.db["dirents"])
                    parent = self._inode_in(txn, entry.parent)
                    if parent is not None and inode.is_dir:
                        self._put(txn, replace(parent, nlink=max(parent.nlink - 1, 2)))
            self._link_into_lost_found(txn, ino, f"#{ino}".encode(), inode.is_dir)
            txn.delete(_key(ino), db=self.db["orphans"])
            if not inode.is_dir:
                self._put(txn, replace(self._inode_in(txn, ino), nlink=1))

        return fix

    def _purge_fix(self, ino: int):
        def fix(txn):
            inode = self._inode_in(txn, ino)
            if inode is None or inode.nlink > 0:
                return
            self.store._delete_content(txn, ino)
            for name in ("inodes", "orphans", "pending", "dirparents", "uploads"):
                txn.delete(_key(ino), db=self.db[name])
            _delete_prefix(txn, self.db["xattrs"], _key(ino))

        return fix

    def _link_into_lost_found(self, txn, ino: int, name: bytes, is_dir: bool) -> None:
        folder = self._lost_found(txn)
        unique, n = name, 0
        while txn.get(_key(folder) + unique, db=self.db["dirents"]) is not None:
            n += 1
            unique = name + f".{n}".encode()
        txn.put(_key(folder) + unique, _key(ino), db=self.db["dirents"])
        if is_dir:
            txn.put(_key(ino), _key(folder), db=self.db["dirparents"])
            found = self._inode_in(txn, folder)
            self._put(txn, replace(found, nlink=found.nlink + 1))

    def _lost_found(self, txn) -> int:
        """/lost+found, made on first use (mode 0700, like e2fsck's)."""
        name = LOST_FOUND
        while True:
            value = txn.get(_key(ROOT) + name, db=self.db["dirents"])
            if value is None:
                break
            existing = self._inode_in(txn, _ino(value))
            if existing is not None and existing.is_dir:
                return existing.ino
            name += b"-fsck"  # the name is taken by a file: do not touch it
        ino = _fresh_ino(txn, self.db)
        t = now_ns()
        self._put(txn, Inode(ino, DIR, 0o40700, os.getuid(), os.getgid(), 2, 0, t, t, t, 0, 0))
        txn.put(_key(ROOT) + name, _key(ino), db=self.db["dirents"])
        txn.put(_key(ino), _key(ROOT), db=self.db["dirparents"])
        root = self._inode_in(txn, ROOT)
        self._put(txn, replace(root, nlink=root.nlink + 1, mtime_ns=t, ctime_ns=t))
        return ino


# the file types a kind's mode may have (the first is the one repair sets)
FILE_TYPES = {
    DIR: (stat.S_IFDIR,), PENDING: (stat.S_IFREG,), VERBATIM: (stat.S_IFREG,), LATENT: (stat.S_IFREG,),
    SYMLINK: (stat.S_IFLNK,), SPECIAL: (stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK),
}
WRITABLE = (PENDING, VERBATIM, LATENT)  # kinds a writer can upload new content to
_TYPE_NAMES = {stat.S_IFDIR: "directory", stat.S_IFREG: "regular file", stat.S_IFLNK: "symlink",
               stat.S_IFIFO: "FIFO", stat.S_IFSOCK: "socket", stat.S_IFCHR: "character device",
               stat.S_IFBLK: "block device"}


_KIND_TEXT = {DIR: "directory", SYMLINK: "symlink", SPECIAL: "special file (FIFO, socket or device node)"}


def _are(items) -> str:
    return "is" if len(items) == 1 else "are"


def _chunks_text(chunks: list[Chunk]) -> str:
    return f"{_count(len(chunks), 'chunk')} ({_count(sum(c.length for c in chunks), 'byte')})"


def _type_name(mode: int) -> str:
    return _TYPE_NAMES.get(stat.S_IFMT(mode), f"file of unknown type {stat.S_IFMT(mode):o}")


def _what(inode: Inode) -> str:
    """How messages name an inode: 'directory', 'verbatim file', 'FIFO'…"""
    if inode.kind in (DIR, SYMLINK):
        return KIND_NAMES[inode.kind]
    if inode.kind == SPECIAL:
        return _type_name(inode.mode)
    return f"{KIND_NAMES[inode.kind]} file"


def _live(chunks: list[Chunk], generation: int) -> dict[int, Chunk]:
    """index -> the chunk a read uses: of those up to ``generation``, the last
    in key order (the highest version)."""
    return {c.index: c for c in chunks if c.version <= generation}


def _split_oversized(txn, db, ino: int, version: int, live: dict[int, bytes]) -> None:
    """Cut chunks longer than CHUNK into chunks of CHUNK at the next indexes,
    giving the bytes a read gave: a long chunk's bytes from its index on, the
    next indexes' own chunks read over them."""
    carry, at = b"", 0  # bytes a long chunk lays over indexes `at` onward

    def flush(until: int) -> None:
        nonlocal carry, at
        while carry and at < until:
            piece, carry = carry[:CHUNK], carry[CHUNK:]
            if piece.count(0) != len(piece):  # all zeros: a hole, not stored
                txn.put(_chunk_key(ino, at, version), piece, db=db)
            at += 1

    for index in sorted(live):
        flush(index)
        value = txn.get(live[index], db=db)
        if not carry and len(value) <= CHUNK:
            continue
        merged = bytearray(carry)
        merged[: len(value)] = value
        txn.delete(live[index], db=db)
        carry, at = bytes(merged), index
        flush(index + 1)
    flush(1 << 64)


def find_problems(store: Store, snapshot: Snapshot) -> list[Problem]:
    return Checker(store, snapshot).run()


def _latent_space(model: dict) -> tuple:
    return (model.get("weights_sha256"), model.get("latent_channels"), model.get("spatial_factor"),
            round(float(model.get("scaling_factor") or 0), 5))


def _links_text(inode: Inode, expected: int) -> str:
    if inode.is_dir:
        return f"it has {expected - 2} subdirector{'y' if expected == 3 else 'ies'}, so 2 + {expected - 2} = {expected}"
    return f"{expected} entr{'y' if expected == 1 else 'ies'} point at it"


def _show(name: bytes) -> str:
    return os.fsdecode(name)


def _delete_prefix(txn, db, prefix: bytes) -> None:
    cursor = txn.cursor(db=db)
    while cursor.set_range(prefix) and cursor.key().startswith(prefix):
        cursor.delete()


def _fresh_ino(txn, dbs) -> int:
    """An unused inode number, even when meta next_ino is behind."""
    raw = txn.get(b"next_ino", db=dbs["meta"])
    ino = int.from_bytes(raw, "big") if raw and len(raw) == 8 else ROOT + 1
    cursor = txn.cursor(db=dbs["inodes"])
    if cursor.last():
        ino = max(ino, _ino(cursor.key()) + 1)
    txn.put(b"next_ino", _key(ino + 1), db=dbs["meta"])
    return ino


# -- decoding


def decode_problems(store: Store, args) -> list[Problem]:
    """Decode every sound latent record; report those that fail or come out
    at another length than the inode's size."""
    with store.reading() as txn:
        latents = [Inode.unpack(_ino(k), v) for k, v in txn.cursor(db=store.db["inodes"])
                   if len(v) in INODE_SIZES and v[0] == LATENT]
    if not latents:
        return []
    codec = _load_matching_codec(store, args)
    _note_busy_mount(store)
    problems = []
    # the VAE's own batch size: 1 on a CPU (no gain from batching there, and
    # progress moves with every record), more on a GPU
    size = max(1, min(DECODE_BATCH, getattr(codec.vae, "batch_size", DECODE_BATCH)))
    with Progress(len(latents), sum(i.size for i in latents), what="decoding") as progress:
        for start in range(0, len(latents), size):
            batch = latents[start : start + size]
            records = [store.record(inode.ino) for inode in batch]
            sound = [(i, r) for i, r in zip(batch, records) if r is not None and _is_sound(r)]
            outputs = codec.decode_many([r for _, r in sound]) if sound else []
            for (inode, _), output in zip(sound, outputs):
                problem = _decode_problem(inode, output)
                if problem:
                    problems.append(problem)
            progress.advance(files=len(batch), nbytes=sum(i.size for i in batch))
    paths = _paths(store)
    for problem in problems:
        problem.path = paths.get(problem.ino)
    return problems


def _note_busy_mount(store: Store) -> None:
    """Decoding beside a mount that is still encoding shares the CPU with it,
    and both run several times slower: say so, and how to avoid it."""
    from .fs.control import daemon_state, mount_of

    mountpoint = mount_of(store.path)
    if mountpoint is None:
        return
    try:
        pending = daemon_state(mountpoint)["pending"]
    except (SdfsError, KeyError, ValueError):
        return
    if pending:
        print(f"sdfs: note: the mount at {mountpoint} is still encoding {pending} files; decoding beside it "
              f"shares the processor and both run slower (`sdfs sync {mountpoint}` first to wait for it)",
              file=sys.stderr)


def _is_sound(record: bytes) -> bool:
    """Structurally valid (the structural check reports the others)."""
    from .codec import container

    try:
        container.unpack(record)
        return True
    except SdfsError:
        return False


_DECODE_ADVICE = ("the record passes its checksum, so fsck keeps it; read the file through a mount "
                  "(`sdfs mount -v`) to see the decoder's error, try another --device or --decoder, "
                  "or copy the original in again")


def _decode_problem(inode: Inode, output) -> Problem | None:
    if isinstance(output, SdfsError):
        return Problem("decode", inode.ino, None, f"record decodes wrong ({output}); {_DECODE_ADVICE}", None)
    if len(output) != inode.size:
        return Problem("decode", inode.ino, None,
                       f"record decodes wrong: {len(output):,} bytes, not the file's size {inode.size:,}; "
                       f"{_DECODE_ADVICE}", None)
    return None


def _load_matching_codec(store: Store, args):
    from .cli import _load_codec

    codec = _load_codec(args)
    model = store.model()
    identity = codec.vae.identity
    if model and model.get("weights_sha256") != identity.weights_sha256.hex():
        raise SdfsError(
            f"--decode: the store's latents were made with VAE {model.get('name')} "
            f"(weights {str(model.get('weights_sha256'))[:12]}), not {identity.describe()}; pass --model with the store's VAE"
        )
    return codec


def _paths(store: Store) -> dict[int, str]:
    with store.reading() as txn:
        children = defaultdict(list)
        for key, value in txn.cursor(db=store.db["dirents"]):
            if len(key) > 8 and len(value) == 8:
                children[_ino(key)].append((key[8:], _ino(value)))
    paths, todo = {ROOT: "/"}, [ROOT]
    while todo:
        parent = todo.pop()
        for name, child in children.get(parent, ()):
            if child not in paths:
                paths[child] = paths[parent].rstrip("/") + "/" + _show(name)
                todo.append(child)
    return paths


# -- output


def _print_report(store_path, report: Report, repairing: bool) -> None:
    fixed = [p for p in report.found if p not in report.remaining]
    for problem in report.found:
        print(problem.line(repaired=problem in fixed))
    checked = f"checked {_count(report.inodes, 'inode')}, {_count(report.records, 'record')}"
    if not report.found:
        print(f"{checked}: no problems")
        return
    count = _count(len(report.found), "problem")
    if repairing:
        left = f"; {len(report.remaining)} remain (not repairable)" if report.remaining else ", all repaired"
        print(f"{checked}: {count}{left}")
        for problem in report.remaining:
            print("remains: " + problem.line())
        return
    would = Counter(ACTIONS[p.kind] for p in report.found if p.repair)
    cannot = sum(1 for p in report.found if not p.repair)
    text = f"{checked}: {count}"
    if would:
        text += f"; `sdfs fsck --repair {store_path}` would: " + ", ".join(f"{a} ({n})" for a, n in would.items())
    if cannot:
        text += f"; {cannot} cannot be repaired by fsck"
    print(text)


def _report_json(store_path, report: Report) -> dict:
    return {
        "store": str(store_path),
        "inodes": report.inodes,
        "records": report.records,
        "problems": [p.to_json() for p in report.found],
        "remaining": [p.to_json() for p in report.remaining],
        "problem_count": len(report.found),
        "remaining_count": len(report.remaining),
        "repaired": report.repaired,
        "exit_code": report.exit_code,
    }


def _count(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"
