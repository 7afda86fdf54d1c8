"""Image files met in real folders, read the same way by `amnp train`, `embed` and `verify`:
16-bit PNGs, an image over Pillow's decompression-bomb limit, a file name that is not UTF-8."""
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
from PIL import Image

from amnp import cli
from amnp.data import load_image_folder, read_image

from .checkout import checkout_env
from .test_data import face_folder, write_image
from .test_inference_cli import trained  # noqa: F401 - a fixture: a run on 3x16x16 images


def png(width, height, bit_depth, colour_type, rows: bytes) -> bytes:
    """A PNG file written byte by byte, for what Pillow does not write (16-bit colour, a huge
    blank image): ``rows`` are the unfiltered scanlines, each after its filter byte 0."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def write_rgb16_png(path, values):
    """values: uint16 (H, W, 3)."""
    height, width, _ = values.shape
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in values)
    path.write_bytes(png(width, height, 16, 2, rows))


def write_bomb(path):
    """A blank 1-bit PNG of 20000x9000 = 180 million pixels, over twice Pillow's limit
    (PIL.Image.MAX_IMAGE_PIXELS): Pillow refuses to open it.  The file is small."""
    width, height = 20000, 9000
    assert width * height > 2 * Image.MAX_IMAGE_PIXELS
    path.write_bytes(png(width, height, 1, 0, bytes(height * (1 + width // 8))))


def wide(seed, shape=(16, 16)):
    """16-bit grey values, and the 8 bits they stand for (their high byte)."""
    values = np.random.default_rng(seed).integers(0, 65536, shape).astype(np.uint16)
    return values, (values >> 8).astype(np.uint8)


def test_16_bit_pngs_are_scaled_to_8_bits(tmp_path):
    grey, grey8 = wide(0, (5, 7))
    Image.fromarray(grey).save(tmp_path / "grey.png")  # Pillow writes a 16-bit grey PNG
    with Image.open(tmp_path / "grey.png") as image:
        assert image.mode.startswith("I")
    np.testing.assert_array_equal(read_image(tmp_path / "grey.png"), np.stack([grey8] * 3))
    np.testing.assert_array_equal(read_image(tmp_path / "grey.png", grayscale=True), grey8[None])

    colour = np.stack([grey, grey[::-1], 65535 - grey], axis=-1)
    write_rgb16_png(tmp_path / "colour.png", colour)
    np.testing.assert_array_equal(read_image(tmp_path / "colour.png"),
                                  (colour >> 8).astype(np.uint8).transpose(2, 0, 1))
    # older Pillows open a 16-bit grey PNG as "I" (32-bit integers); a TIFF opens so here
    Image.fromarray(grey.astype(np.int32)).save(tmp_path / "grey32.tif")
    with Image.open(tmp_path / "grey32.tif") as image:
        assert image.mode == "I"
    np.testing.assert_array_equal(read_image(tmp_path / "grey32.tif", grayscale=True), grey8[None])


def cached_images(cache):
    (directory,) = (cache / "folders").iterdir()
    return np.fromfile(directory / "images.u8", np.uint8)


def test_16_bit_pngs_under_the_cli(trained, tmp_path, capsys, monkeypatch):  # noqa: F811
    """train decodes them to their 8 bits; embed and verify find them the same images as
    8-bit copies."""
    monkeypatch.setenv("AMNP_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "faces"
    expected = []
    for i in range(8):
        (root / f"p{i}").mkdir(parents=True)
        for k in range(4):
            values, eight_bits = wide(10 * i + k)
            Image.fromarray(values).save(root / f"p{i}" / f"{k}.png")
            expected.append(np.stack([eight_bits] * 3))
    assert cli.main(["train", "--dataset", f"folder:{root}", "--iters", "1", "--batch-size", "4",
                     "--out", str(tmp_path / "run"), "--no-eval"]) == 0
    np.testing.assert_array_equal(cached_images(tmp_path / "cache"), np.stack(expected).ravel())

    twins = tmp_path / "twins"
    (twins / "a").mkdir(parents=True)
    values, eight_bits = wide(99)
    Image.fromarray(values).save(twins / "a" / "16-bit.png")
    Image.fromarray(eight_bits).save(twins / "a" / "8-bit.png")
    out = tmp_path / "features.npz"
    assert cli.main(["embed", str(trained["run"]), "--images", str(twins), "--out", str(out)]) == 0
    with np.load(out) as saved:
        np.testing.assert_allclose(saved["features"][0], saved["features"][1], atol=1e-6)
    capsys.readouterr()
    assert cli.main(["verify", str(trained["run"]), str(twins / "a" / "16-bit.png"),
                     str(twins / "a" / "8-bit.png")]) == 0
    assert capsys.readouterr().out.startswith("cosine 1.0000,")


def test_an_image_over_the_decompression_bomb_limit(trained, tmp_path, capsys, monkeypatch):  # noqa: F811
    """In a folder (train, embed) it is an unreadable file, skipped with the warning that
    names it; given by name (verify) it is one error line."""
    monkeypatch.setenv("AMNP_CACHE_DIR", str(tmp_path / "cache"))
    root = face_folder(tmp_path / "faces")
    bomb = root / "p0" / "bomb.png"
    write_bomb(bomb)
    skipped = f"amnp: warning: skipped 1 unreadable image file(s) under {root}, e.g. {bomb}"

    assert cli.main(["train", "--dataset", f"folder:{root}", "--iters", "1", "--batch-size", "4",
                     "--out", str(tmp_path / "run"), "--no-eval"]) == 0
    assert skipped in capsys.readouterr().err.splitlines()
    assert cli.main(["embed", str(trained["run"]), "--images", str(root),
                     "--out", str(tmp_path / "features.npz")]) == 0
    assert capsys.readouterr().err.splitlines() == [skipped]
    with np.load(tmp_path / "features.npz") as saved:
        assert len(saved["paths"]) == 32 and str(bomb) not in saved["paths"]

    assert cli.main(["verify", str(trained["run"]), str(root / "p0" / "0.png"), str(bomb)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.splitlines() == [
        f"amnp: error: cannot read image {bomb} (Image size (180000000 pixels) exceeds limit of "
        f"{2 * Image.MAX_IMAGE_PIXELS} pixels, could be decompression bomb DOS attack.)"]


def test_a_file_name_that_is_not_utf8_is_read_by_every_command(trained, tmp_path, capsys,  # noqa: F811
                                                              monkeypatch):
    """Its name comes back as the bytes it has on disk (os.fsencode), in the paths embed writes."""
    root = face_folder(tmp_path / "faces")
    odd = os.fsencode(root / "p1") + b"/\xff.png"
    write_image(odd, size=(16, 16), seed=99)
    cache = tmp_path / "cache"
    # a real process: its own stdout and stderr encodings, as a user's shell gives them
    done = subprocess.run(
        [sys.executable, "-m", "amnp", "train", "--dataset", f"folder:{root}", "--iters", "1",
         "--batch-size", "4", "--out", str(tmp_path / "run"), "--no-eval"],
        capture_output=True, text=True, timeout=300, env=checkout_env(AMNP_CACHE_DIR=str(cache)))
    assert done.returncode == 0 and "amnp: error" not in done.stderr, done.stderr
    assert "unreadable" not in done.stderr
    assert cached_images(cache).size == 33 * 3 * 16 * 16

    out = tmp_path / "features.npz"
    assert cli.main(["embed", str(trained["run"]), "--images", str(root), "--out", str(out)]) == 0
    assert "unreadable" not in capsys.readouterr().err
    with np.load(out) as saved:
        paths, labels, identities = saved["paths"], saved["labels"], saved["identities"]
    assert len(paths) == 33 and odd in [os.fsencode(path) for path in paths]
    assert identities[labels[[os.fsencode(path) for path in paths].index(odd)]] == "p1"

    assert cli.main(["verify", str(trained["run"]), os.fsdecode(odd), str(root / "p1" / "0.png")]) == 0
    assert capsys.readouterr().out.startswith("cosine ")


def test_a_folder_whose_own_name_is_not_utf8_is_cached(tmp_path):
    root = face_folder(tmp_path / os.fsdecode(b"faces-\xfe"), identities=2, per_identity=2)
    cached = load_image_folder(root, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(np.asarray(cached.images), load_image_folder(root).images)
