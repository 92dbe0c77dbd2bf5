"""`sdfs encode` / `sdfs decode` as a user runs them, in separate processes."""

import io
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from sdfs.codec import container
from sdfs.codec.random_models import save_random_vae
from tests.images_factory import CANDIDATES


def sdfs(*args, check_rc=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "sdfs", *map(str, args)], capture_output=True, text=True, timeout=300, env=env
    )
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stderr
    return proc


def _model(tiny_vae_dir):
    return ("--model", tiny_vae_dir, "--device", "cpu")


@pytest.mark.parametrize("name", list(CANDIDATES))
def test_round_trip_through_the_command_in_two_processes(tiny_vae_dir, tmp_path, name):
    source = tmp_path / name
    source.write_bytes(CANDIDATES[name]())
    record = tmp_path / "image.sdfs"
    encoded = sdfs("encode", source, record, *_model(tiny_vae_dir), "--quality", "high", "--fidelity-floor", "0:-1", check_rc=0)
    # the verdict and its figures (with the tiny test model, small images can
    # lose on size, so either verdict is right here; test_codec checks both)
    assert re.search(r": keep (latent|original): .*PSNR [\d.]+ dB, SSIM -?[\d.]+", encoded.stdout)
    outputs = []
    for attempt in ("a", "b"):  # two independent processes must agree to the byte count
        target = tmp_path / f"out-{attempt}{source.suffix}"
        sdfs("decode", record, target, *_model(tiny_vae_dir), check_rc=0)
        outputs.append(target.read_bytes())
    expected = container.unpack(record.read_bytes()).output_length
    assert len(outputs[0]) == len(outputs[1]) == expected
    assert outputs[0] == outputs[1]
    original, restored = Image.open(source), Image.open(io.BytesIO(outputs[0]))
    assert (restored.format, restored.size) == (original.format, original.size)
    assert restored.mode == {"P": "RGB"}.get(original.mode, original.mode)
    assert restored.info.get("exif") == original.info.get("exif")
    assert restored.info.get("icc_profile") == original.info.get("icc_profile")
    if "A" in original.mode:
        assert np.array_equal(np.asarray(restored.getchannel("A")), np.asarray(original.getchannel("A")))


NON_CANDIDATES = {
    "empty.png": b"",
    "random.jpg": np.random.default_rng(0).bytes(4096),
    "truncated.png": CANDIDATES["rgb.png"]()[:500],
    "notes.txt": b"just text\n",
}


@pytest.mark.parametrize("name", list(NON_CANDIDATES))
def test_non_candidates_exit_3_with_one_line(tmp_path, name):
    source = tmp_path / name
    source.write_bytes(NON_CANDIDATES[name])
    proc = sdfs("encode", source, tmp_path / "r", "--model", tmp_path / "no-model-needed")
    assert proc.returncode == 3
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not a latent candidate" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()


def test_offline_default_model_is_one_clear_line(tmp_path):
    source = tmp_path / "a.png"
    source.write_bytes(CANDIDATES["rgb.png"]())
    env_home = tmp_path / "hf"
    proc = subprocess.run(
        [sys.executable, "-m", "sdfs", "encode", str(source), str(tmp_path / "r")],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "HF_HOME": str(env_home), "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 4
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "hf download stabilityai/sd-vae-ft-mse" in lines[0]


def test_corrupt_record_and_other_model(tiny_vae_dir, tmp_path):
    source = tmp_path / "a.png"
    source.write_bytes(CANDIDATES["gray.png"]())
    record = tmp_path / "a.sdfs"
    sdfs("encode", source, record, *_model(tiny_vae_dir), check_rc=0)
    other = save_random_vae(tmp_path / "other", seed=5)
    mismatch = sdfs("decode", record, tmp_path / "x.png", "--model", other, "--device", "cpu")
    assert mismatch.returncode == 5 and "record was encoded with VAE" in mismatch.stderr
    damaged = bytearray(record.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    record.write_bytes(bytes(damaged))
    corrupt = sdfs("decode", record, tmp_path / "x.png", *_model(tiny_vae_dir))
    assert corrupt.returncode == 6 and "checksum" in corrupt.stderr and "Traceback" not in corrupt.stderr
    assert not (tmp_path / "x.png").exists()
