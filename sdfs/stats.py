"""`sdfs stats STORE|MOUNTPOINT`: what a store holds and how well.

Reads the store through a read-only LMDB snapshot, so it runs beside a live
mount; the live mount's own figures (cache hit ratio, queue) come from the
root's user.sdfs.daemon xattr. A human table by default, --json for scripts.
Besides the files and their bytes: special files by type, hard-linked files
(their bytes counted once), and data.mdb's size against the part in use
(LMDB keeps freed pages for reuse; `sdfs compact` gives them back).
"""

from __future__ import annotations

import json
import math
import stat
import struct
import sys
from collections import Counter
from pathlib import Path

from .codec import container
from .errors import RecordError
from .fs.control import daemon_state, describe_encoding, mount_of, store_of
from .ingest import (BELOW_FLOOR, KEEP_LATENT, KEEP_ORIGINAL, KEPT_WHY_TEXT, NOT_SMALLER, ORIGINAL_BYTES,
                     STORED_VERBATIM, VERDICT, kept_original_why)
from .progress import human_bytes
from .store import DIR, KIND_NAMES, LATENT, SPECIAL, SYMLINK, Inode, Store
from .store.store import _key

PERCENTILES = (0, 5, 25, 50, 75, 95, 100)
SPECIAL_TYPES = {stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket", stat.S_IFCHR: "char", stat.S_IFBLK: "block"}
LMDB_META_PAGES = 2  # LMDB's two meta pages, in every data.mdb


def lmdb_space(store: Store) -> dict:
    """data.mdb's size against the bytes its live pages take. LMDB never
    shrinks its file: pages freed by deletes go to a free list and are reused
    by later writes, so the file can be far larger than what it holds. Pages
    in use: the meta pages and every page of the main and named databases
    (py-lmdb does not expose the free list's own few pages: left out)."""
    with store.reading() as txn:
        stats = [store.env.stat()] + [txn.stat(db) for db in store.db.values() if db is not None]
    psize = stats[0]["psize"]
    pages = LMDB_META_PAGES + sum(s["branch_pages"] + s["leaf_pages"] + s["overflow_pages"] for s in stats)
    size = (store.path / "data.mdb").stat().st_size
    used = min(pages * psize, size)
    return {"file": size, "used": used, "free": size - used, "page_size": psize}


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    position = (len(sorted_values) - 1) * q / 100
    lo, hi = math.floor(position), math.ceil(position)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (position - lo)


def distribution(values: list[float]) -> dict | None:
    if not values:
        return None
    ordered = sorted(values)
    out = {f"p{q}": _percentile(ordered, q) for q in PERCENTILES}
    out["mean"] = sum(ordered) / len(ordered)
    out["count"] = len(ordered)
    return out


def collect(store: Store) -> dict:
    files = Counter()
    verdicts = Counter()
    bytes_in = {"latent": 0, "verbatim": 0, "pending": 0}
    bytes_stored = {"latent": 0, "verbatim": 0, "pending": 0, "metadata": 0}
    fidelity: dict[str, dict[str, list[float]]] = {}
    special = Counter()
    hard_links = {"files": 0, "extra_names": 0}  # files with several names: counted, and their bytes, once
    unreadable = 0
    with store.reading() as txn:
        xattrs = store.db["xattrs"]
        for key, value in txn.cursor(db=store.db["inodes"]):
            try:
                inode = Inode.unpack(int.from_bytes(key, "big"), value)
                kind = KIND_NAMES[inode.kind]
            except (struct.error, KeyError):
                unreadable += 1  # damage is fsck's to report and repair; stats just counts it
                continue
            if inode.nlink == 0:
                kind = "unlinked, still open"
            files[kind] += 1
            if inode.kind == SPECIAL and inode.nlink:
                special[SPECIAL_TYPES.get(stat.S_IFMT(inode.mode), "other")] += 1
            if inode.kind != DIR and inode.nlink > 1:
                hard_links["files"] += 1
                hard_links["extra_names"] += inode.nlink - 1
            if inode.kind in (DIR, SYMLINK, SPECIAL) or inode.nlink == 0:
                continue
            verdict = (txn.get(_key(inode.ino) + VERDICT, db=xattrs) or b"").decode(errors="replace")
            if verdict:
                prefix = verdict.split(":", 1)[0]
                verdicts[f"{prefix}:{kept_original_why(verdict)}" if prefix == KEEP_ORIGINAL else prefix] += 1
            original = txn.get(_key(inode.ino) + ORIGINAL_BYTES, db=xattrs)
            bytes_in[kind] += int(original) if original else inode.size
            bytes_stored[kind] += inode.stored
            if inode.kind == LATENT:
                try:
                    record = container.unpack(txn.get(key, db=store.db["records"]) or b"")
                except RecordError:
                    unreadable += 1
                    continue
                for m in record.measurements:
                    figures = fidelity.setdefault(m.decoder, {"psnr": [], "ssim": []})
                    figures["psnr"].append(float(m.fidelity.psnr))
                    figures["ssim"].append(float(m.fidelity.ssim))
    total_in, total_stored = sum(bytes_in.values()), sum(v for k, v in bytes_stored.items() if k != "metadata")
    return {
        "store": str(store.path.resolve()),
        "format_version": store.format_version(),
        "model": store.model(),
        "files": dict(files),
        "special": {name: n for name in (*SPECIAL_TYPES.values(), "other") if (n := special[name]) or name != "other"},
        "hard_links": hard_links,
        "verdicts": {
            "latent": verdicts[KEEP_LATENT],
            "kept_original_below_floor": verdicts[f"{KEEP_ORIGINAL}:{BELOW_FLOOR}"],
            "kept_original_not_smaller": verdicts[f"{KEEP_ORIGINAL}:{NOT_SMALLER}"],
            "verbatim_not_a_candidate": verdicts[STORED_VERBATIM],
        },
        "bytes": {
            "written": total_in,
            "stored": total_stored,
            "savings_ratio": round(total_in / total_stored, 3) if total_stored else None,
            "written_by_kind": bytes_in,
            "stored_by_kind": {k: v for k, v in bytes_stored.items() if k != "metadata"},
        },
        "space": lmdb_space(store),
        "fidelity": {decoder: {name: distribution(values) for name, values in figures.items()}
                     for decoder, figures in sorted(fidelity.items())},
        "unreadable": unreadable,
        "_values": fidelity,
    }


def _live(mountpoint: Path | None) -> dict | None:
    if mountpoint is None:
        return None
    state = daemon_state(mountpoint)
    cache = state["cache"]
    lookups = cache["hits"] + cache["misses"]
    state["mountpoint"] = str(mountpoint)
    cache["hit_ratio"] = round(cache["hits"] / lookups, 4) if lookups else None
    return state


def run_stats(args) -> int:
    target = Path(args.target)
    store_path = store_of(target)
    mountpoint = target if store_path is not None else mount_of(target)
    store = Store(store_path or target, readonly=True)
    try:
        report = collect(store)
    finally:
        store.close()
    report["mount"] = _live(mountpoint)
    values = report.pop("_values")
    if args.plot:
        plot(values, report, args.plot)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(render(report))
    return 0


SPECIAL_NAMES = {"fifo": "FIFO", "socket": "socket", "char": "character device", "block": "block device"}
COMPACT_HINT_BYTES = 1 << 20  # below this, free pages are LMDB's ordinary working room: no advice


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _worth_compacting(space: dict) -> bool:
    return space["free"] >= COMPACT_HINT_BYTES and space["free"] >= space["file"] // 5


def render(report: dict) -> str:
    model = report["model"] or {}
    files, verdicts, b = report["files"], report["verdicts"], report["bytes"]
    lines = [
        f"store      {report['store']} (format {report['format_version']})",
        f"model      {model.get('name', 'none yet')}  weights {model.get('weights_sha256', '')[:16]}",
        "",
        f"{'files':<28}{'count':>9}{'written':>14}{'stored':>14}",
    ]
    for kind in ("latent", "verbatim", "pending"):
        lines.append(f"  {kind:<26}{files.get(kind, 0):>9,}{human_bytes(b['written_by_kind'][kind]):>14}{human_bytes(b['stored_by_kind'][kind]):>14}")
    ratio = f"{b['savings_ratio']:.2f}x smaller" if b["savings_ratio"] else "-"
    lines += [
        f"  {'total':<26}{sum(files.get(k, 0) for k in ('latent', 'verbatim', 'pending')):>9,}{human_bytes(b['written']):>14}{human_bytes(b['stored']):>14}  ({ratio})",
        f"  {'directories, symlinks':<26}{files.get('directory', 0) + files.get('symlink', 0):>9,}",
    ]
    special = report["special"]
    if any(special.values()):
        kinds = ", ".join(_plural(n, SPECIAL_NAMES.get(name, name)) for name, n in special.items() if n)
        lines.append(f"  {'special files':<26}{sum(special.values()):>9,}  ({kinds})")
    links = report["hard_links"]
    if links["files"]:
        lines.append(f"  {'hard-linked files':<26}{links['files']:>9,}  ({_plural(links['extra_names'], 'extra name')}; "
                     f"their bytes are counted once)")
    space = report["space"]
    lines += [
        "",
        f"space      data.mdb {human_bytes(space['file'])}, {human_bytes(space['used'])} in use, "
        f"{human_bytes(space['free'])} free for reuse" + (" (`sdfs compact` reclaims it)" if _worth_compacting(space) else ""),
        "",
        f"verdicts   {verdicts['latent']:,} latent; "
        f"{verdicts['kept_original_below_floor']:,} kept original ({KEPT_WHY_TEXT[BELOW_FLOOR]}); "
        f"{verdicts['kept_original_not_smaller']:,} kept original ({KEPT_WHY_TEXT[NOT_SMALLER]}); "
        f"{verdicts['verbatim_not_a_candidate']:,} verbatim (not images sdfs takes)",
    ]
    if files.get("unlinked, still open"):
        lines.append(f"           {files['unlinked, still open']:,} deleted while open (purged at last close)")
    if report["unreadable"]:
        lines.append(f"           {report['unreadable']:,} inodes or records unreadable: run `sdfs fsck`")
    for decoder, figures in report["fidelity"].items():
        lines += ["", f"fidelity ({decoder} decoder, measured at encode time)", f"  {'':<6}" + "".join(f"{'p' + str(q):>9}" for q in PERCENTILES) + f"{'mean':>9}"]
        for name, unit in (("psnr", "dB"), ("ssim", "")):
            d = figures[name]
            fmt = "{:>9.2f}" if name == "psnr" else "{:>9.4f}"
            lines.append(f"  {name.upper():<6}" + "".join(fmt.format(d[f"p{q}"]) for q in PERCENTILES) + fmt.format(d["mean"]) + f" {unit}")
    live = report["mount"]
    lines.append("")
    if live is None:
        lines.append("mount      not mounted")
    else:
        cache = live["cache"]
        ratio = f"{cache['hit_ratio']:.1%}" if cache["hit_ratio"] is not None else "no reads yet"
        lines += [
            f"mount      {live['mountpoint']} (pid {live['pid']}): {live['pending']:,} pending, {live['open_files']} open files"
            + (f"; encoding {encoding}" if (encoding := describe_encoding(live.get("encoder", {}).get("encoding"))) else ""),
            f"cache      hit ratio {ratio} ({cache['hits']:,} hits, {cache['misses']:,} misses); "
            f"{cache['entries']:,} images, {human_bytes(cache['bytes'])} of {human_bytes(cache['capacity_bytes'])}; {live['decodes']:,} decodes",
        ]
    return "\n".join(lines)


def plot(values: dict, report: dict, path: Path) -> None:
    """Histograms of PSNR and SSIM per decoder: the shape of a collection's fidelity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for decoder, figures in sorted(values.items()):
        axes[0].hist(figures["psnr"], bins=30, alpha=0.6, label=f"{decoder} decoder ({len(figures['psnr'])} images)")
        axes[1].hist(figures["ssim"], bins=30, alpha=0.6, label=f"{decoder} decoder")
    axes[0].set_xlabel("PSNR (dB)")
    axes[1].set_xlabel("SSIM")
    for ax in axes:
        ax.set_ylabel("images")
        if values:
            ax.legend()
    model = (report["model"] or {}).get("name", "?")
    fig.suptitle(f"sdfs store {report['store']} ({model}): fidelity measured at encode time")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"plot written to {path}", file=sys.stderr)
