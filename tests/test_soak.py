"""The soak harness (bench/soak.py), short: writers, readers and ls loops on a
real mount, a checker that knows every file, then kill -9 and a remount."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse"), pytest.mark.timeout(600)]


def test_short_soak_finds_nothing_and_loses_nothing(tmp_path, tiny_vae_dir):
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--seconds", "45", "--writers", "3", "--readers", "3",
         "--model", str(tiny_vae_dir), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=500,
    )
    report = json.loads((tmp_path / "soak.json").read_text())
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    ops = report["operations"]
    # every kind of operation ran, and readers judged files many times over
    assert all(ops.get(kind, 0) > 0 for kind in ("create", "overwrite", "rewrite burst", "append", "pwrite", "rename", "unlink", "fsync"))
    assert ops["read"] > 100 and ops["ls"] > 10
    assert report["mismatch_count"] == 0 and report["errors_by_errno"] == {}
    assert report["final_check"]["files"] > 0 and report["final_check"]["lost"] == 0
    assert report["after_kill_9"]["files"] == report["final_check"]["files"] and report["after_kill_9"]["lost"] == 0
    assert report["after_kill_9"]["mismatches"] == [] and report["daemon_tracebacks"] == 0
    assert report["daemon_error_lines"] == []
    assert (tmp_path / "soak.png").stat().st_size > 0
