"""The daemon's memory does not grow with file size (issue 8): a 4 GiB file
copied in with dd and read back, and one byte written at 2 GiB + 1, each keep
its peak resident size within 256 MiB of idle, and deleting them brings it
back within 64 MiB. Size is the subject here, so the file is big; the timing
ratios against a plain folder are bench/memory.py's job, not this test's."""

from __future__ import annotations

import os
import shutil

import pytest

from bench.memory import measure

MiB = 1 << 20
pytestmark = [
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse"),
    pytest.mark.timeout(1200),
]


def test_big_and_sparse_files_pass_through_in_bounded_memory(tmp_path, tiny_vae_dir):
    if shutil.disk_usage(tmp_path).free < 12 << 30:
        pytest.skip("needs 12 GiB free for a 4 GiB source and its stored copy")
    report = measure(tmp_path, tiny_vae_dir, 4 << 30, plain_too=False)
    copy, sparse = report["copy_in_out"], report["sparse_byte"]
    assert copy["checksum_equal"] and copy["st_size"] == 4 << 30
    assert sparse["st_size"] == (2 << 30) + 2 and sparse["tail_right"]
    assert copy["peak_over_idle"] < 256 * MiB, report
    assert sparse["peak_over_idle"] < 256 * MiB, report
    assert report["after_delete_over_idle"] < 64 * MiB, report
    assert report["daemon_log_tracebacks"] == 0
