"""POSIX conformance of a real mount: FIFOs, sockets, device nodes, hard
links, NAME_MAX, utimensat, sparse files, permissions seen by another user,
`cp -al`, `rsync -aH`, `sdfs import` of such a tree, and all of it again
after a remount and under `sdfs fsck`.

One mount serves the module (with --allow-other, so the kernel checks
permissions as it does for a shared mount). Each test works in a folder of its
own and ends by remembering a snapshot of it; test_remount_keeps_everything
unmounts, mounts the store again and compares. Tests run in file order; the
remount, import and fsck tests also work alone (they make what they check).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import json
import os
import re
import resource
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from tests.mounting import mounted, wait_for

pytestmark = [
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse"),
    pytest.mark.timeout(300),
]

OTHER_UID = OTHER_GID = 1000  # any user but root
TOUCH_STAMP = "2001-02-03 04:05:06.123456789"  # read as UTC (TZ=UTC below)
TOUCH_NS = 981173106_123456789
HUGE = 999_999_999_999_999  # bytes: a sparse file far beyond any disk


# -- the shared mount


class Mount:
    """The module's mount, which tests may take down and bring up again."""

    def __init__(self, base: Path, model: Path):
        self.base, self.model = base, model
        self.store, self.mnt = base / "store", base / "mnt"
        self.daemon = None
        self.remembered: dict[str, dict] = {}  # folder (relative to the mount) -> snapshot
        self.times: dict[str, tuple[int, int]] = {}  # path -> (atime_ns, mtime_ns) a remount must keep
        self.imported = None  # (source tree, `sdfs import` result), made while unmounted
        self.huge: Path | None = None  # test_huge_sparse_truncate's file, its last bytes b"\0\0end"
        self._stack = ExitStack()

    def up(self) -> "Mount":
        if self.daemon is None:
            self.daemon = self._stack.enter_context(mounted(self.store, self.mnt, self.model, "--allow-other"))
        return self

    def down(self) -> None:
        self._stack.close()
        self.daemon = None

    def remember(self, folder: Path) -> None:
        self.remembered[str(folder.relative_to(self.mnt))] = snapshot(folder)


@pytest.fixture(scope="module")
def fs(tmp_path_factory, tiny_vae_dir):
    mount = Mount(tmp_path_factory.mktemp("posix"), tiny_vae_dir)
    try:
        yield mount.up()
    finally:
        mount.down()


@pytest.fixture
def here(fs, request) -> Path:
    """A new folder in the (mounted) module mount for one test."""
    fs.up()
    folder = fs.mnt / request.node.name
    folder.mkdir()
    return folder


@pytest.fixture(autouse=True)
def exact_modes():
    """umask 0: modes given to mkfifo, mknod, bind and open are the modes stored."""
    old = os.umask(0)
    yield
    os.umask(old)


# -- helpers


def snapshot(root: Path) -> dict[str, tuple]:
    """Everything a remount must keep, for each entry under ``root``."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for path in [Path(folder)] + [Path(folder) / name for name in dirs + files]:
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_size > 64 << 20:  # a huge sparse file: its few blocks
                what = ("sparse", st.st_blocks)
            elif stat.S_ISREG(st.st_mode):
                what = hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                what = os.readlink(path)
            else:
                what = None
            found[str(path.relative_to(root))] = (stat.filemode(st.st_mode), st.st_ino, st.st_nlink, st.st_uid,
                                                  st.st_gid, st.st_rdev, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                                                  what)
    return found


def tree(root: Path) -> dict[str, tuple]:
    """What a copy must reproduce: type and mode, device number, size, content or
    target, and the mtime of files, to the nanosecond."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                what = path.read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                what = os.readlink(path)
            else:
                what = None
            size = None if stat.S_ISDIR(st.st_mode) else st.st_size
            mtime = st.st_mtime_ns if stat.S_ISREG(st.st_mode) else None
            found[str(path.relative_to(root))] = (stat.filemode(st.st_mode), st.st_rdev, size, what, mtime)
    return found


def link_groups(root: Path) -> set[frozenset[str]]:
    """Relative paths of the non-folders under ``root``, grouped by inode."""
    groups: dict[tuple[int, int], set[str]] = {}
    for folder, dirs, files in os.walk(root):
        for name in files:
            st = os.lstat(Path(folder) / name)
            groups.setdefault((st.st_dev, st.st_ino), set()).add(str((Path(folder) / name).relative_to(root)))
    return {frozenset(group) for group in groups.values()}


def nlinks(root: Path) -> dict[str, int]:
    return {str((Path(folder) / name).relative_to(root)): os.lstat(Path(folder) / name).st_nlink
            for folder, dirs, files in os.walk(root) for name in files}


def errno_of(call, *args, **kwargs) -> int:
    """The errno ``call`` fails with (0: it did not fail)."""
    try:
        call(*args, **kwargs)
    except OSError as error:
        return error.errno
    return 0


def bind_unix(sock: socket.socket, path: Path) -> None:
    """bind() at ``path`` even past sun_path's 108 bytes (through a folder descriptor)."""
    if len(os.fsencode(path)) < 100:
        sock.bind(str(path))
        return
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        sock.bind(f"/proc/self/fd/{folder}/{path.name}")
    finally:
        os.close(folder)


