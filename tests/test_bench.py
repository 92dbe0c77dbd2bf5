import json

from PIL import Image

from sdfs.cli import main
from tests.conftest import kodak_image


def test_codec_bench_writes_json_and_plot(tmp_path, tiny_vae_dir):
    images = tmp_path / "images"
    images.mkdir()
    for index in (1, 2):
        Image.fromarray(kodak_image(index)[:192, :256]).save(images / f"k{index}.png")
    out = tmp_path / "out"
    rc = main(["bench", "codec", "--images", str(images), "--out", str(out), "--full-size-images", "0",
               "--model", str(tiny_vae_dir), "--device", "cpu"])
    assert rc == 0
    report = json.loads((out / "codec_bench.json").read_text())
    assert "RANDOM" in report["weights"]
    sizes = report["tiny_native"]["summary"]
    assert sizes["high"]["mean_bytes"] > sizes["low"]["mean_bytes"] > 0
    assert len(report["rate_distortion"]) == 2 * 4
    row = report["rate_distortion"][0]
    for codec in ("sdfs", "jpeg", "webp", "avif"):
        assert row[codec]["bytes"] > 0 and row[codec]["psnr"] > 0
        # the classic codecs are held to the sdfs record's size
        assert codec == "sdfs" or row[codec]["bytes"] <= row["sdfs"]["bytes"] or row[codec]["setting"] == 1
    assert (out / "codec_bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