def connect_unix(path: Path) -> int:
    """Connect to the socket at ``path`` from another process: 0 and an echo, or the errno."""
    script = ("import errno, os, socket, sys\n"
              "s = socket.socket(socket.AF_UNIX)\n"
              "s.settimeout(20)\n"
              "folder = os.open(os.path.dirname(sys.argv[1]), os.O_RDONLY)\n"
              "try:\n"
              "    s.connect(f'/proc/self/fd/{folder}/' + os.path.basename(sys.argv[1]))\n"
              "except OSError as e:\n"
              "    print(e.errno); sys.exit()\n"
              "s.sendall(b'ping'); print(0, s.recv(64).decode())\n")
    return subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=30,
                          check=True).stdout.split()


def fifo_transfer(fifo: Path, payload: bytes) -> bytes:
    """``payload`` written into ``fifo`` by one process, read out by another."""
    with tempfile.TemporaryFile() as received:  # not a pipe to us: the reader never waits for this process
        reader = subprocess.Popen(["cat", str(fifo)], stdout=received)
        copy_in = "import sys; open(sys.argv[1], 'wb').write(sys.stdin.buffer.read())"
        writer = subprocess.Popen([sys.executable, "-c", copy_in, str(fifo)], stdin=subprocess.PIPE)
        try:
            writer.communicate(payload, timeout=30)
            reader.wait(timeout=30)
        finally:
            for proc in (reader, writer):
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        assert writer.returncode == 0 and reader.returncode == 0
        received.seek(0)
        return received.read()


def touch(*args) -> None:
    subprocess.run(["touch", *map(str, args)], check=True, env={**os.environ, "TZ": "UTC"})


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def special_tree(root: Path) -> Path:
    """A source tree with hard links (across folders too), a symlink, a FIFO,
    a socket, device nodes and a file with a nanosecond mtime."""
    (root / "d" / "e").mkdir(parents=True)
    (root / "a").write_bytes(b"linked three times\n")
    os.link(root / "a", root / "d" / "a2")
    os.link(root / "a", root / "d" / "e" / "a3")
    (root / "b").write_bytes(b"alone\n")
    os.utime(root / "b", ns=(1_000_000_001, TOUCH_NS))
    (root / "c").write_bytes(b"")  # empty, linked twice
    os.link(root / "c", root / "d" / "c2")
    os.symlink("a", root / "sym")
    os.link(root / "sym", root / "d" / "sym2", follow_symlinks=False)  # a hard link to a symlink (cp -al makes them)
    os.mkfifo(root / "fifo", 0o640)
    os.link(root / "fifo", root / "d" / "fifo2")
    os.mknod(root / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.mknod(root / "disk", stat.S_IFBLK | 0o660, os.makedev(259, 65541))  # minor past 16 bits
    listener = socket.socket(socket.AF_UNIX)
    bind_unix(listener, root / "sock")
    listener.close()  # the socket file stays
    os.chmod(root / "d", 0o750)
    return root


@contextmanager
def log_since(fs: Mount):
    """The daemon's log lines written inside the block, in ``.text`` afterwards."""
    start = fs.daemon.log.stat().st_size

    class Lines:
        text = ""

    yield Lines
    with open(fs.daemon.log, "rb") as log:
        log.seek(start)
        Lines.text = log.read().decode(errors="replace")


# -- special files


def test_fifo_carries_bytes_between_processes(fs, here):
    fifo = here / "fifo"
    os.mkfifo(fifo, 0o640)
    st = os.stat(fifo)
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640, stat.filemode(st.st_mode)
    assert st.st_nlink == 1 and st.st_size == 0 and st.st_uid == os.getuid()
    payload = os.urandom(300_000)  # several times a pipe's buffer: the processes really take turns
    assert fifo_transfer(fifo, payload) == payload
    assert os.stat(fifo).st_size == 0  # the bytes went through the kernel, none into the store
    assert errno_of(os.mkfifo, fifo) == errno.EEXIST
    fs.remember(here)


def test_unix_socket_bound_in_the_mount(fs, here):
    path = here / "sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.settimeout(30)
    try:
        bind_unix(listener, path)
        listener.listen(1)
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o777, stat.filemode(st.st_mode)
        answers = []
        client = threading.Thread(target=lambda: answers.append(connect_unix(path)))  # another process connects
        client.start()
        try:
            connection, _ = listener.accept()
            with connection:
                connection.settimeout(30)
                assert connection.recv(64) == b"ping"
                connection.sendall(b"pong")
        finally:
            client.join(timeout=60)
        assert answers == [["0", "pong"]]
    finally:
        listener.close()
    assert stat.S_ISSOCK(os.stat(path).st_mode)  # the socket file outlives its listener
    assert connect_unix(path) == [str(errno.ECONNREFUSED)]
    fs.remember(here)


def test_device_nodes_keep_their_numbers(fs, here):
    os.mknod(here / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.mknod(here / "disk", stat.S_IFBLK | 0o660, os.makedev(259, 65541))  # major > 255, minor > 16 bits
    os.mknod(here / "plain", stat.S_IFREG | 0o640)  # mknod of a regular file: an empty file
    null, disk, plain = (os.stat(here / name) for name in ("null", "disk", "plain"))
    assert stat.S_ISCHR(null.st_mode) and stat.S_IMODE(null.st_mode) == 0o600
    assert (os.major(null.st_rdev), os.minor(null.st_rdev)) == (1, 3)
    assert stat.S_ISBLK(disk.st_mode) and stat.S_IMODE(disk.st_mode) == 0o660
    assert (os.major(disk.st_rdev), os.minor(disk.st_rdev)) == (259, 65541)
    assert null.st_size == disk.st_size == 0
    assert stat.S_ISREG(plain.st_mode) and stat.S_IMODE(plain.st_mode) == 0o640 and plain.st_size == 0
    assert (here / "plain").read_bytes() == b""
    listing = subprocess.run(["ls", "-l", str(here)], capture_output=True, text=True, check=True).stdout
    assert any(re.match(r"crw------- .* 1,\s+3 .*null$", line) for line in listing.splitlines()), listing
    assert errno_of(os.mknod, here / "null", stat.S_IFCHR | 0o600, os.makedev(1, 5)) == errno.EEXIST
    fs.remember(here)


# -- hard links


def test_hard_links_share_one_inode(fs, here):
    (here / "sub").mkdir()
    a, b, c = here / "a", here / "b", here / "sub" / "c"
    a.write_bytes(b"hello")
    os.link(a, b)
    os.link(b, c)
    stats = [os.stat(p) for p in (a, b, c)]
    assert {s.st_ino for s in stats} == {stats[0].st_ino} and {s.st_nlink for s in stats} == {3}
    with open(c, "ab") as f:  # written through one name, read through the others
        f.write(b" world")
    assert a.read_bytes() == b.read_bytes() == b"hello world"

    # both names open at once: a write through one shows through the other before any close
    # (each name is a kernel inode of its own, with its own page cache)
    reader = os.open(a, os.O_RDONLY)
    writer = os.open(b, os.O_RDWR)
    try:
        assert os.pread(reader, 64, 0) == b"hello world"
        os.pwrite(writer, b"J", 0)
        assert os.pread(reader, 64, 0) == b"Jello world"
        os.pwrite(writer, b"!", 11)
        assert os.pread(reader, 64, 0) == b"Jello world!" and os.fstat(reader).st_size == 12
    finally:
        os.close(writer)
        os.close(reader)

    # attributes changed through one name show through the others at once, though
    # the kernel caches each name's attributes for a second (fs/kernel_cache.py)
    os.chmod(c, 0o600)
    os.utime(b, ns=(TOUCH_NS, TOUCH_NS))
    assert {(stat.S_IMODE(s.st_mode), s.st_mtime_ns) for s in map(os.stat, (a, b, c))} == {(0o600, TOUCH_NS)}

    os.unlink(a)  # one name less; the data stays
    assert not a.exists() and os.stat(b).st_nlink == os.stat(c).st_nlink == 2
    assert b.read_bytes() == c.read_bytes() == b"Jello world!"

    before = os.stat(b)
    folder_before = os.stat(here)
    os.rename(b, c)  # two names of one file: POSIX says do nothing
    assert b.exists() and c.exists(), "rename onto another name of the same file must change nothing"
    after = os.stat(b)
    assert after.st_nlink == 2 and after.st_ino == before.st_ino and after.st_ctime_ns == before.st_ctime_ns
    assert os.stat(here).st_mtime_ns == folder_before.st_mtime_ns

    other = here / "other"
    other.write_bytes(b"other content")
    other_ino = os.stat(other).st_ino
    os.rename(other, b)  # another file onto a link name: that name now means the other file
    assert not other.exists()
    assert os.stat(b).st_ino == other_ino and b.read_bytes() == b"other content" and os.stat(b).st_nlink == 1
    assert os.stat(c).st_nlink == 1 and c.read_bytes() == b"Jello world!"

    assert os.stat(here).st_nlink == 3 and os.stat(here / "sub").st_nlink == 2  # ".", "..", "sub"
    assert errno_of(os.link, c, b) == errno.EEXIST
    assert errno_of(os.link, here / "sub", here / "sub-link") == errno.EPERM  # no hard links to folders
    assert errno_of(os.link, here / "missing", here / "new") == errno.ENOENT

    os.symlink("c", here / "sub" / "sym")  # links to a symlink and to a FIFO are links too
    os.link(here / "sub" / "sym", here / "sym2", follow_symlinks=False)
    os.mkfifo(here / "fifo")
    os.link(here / "fifo", here / "sub" / "fifo2")
    for name, kind in (("sym2", stat.S_ISLNK), ("fifo", stat.S_ISFIFO)):
        st = os.lstat(here / name)
        assert kind(st.st_mode) and st.st_nlink == 2, name
    assert os.readlink(here / "sym2") == "c"
    assert link_groups(here) == {frozenset({"b"}), frozenset({"sub/c"}), frozenset({"sym2", "sub/sym"}),
                                 frozenset({"fifo", "sub/fifo2"})}
    fs.remember(here)


def test_a_file_rewritten_at_once_reads_back_whole_while_others_open_it(fs, here):
    """open(O_TRUNC), write, close, then stat and read it back, again and again,
    while other threads open and read the same files: st_size and the bytes
    are always the last ones written. (With attributes cached for a second,
    an st_size of 0 from between the truncate and the write showed now and
    then; see mount.py.)"""
    import random

    paths = [here / f"r{i}" for i in range(3)]
    for path in paths:
        path.write_bytes(b"x")
    stop, seen = threading.Event(), []

    def reader():
        while not stop.is_set():
            try:
                with open(random.choice(paths), "rb") as f:
                    os.fstat(f.fileno())
                    f.read(16)
            except OSError:
                pass

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for thread in readers:
        thread.start()
    try:
        rng = random.Random(5)
        for _ in range(600):
            path, data = rng.choice(paths), rng.randbytes(rng.randrange(1, 4096))
            with open(path, "wb") as f:
                f.write(data)
            with open(path, "rb") as f:
                size, back = os.fstat(f.fileno()).st_size, f.read()
            if (size, back) != (len(data), data):
                seen.append((path.name, size, len(back), len(data)))
    finally:
        stop.set()
        for thread in readers:
            thread.join()
    assert seen == []
    fs.remember(here)


def test_open_file_outlives_its_last_name(fs, here):
    path = here / "f"
    path.write_bytes(b"data")
    fd = os.open(path, os.O_RDWR)
    try:
        os.unlink(path)
        assert not path.exists() and os.listdir(here) == []  # no .fuse_hidden* left in sight
        assert os.pread(fd, 64, 0) == b"data"
        assert os.pwrite(fd, b"more", 4) == 4
        assert os.pread(fd, 64, 0) == b"datamore"
        st = os.fstat(fd)
        assert st.st_nlink == 0 and st.st_size == 8
        os.ftruncate(fd, 2)
        assert os.pread(fd, 64, 0) == b"da" and os.fstat(fd).st_size == 2
        os.fchmod(fd, 0o600)
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o600
        os.setxattr(fd, "user.note", b"kept")
        assert os.getxattr(fd, "user.note") == b"kept"
        assert os.lseek(fd, 0, os.SEEK_END) == 2
    finally:
        os.close(fd)
    assert os.listdir(here) == []

    # renamed over while open: the old file stays readable through its descriptor
    target, new = here / "target", here / "new"
    target.write_bytes(b"old")
    new.write_bytes(b"new")
    fd = os.open(target, os.O_RDONLY)
    try:
        os.rename(new, target)
        assert target.read_bytes() == b"new" and os.listdir(here) == ["target"]
        assert os.pread(fd, 64, 0) == b"old" and os.fstat(fd).st_nlink == 0
    finally:
        os.close(fd)

    # the last name of a hard-linked file: fstat counts the names left
    os.link(target, here / "twin")
    fd = os.open(target, os.O_RDONLY)
    try:
        os.unlink(target)
        assert os.fstat(fd).st_nlink == 1 and os.stat(here / "twin").st_nlink == 1
    finally:
        os.close(fd)

    # a folder holding an unlinked open file can go (as on ext4)
    (here / "gone").mkdir()
    (here / "gone" / "f").write_bytes(b"inside")
    fd = os.open(here / "gone" / "f", os.O_RDONLY)
    try:
        os.unlink(here / "gone" / "f")
        os.rmdir(here / "gone")
        assert os.pread(fd, 64, 0) == b"inside"
    finally:
        os.close(fd)

    with tempfile.TemporaryFile(dir=here) as f:  # create, unlink, then use: fstat at once
        f.write(b"scratch" * 1000)
        f.seek(0)
        assert f.read() == b"scratch" * 1000
    assert sorted(os.listdir(here)) == ["twin"]
    fs.remember(here)


def test_cp_al_and_rsync_aH_keep_link_groups(fs, here, tmp_path):
    src = special_tree(tmp_path / "src")
    expected_groups = link_groups(src)
    assert frozenset({"a", "d/a2", "d/e/a3"}) in expected_groups  # the tree is what the test means
    subprocess.run(["rsync", "-aH", f"{src}/", f"{here / 'rsync'}/"], check=True)
    subprocess.run(["cp", "-al", str(here / "rsync"), str(here / "cpal")], check=True)
    subprocess.run(["rsync", "-aH", f"{here / 'rsync'}/", f"{tmp_path / 'back'}/"], check=True)
    for copy in (here / "rsync", here / "cpal", tmp_path / "back"):
        assert link_groups(copy) == expected_groups, copy
        assert tree(copy) == tree(src), copy
    # cp -al made every name a link to the rsync copy's inode: twice the links each
    ino = {rel: os.lstat(here / "rsync" / rel).st_ino for group in expected_groups for rel in group}
    assert all(os.lstat(here / "cpal" / rel).st_ino == number for rel, number in ino.items())
    assert nlinks(here / "cpal") == {rel: 2 * n for rel, n in nlinks(src).items()}
    assert nlinks(tmp_path / "back") == nlinks(src)
    fs.remember(here)


def renameat2(old: Path, new: Path, flags: int) -> int:
    """renameat2(2) through libc: 0 or the errno."""
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd = -100
    if libc.renameat2(at_fdcwd, os.fsencode(old), at_fdcwd, os.fsencode(new), flags) == 0:
        return 0
    return ctypes.get_errno()


def test_rename_noreplace_and_exchange(fs, here):
    no_replace, exchange = 1, 2
    (here / "a").write_bytes(b"a")
    (here / "b").write_bytes(b"b")
    assert renameat2(here / "a", here / "b", no_replace) == errno.EEXIST
    assert (here / "a").read_bytes() == b"a" and (here / "b").read_bytes() == b"b"
    assert renameat2(here / "a", here / "c", no_replace) == 0
    assert not (here / "a").exists() and (here / "c").read_bytes() == b"a"
    # RENAME_EXCHANGE is not offered: refused, and nothing moves
    assert renameat2(here / "b", here / "c", exchange) in (errno.EINVAL, errno.ENOTSUP, errno.ENOSYS)
    assert (here / "b").read_bytes() == b"b" and (here / "c").read_bytes() == b"a"
    fs.remember(here)


# -- names


def test_name_max_255_bytes_in_256_out(fs, here):
    names_255 = ["n" * 255, "é" * 127 + "x"]  # bytes count, not characters
    for i, name in enumerate(names_255):
        assert len(os.fsencode(name)) == 255
        folder = here / f"ok{i}"
        folder.mkdir()
        (folder / name).write_bytes(b"x")
        (folder / (name[:-1] + "d")).mkdir()
        os.mkfifo(folder / (name[:-1] + "p"))
        os.symlink(name, folder / (name[:-1] + "s"))
        os.link(folder / name, folder / (name[:-1] + "l"))
        os.rename(folder / name, folder / (name[:-1] + "r"))
        assert len(os.listdir(folder)) == 5 and (folder / (name[:-1] + "r")).read_bytes() == b"x"

    existing = here / "ok0" / ("n" * 254 + "r")
    for long in ("m" * 256, "é" * 128):
        assert len(os.fsencode(long)) == 256
        p = here / long
        calls = {
            "create": lambda: os.open(p, os.O_CREAT | os.O_WRONLY, 0o644),
            "open": lambda: os.open(p, os.O_RDONLY),
            "mkdir": lambda: os.mkdir(p),
            "mkfifo": lambda: os.mkfifo(p),
            "mknod": lambda: os.mknod(p, stat.S_IFCHR | 0o600, os.makedev(1, 3)),
            "symlink": lambda: os.symlink("target", p),
            "link": lambda: os.link(existing, p),
            "rename": lambda: os.rename(existing, p),
            "rename from": lambda: os.rename(p, here / "x"),
            "stat": lambda: os.stat(p),
            "lstat": lambda: os.lstat(p),
            "access": lambda: os.access(p, os.R_OK) or os.stat(p),
            "unlink": lambda: os.unlink(p),
            "rmdir": lambda: os.rmdir(p),
            "chmod": lambda: os.chmod(p, 0o600),
            "utime": lambda: os.utime(p),
            "truncate": lambda: os.truncate(p, 0),
            "readlink": lambda: os.readlink(p),
            "getxattr": lambda: os.getxattr(p, "user.x"),
            "setxattr": lambda: os.setxattr(p, "user.x", b"1"),
            "listdir": lambda: os.listdir(p),
            "stat below": lambda: os.stat(p / "x"),
            "mkdir below": lambda: os.mkdir(p / "x"),
        }
        got = {what: errno.errorcode.get(errno_of(call), "no error") for what, call in calls.items()}
        assert got == {what: "ENAMETOOLONG" for what in calls}
    assert existing.exists() and sorted(os.listdir(here)) == ["ok0", "ok1"]  # nothing made, nothing moved

    target = "t" * 300 + "/" + "u" * 256  # a symlink's target is data: any component length goes
    os.symlink(target, here / "long-target")
    assert os.readlink(here / "long-target") == target
    assert os.statvfs(here).f_namemax == 255
    fs.remember(here)


# -- times


def test_touch_sets_one_time_to_the_nanosecond(fs, here):
    f = here / "f"
    f.write_bytes(b"x")
    os.utime(f, ns=(1_111_111_111_111_111_111, 1_222_222_222_222_222_222))
    before = os.stat(f)
    started = time.time_ns()
    touch("-a", f)  # utimensat(atime=UTIME_NOW, mtime=UTIME_OMIT)
    st = os.stat(f)
    assert st.st_mtime_ns == 1_222_222_222_222_222_222, "touch -a changed the mtime"
    assert started - 1_000_000_000 <= st.st_atime_ns <= time.time_ns() + 1_000_000_000
    assert st.st_ctime_ns > before.st_ctime_ns

    touch("-m", "-d", TOUCH_STAMP, f)  # utimensat(atime=UTIME_OMIT, mtime=given)
    st2 = os.stat(f)
    assert st2.st_mtime_ns == TOUCH_NS and st2.st_atime_ns == st.st_atime_ns
    assert st2.st_ctime_ns > st.st_ctime_ns

    touch("-a", "-d", "1999-12-31 23:59:59.000000001", f)
    st3 = os.stat(f)
    assert st3.st_atime_ns == 946684799_000000001 and st3.st_mtime_ns == TOUCH_NS

    touch("-m", f)  # mtime now, atime kept
    st4 = os.stat(f)
    assert st4.st_atime_ns == 946684799_000000001 and st4.st_mtime_ns >= started

    os.utime(f, ns=(5, 6))  # both given (1970, a few ns past the epoch)
    assert (os.stat(f).st_atime_ns, os.stat(f).st_mtime_ns) == (5, 6)

    # the same on a folder, a FIFO and a symlink itself (touch -h: AT_SYMLINK_NOFOLLOW)
    (here / "dir").mkdir()
    os.mkfifo(here / "fifo")
    os.symlink("f", here / "sym")
    for name in ("dir", "fifo"):
        touch("-m", "-d", TOUCH_STAMP, here / name)
        assert os.stat(here / name).st_mtime_ns == TOUCH_NS, name
    f_times = os.stat(f).st_mtime_ns
    touch("-h", "-m", "-d", TOUCH_STAMP, here / "sym")
    assert os.lstat(here / "sym").st_mtime_ns == TOUCH_NS and os.stat(f).st_mtime_ns == f_times

    final = os.stat(f)
    fs.times[str(f.relative_to(fs.mnt))] = (final.st_atime_ns, final.st_mtime_ns)
    fs.remember(here)


def test_ctime_follows_every_metadata_change(fs, here):
    f, other = here / "f", here / "other"
    f.write_bytes(b"x")
    other.write_bytes(b"y")
    renamed = here / "renamed"

    def changes(what, call, mtime_too=False, path=lambda: f):
        before = os.lstat(path())
        time.sleep(0.002)
        call()
        after = os.lstat(path())
        assert after.st_ctime_ns > before.st_ctime_ns, f"{what} left ctime as it was"
        if mtime_too:
            assert after.st_mtime_ns != before.st_mtime_ns, f"{what} left mtime as it was"
        else:
            assert after.st_mtime_ns == before.st_mtime_ns, f"{what} changed mtime"

    changes("chmod", lambda: os.chmod(f, 0o600))
    changes("chmod to the same mode", lambda: os.chmod(f, 0o600))
    changes("chown", lambda: os.chown(f, OTHER_UID, OTHER_GID))
    changes("link", lambda: os.link(f, here / "f2"))
    changes("unlink of another name", lambda: os.unlink(here / "f2"))
    changes("rename", lambda: os.rename(f, renamed), path=lambda: renamed if renamed.exists() else f)
    f = renamed
    changes("setxattr", lambda: os.setxattr(f, "user.tag", b"1"))
    changes("removexattr", lambda: os.removexattr(f, "user.tag"))
    changes("utimens", lambda: os.utime(f, ns=(1, 2)), mtime_too=True)
    changes("truncate", lambda: os.truncate(f, 5), mtime_too=True)
    changes("write", lambda: f.write_bytes(b"changed"), mtime_too=True)

    # reading and looking change nothing; a folder's times follow its entries
    quiet = os.stat(f)
    f.read_bytes()
    os.listdir(here)
    os.getxattr(f, "user.sdfs.kind")
    assert os.stat(f).st_ctime_ns == quiet.st_ctime_ns and os.stat(f).st_mtime_ns == quiet.st_mtime_ns
    changes("a new entry", lambda: (here / "new").write_bytes(b""), mtime_too=True, path=lambda: here)
    changes("a removed entry", lambda: os.unlink(here / "new"), mtime_too=True, path=lambda: here)
    changes("a moved entry", lambda: os.rename(other, here / "other2"), mtime_too=True, path=lambda: here)
    st = os.stat(f)
    assert st.st_uid == OTHER_UID and st.st_gid == OTHER_GID and stat.S_IMODE(st.st_mode) == 0o600
    fs.remember(here)


# -- sizes


def test_huge_sparse_truncate(fs, here):
    big = here / "big"
    big.write_bytes(b"head")
    rss_before = rss_bytes(fs.daemon.pid)
    with log_since(fs) as log:
        done = subprocess.run(["truncate", "-s", str(HUGE), str(big)], capture_output=True, text=True)
        if done.returncode != 0:  # the other answer a filesystem may give
            assert "File too large" in done.stderr, done.stderr
        else:
            st = os.stat(big)
            assert st.st_size == HUGE and st.st_blocks * 512 < 1 << 20, (st.st_size, st.st_blocks)
            with open(big, "r+b") as f:
                assert f.read(8) == b"head\0\0\0\0"
                f.seek(HUGE - 4)
                assert f.read() == b"\0" * 4
                f.seek(HUGE - 3)
                f.write(b"end")
            with open(big, "rb") as f:
                f.seek(HUGE - 5)
                assert f.read() == b"\0\0end"
                f.seek(1 << 40)
                assert f.read(1 << 16) == bytes(1 << 16)  # a hole, a tebibyte in
            st = os.stat(big)
            assert st.st_size == HUGE and st.st_blocks * 512 < 1 << 20
        # past the largest file a store holds: EFBIG, and nothing changes
        too_big = subprocess.run(["truncate", "-s", "8P", str(big)], capture_output=True, text=True)
        assert too_big.returncode != 0 and "File too large" in too_big.stderr, too_big.stderr
        size = os.stat(big).st_size
        assert size in (HUGE, 4)
        # the encoder judges the file (not an image) without reading a petabyte
        wait_for(lambda: os.getxattr(big, "user.sdfs.kind") != b"pending", 60, "the encoder to judge the file")
        assert os.getxattr(big, "user.sdfs.kind") == b"verbatim"
        grown = rss_bytes(fs.daemon.pid) - rss_before
        assert grown < 200 << 20, f"the daemon grew by {grown >> 20} MiB"
    assert "Traceback" not in log.text and "ERROR" not in log.text, log.text
    fs.huge = big  # kept: a remount and fsck meet it too

    holey = here / "holey"  # a small file with a hole, kept for the remount
    with open(holey, "wb") as f:
        f.write(b"start")
        f.seek(5 << 20)
        f.write(b"end")
    assert os.stat(holey).st_size == (5 << 20) + 3 and os.stat(holey).st_blocks * 512 < 1 << 20
    data = holey.read_bytes()
    assert data[:5] == b"start" and data[-3:] == b"end" and data[5:-3] == bytes((5 << 20) - 5)
    fs.remember(here)


# -- permissions


@functools.lru_cache(maxsize=None)
def python_for_other_user() -> str:
    """A Python the other user may run (a root-only pyenv, say, is out of reach)."""
    for candidate in (sys.executable, shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")):
        if candidate:
            try:
                subprocess.run([candidate, "-I", "-c", "pass"], check=True, capture_output=True, timeout=60,
                               user=OTHER_UID, group=OTHER_GID, extra_groups=[])
                return candidate
            except (OSError, subprocess.SubprocessError):
                continue
    pytest.skip(f"no Python that uid {OTHER_UID} can run")


def as_other_user(script: str, folder: Path) -> dict:
    """Run ``script`` as OTHER_UID with no groups; it finds ``folder`` as ``d``
    and fills a dict ``out``. The folder goes as an open descriptor: pytest's
    temporary folders above it are root's alone (0700), and the test is about
    the mount's permissions, not theirs."""
    prelude = ("import errno, json, os, sys\n"
               "d = '/proc/self/fd/' + sys.argv[1]\n"
               "def err(call, *a):\n"
               "    try:\n"
               "        call(*a)\n"
               "    except OSError as e:\n"
               "        return errno.errorcode[e.errno]\n"
               "    return 'ok'\n"
               "out = {}\n")
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        program = prelude + script + "\nprint(json.dumps(out))"
        done = subprocess.run([python_for_other_user(), "-I", "-c", program, str(fd)], capture_output=True, text=True,
                              timeout=60, user=OTHER_UID, group=OTHER_GID, extra_groups=[], pass_fds=[fd])
    finally:
        os.close(fd)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_kernel_checks_permissions_for_other_users(fs, here):
    options = next(line.split()[3] for line in open("/proc/mounts") if line.split()[1] == str(fs.mnt))
    assert "default_permissions" in options and "allow_other" in options, options
    os.chmod(here, 0o755)
    (here / "public").write_bytes(b"for everyone")
    os.chmod(here / "public", 0o644)
    (here / "private").write_bytes(b"root only")
    os.chmod(here / "private", 0o600)
    (here / "open").mkdir(mode=0o777)
    (here / "sticky").mkdir(mode=0o1777)
    (here / "sticky" / "roots").write_bytes(b"")
    os.chmod(here / "sticky" / "roots", 0o666)

    got = as_other_user(
        "out['read public'] = open(d + '/public', 'rb').read().decode()\n"
        "out['write public'] = err(os.open, d + '/public', os.O_WRONLY)\n"
        "out['read private'] = err(os.open, d + '/private', os.O_RDONLY)\n"
        "out['stat private'] = err(os.stat, d + '/private')\n"
        "out['create in root folder'] = err(os.open, d + '/mine', os.O_CREAT | os.O_WRONLY, 0o644)\n"
        "out['mkfifo in root folder'] = err(os.mkfifo, d + '/fifo')\n"
        "out['unlink root file'] = err(os.unlink, d + '/public')\n"
        "out['chmod root file'] = err(os.chmod, d + '/public', 0o666)\n"
        "out['chown root file'] = err(os.chown, d + '/public', os.getuid(), -1)\n"
        "out['set times'] = err(os.utime, d + '/public', (1, 2))\n"
        "out['touch'] = err(os.utime, d + '/public', None)\n"
        "out['setxattr'] = err(os.setxattr, d + '/public', 'user.x', b'1')\n"
        "out['link into root folder'] = err(os.link, d + '/public', d + '/link')\n"
        "out['unlink in sticky folder'] = err(os.unlink, d + '/sticky/roots')\n"
        "out['write in sticky folder'] = err(lambda: os.write(os.open(d + '/sticky/roots', os.O_WRONLY), b'ok'))\n"
        "out['create in open folder'] = err(lambda: open(d + '/open/mine', 'wb').write(b'mine'))\n"
        "out['mkfifo in open folder'] = err(os.mkfifo, d + '/open/fifo', 0o600)\n"
        "out['chmod own file'] = err(os.chmod, d + '/open/mine', 0o600)\n"
        "out['mknod device'] = err(os.mknod, d + '/open/null', 0o20600, os.makedev(1, 3))\n",
        here)
    # with fs.protected_hardlinks=1 the kernel refuses a link to another's file before it checks the folder
    assert got.pop("link into root folder") in ("EACCES", "EPERM")
    assert got == {
        "read public": "for everyone",
        "write public": "EACCES",
        "read private": "EACCES",
        "stat private": "ok",  # the folder is searchable: stat needs no read permission
        "create in root folder": "EACCES",
        "mkfifo in root folder": "EACCES",
        "unlink root file": "EACCES",
        "chmod root file": "EPERM",
        "chown root file": "EPERM",
        "set times": "EPERM",
        "touch": "EACCES",
        "setxattr": "EACCES",
        "unlink in sticky folder": "EPERM",
        "write in sticky folder": "ok",
        "create in open folder": "ok",
        "mkfifo in open folder": "ok",
        "chmod own file": "ok",
        "mknod device": "EPERM",  # device nodes are root's to make (CAP_MKNOD)
    }
    for name in ("mine", "fifo"):  # made by the other user: theirs
        st = os.stat(here / "open" / name)
        assert (st.st_uid, st.st_gid) == (OTHER_UID, OTHER_GID), name
    assert stat.S_IMODE(os.stat(here / "open" / "mine").st_mode) == 0o600
    assert (here / "open" / "mine").read_bytes() == b"mine" and (here / "sticky" / "roots").read_bytes() == b"ok"
    assert (here / "public").read_bytes() == b"for everyone"
    fs.remember(here)


# -- a remount, sdfs import, fsck


def _import_while_unmounted(fs: Mount) -> None:
    """`sdfs import` of a tree with links and special files into the module's
    store (it needs the store unmounted: done during the remount)."""
    src = special_tree(fs.base / "import-src" / "tree")
    done = subprocess.run([sys.executable, "-m", "sdfs", "-v", "import", str(src), str(fs.store), "--into", "/imported",
                           "--model", str(fs.model), "--device", "cpu", "--quality", "high",
                           "--fidelity-floor", "0:-1"], capture_output=True, text=True, timeout=240,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    fs.imported = (src, done)


def test_remount_keeps_everything(fs, here):
    # a compact set of its own, so that the test means something alone too
    os.mkfifo(here / "fifo", 0o604)
    os.mknod(here / "null", stat.S_IFCHR | 0o620, os.makedev(1, 3))
    os.mknod(here / "disk", stat.S_IFBLK | 0o640, os.makedev(8, 17))
    listener = socket.socket(socket.AF_UNIX)
    bind_unix(listener, here / "sock")
    listener.close()
    (here / "f").write_bytes(b"linked")
    os.link(here / "f", here / "g")
    os.utime(here / "f", ns=(123_456_789_012_345_678, TOUCH_NS))
    os.setxattr(here / "f", "user.tag", b"kept")
    fs.times[str((here / "f").relative_to(fs.mnt))] = (123_456_789_012_345_678, TOUCH_NS)
    fs.remember(here)

    before = {folder: snapshot(fs.mnt / folder) for folder in fs.remembered}
    assert before == fs.remembered  # nothing changed since each test ended
    fs.down()
    assert not os.path.ismount(fs.mnt)
    _import_while_unmounted(fs)
    fs.up()

    after = {folder: snapshot(fs.mnt / folder) for folder in fs.remembered}
    for folder in fs.remembered:
        lost = {k: (v, after[folder].get(k)) for k, v in fs.remembered[folder].items() if after[folder].get(k) != v}
        assert not lost and after[folder] == fs.remembered[folder], f"{folder} changed across the remount: {lost}"
    for path, times in fs.times.items():
        st = os.stat(fs.mnt / path)
        assert (st.st_atime_ns, st.st_mtime_ns) == times, path
    assert os.getxattr(here / "f", "user.tag") == b"kept"
    if fs.huge is not None and os.stat(fs.huge).st_size == HUGE:
        with open(fs.huge, "rb") as f:
            f.seek(HUGE - 5)
            assert f.read() == b"\0\0end"
    # the special files still work as what they are
    payload = os.urandom(100_000)
    assert fifo_transfer(here / "fifo", payload) == payload
    assert connect_unix(here / "sock") == [str(errno.ECONNREFUSED)]
    listener = socket.socket(socket.AF_UNIX)
    os.unlink(here / "sock")  # a new listener at the same name
    bind_unix(listener, here / "sock")
    listener.close()


def test_import_keeps_links_and_special_files(fs):
    if fs.imported is None:  # run alone: import during a remount of its own
        fs.down()
        _import_while_unmounted(fs)
    fs.up()
    src, done = fs.imported
    assert done.returncode == 0, done.stdout + done.stderr
    copy = fs.mnt / "imported" / src.name
    assert tree(copy) == tree(src)
    assert link_groups(copy) == link_groups(src)
    assert nlinks(copy) == nlinks(src)
    disk = os.stat(copy / "disk")
    assert (os.major(disk.st_rdev), os.minor(disk.st_rdev)) == (259, 65541)
    assert stat.S_IMODE(os.stat(copy / "d").st_mode) == 0o750


def test_fsck_finds_nothing_after_all_this(fs):
    if not fs.remembered:  # run alone: leave something worth checking
        fs.up()
        folder = fs.mnt / "fsck-alone"
        special_tree(folder)
        fs.remember(folder)
    fs.down()

    def limited():  # a check that walks a petabyte-sized sparse file chunk by chunk must fail, not take the machine
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    done = subprocess.run([sys.executable, "-m", "sdfs", "fsck", str(fs.store)], capture_output=True, text=True,
                          timeout=120, preexec_fn=limited)
    huge = f"; the store holds a {HUGE:,}-byte sparse file" if fs.huge is not None else ""
    assert done.returncode == 0, f"fsck exited {done.returncode} (3 GiB of address space{huge}):\n" + \
        done.stdout + done.stderr
