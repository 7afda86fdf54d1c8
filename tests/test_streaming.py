"""Folders decoded once onto disk (amnp.data.on_disk), read back a batch at a time, and the
prefetching trainer that feeds on them: the same batches, bit for bit, as from memory."""
import dataclasses
import errno
import io
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from amnp import cli
from amnp.data import DiskImages, load_image_folder
from amnp.data import folder as folder_module
from amnp.data import on_disk as on_disk_module
from amnp.data.on_disk import DiskImageWriter
from amnp.data.prefetch import Prefetcher
from amnp.config import TrainConfig
from amnp.training import Trainer

from .host_guard import guard, guard_parameters, transfers
from .test_data import face_folder, face_tree, write_image  # noqa: F401 - face_tree is a fixture
from .test_training import tiny_dataset


def write_disk_images(images, directory):
    with DiskImageWriter(directory, fingerprint="test") as writer:
        for image in images:
            writer.append(image)
        return writer.commit()


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, (7, 2, 3, 4), dtype=np.uint8)


def test_disk_images_index_like_the_array(images, tmp_path):
    disk = write_disk_images(images, tmp_path / "cache")
    assert disk.shape == images.shape and disk.dtype == np.uint8 and disk.ndim == 4
    assert len(disk) == 7 and disk.nbytes == images.nbytes
    mask = np.array([True, False, True, True, False, False, True])
    for key in (3, -1, slice(1, 6, 2), slice(None), np.array([5, 0, 5, 2]), mask, np.array([], int)):
        np.testing.assert_array_equal(disk[key], images[key])
        assert type(disk[key]) is np.ndarray
    subset = disk.subset(mask)
    assert isinstance(subset, DiskImages) and subset.shape == (4, 2, 3, 4)
    np.testing.assert_array_equal(subset[np.array([3, 1])], images[mask][[3, 1]])
    np.testing.assert_array_equal(np.asarray(subset.subset(slice(1, None))), images[mask][1:])


@pytest.mark.parametrize("key", [(Ellipsis, slice(None, None, -1)), (slice(None), 0), None, Ellipsis,
                                 True, np.array([[0, 1]])])
def test_disk_images_refuse_keys_that_reach_inside_the_images(images, tmp_path, key):
    disk = write_disk_images(images, tmp_path / "cache")
    with pytest.raises(TypeError, match="indexed by rows only"):
        disk[key]
    with pytest.raises(TypeError, match="indexed by rows only"):
        disk.subset(key)
    with pytest.raises(ValueError, match="always a copy"):
        np.asarray(disk, copy=False)


def test_the_writer_refuses_a_second_shape_and_leaves_nothing_behind(images, tmp_path):
    with pytest.raises(ValueError, match=r"expected uint8 \(2, 3, 4\)"):
        with DiskImageWriter(tmp_path / "cache", "test") as writer:
            writer.append(images[0])
            writer.append(images[0, :, :2])
    assert os.listdir(tmp_path) == [], "an unfinished cache is deleted"


def test_a_folder_decoded_to_disk_equals_the_folder_in_memory(face_tree, tmp_path):  # noqa: F811
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        memory = load_image_folder(face_tree, image_size=(6, 5))
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        disk = load_image_folder(face_tree, image_size=(6, 5), cache_dir=tmp_path / "cache")
    assert isinstance(disk.images, DiskImages)
    np.testing.assert_array_equal(np.asarray(disk.images), memory.images)
    assert (disk.labels.tolist(), disk.class_names, disk.paths, disk.skipped) == \
        (memory.labels.tolist(), memory.class_names, memory.paths, memory.skipped)


def test_the_cache_is_reused_and_decoded_again_when_the_folder_changes(face_tree, tmp_path, monkeypatch):  # noqa: F811
    cache = tmp_path / "cache"
    with pytest.warns(UserWarning):
        first = load_image_folder(face_tree, image_size=(6, 5), cache_dir=cache)
    decoded = []
    real_read = folder_module.read_image
    monkeypatch.setattr(folder_module, "read_image", lambda *a: decoded.append(a[0]) or real_read(*a))
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        again = load_image_folder(face_tree, image_size=(6, 5), cache_dir=cache)
    assert decoded == [] and again.images.path == first.images.path

    with pytest.warns(UserWarning):
        other_size = load_image_folder(face_tree, image_size=(4, 4), cache_dir=cache)
    assert other_size.images.shape == (8, 3, 4, 4) and len(os.listdir(cache)) == 2

    before = np.asarray(first.images)
    write_image(face_tree / "alice" / "a0.png", seed=5)  # sorts first: every row moves
    decoded.clear()
    with pytest.warns(UserWarning):
        changed = load_image_folder(face_tree, image_size=(6, 5), cache_dir=cache)
    assert len(decoded) == 10 and changed.images.shape[0] == 9
    assert changed.paths[0].endswith("a0.png")
    np.testing.assert_array_equal(np.asarray(changed.images)[1:], before)
    # images opened before the folder changed keep reading the rows their labels belong to
    np.testing.assert_array_equal(np.asarray(first.images), before)


def test_a_file_replaced_with_its_modification_time_set_back_is_decoded_again(tmp_path):
    """Two images of the same size swap identities, and both get their old modification
    times back (what `touch -d` does): same paths, sizes and times, other pixels."""
    root = tmp_path / "faces"
    for name in ("ann", "ben", "cat", "dan"):
        (root / name).mkdir(parents=True)
        for k in range(2):
            Image.fromarray(np.random.default_rng([ord(name[0]), k]).integers(0, 256, (6, 5, 3), np.uint8)
                            ).save(root / name / f"{k}.png", compress_level=0)  # one size for all
    first = load_image_folder(root, cache_dir=tmp_path / "cache")
    before = np.asarray(first.images)
    ann, ben = root / "ann" / "0.png", root / "ben" / "0.png"
    def sizes_and_times():
        return [(path.stat().st_size, path.stat().st_mtime_ns) for path in (ann, ben)]

    before_swap = sizes_and_times()
    os.rename(ann, root / "swap.png")
    os.rename(ben, ann)
    os.rename(root / "swap.png", ben)
    for path, (_, mtime) in zip((ann, ben), before_swap):
        os.utime(path, ns=(mtime, mtime))
    assert sizes_and_times() == before_swap

    again = load_image_folder(root, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(np.asarray(again.images), load_image_folder(root).images)
    np.testing.assert_array_equal(np.asarray(again.images)[[0, 2]], before[[2, 0]])


def damage_bytes(path, offset, count):
    """Overwrite ``count`` bytes from ``offset`` with others; the size stays."""
    with open(path, "r+b") as file:
        file.seek(offset)
        old = np.frombuffer(file.read(count), np.uint8)
        file.seek(offset)
        file.write((old ^ 0x5A).tobytes())


def test_damaged_image_bytes_are_never_returned(face_tree, tmp_path):  # noqa: F811
    with pytest.warns(UserWarning):
        first = load_image_folder(face_tree, image_size=(6, 5), cache_dir=tmp_path / "cache")
    expected = np.asarray(first.images)
    directory = os.path.dirname(first.images.path)
    damage_bytes(first.images.path, 3 * expected[0].size + 7, 1)  # one byte of image 3

    with pytest.warns(UserWarning):  # the same cache: a fingerprint cannot see damage
        again = load_image_folder(face_tree, image_size=(6, 5), cache_dir=tmp_path / "cache")
    for images in (first.images, again.images):
        np.testing.assert_array_equal(images[[0, 1, 2, 4, 5, 6, 7]], expected[[0, 1, 2, 4, 5, 6, 7]])
        for key in (3, slice(None), np.array([5, 3]), slice(2, 4)):
            with pytest.raises(ValueError, match=f"the decoded-image cache {directory} is damaged: "
                                                 r"1 of the \d+ images just read \(image 3 of images.u8 "
                                                 rf"first\) differ from what was written; delete "
                                                 f"{directory} and the folder is decoded again"):
                images[key]
    with pytest.raises(ValueError, match="is damaged"):
        first.images.subset(slice(3, None))[0]


def test_training_on_a_damaged_cache_stops_with_one_line(tmp_path, capsys, monkeypatch):
    """Random bytes in images.u8, at its size: the run stops at its first batch."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("AMNP_CACHE_DIR", str(cache))
    root = face_folder(tmp_path / "faces", size=(8, 8))
    train = ["train", "--dataset", f"folder:{root}", "--iters", "2", "--batch-size", "4", "--no-eval"]
    assert cli.main(train + ["--out", str(tmp_path / "first")]) == 0
    (directory,) = (cache / "folders").iterdir()
    images = directory / "images.u8"
    images.write_bytes(np.random.default_rng(0).integers(0, 256, images.stat().st_size, np.uint8))
    capsys.readouterr()
    assert cli.main(train + ["--out", str(tmp_path / "second")]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()  # the small protocol's warning, then the error
    assert all(line.startswith("amnp: warning: ") for line in err[:-1]), err
    assert err[-1].startswith(
        f"amnp: error: the decoded-image cache {directory} is damaged: 4 of the 4 images just read"), err
    assert err[-1].endswith(f"delete {directory} and the folder is decoded again on the next run")

    shutil.rmtree(directory)
    assert cli.main(train + ["--out", str(tmp_path / "third")]) == 0


@pytest.mark.parametrize("damage", ["truncate", "garbage index", "checksums lost"])
def test_a_damaged_cache_is_decoded_again(face_tree, tmp_path, damage):  # noqa: F811
    cache = tmp_path / "cache"
    with pytest.warns(UserWarning):
        first = load_image_folder(face_tree, image_size=(6, 5), cache_dir=cache)
    expected = np.asarray(first.images)
    directory = os.path.dirname(first.images.path)
    index = os.path.join(directory, "index.npz")
    if damage == "truncate":
        with open(first.images.path, "r+b") as file:
            file.truncate(100)
    elif damage == "garbage index":
        with open(index, "wb") as file:
            file.write(b"not a zip file")
    else:
        with np.load(index) as stored:
            kept = {key: stored[key] for key in stored.files if key != "checksums"}
        damage_bytes(first.images.path, 0, expected.size)  # what the checksums would have caught
        with open(index, "wb") as file:
            np.savez(file, **kept)
    with pytest.warns(UserWarning) as caught:
        again = load_image_folder(face_tree, image_size=(6, 5), cache_dir=cache)
    assert any("unreadable" in str(w.message) and "decoding the folder again" in str(w.message)
               for w in caught)
    np.testing.assert_array_equal(np.asarray(again.images), expected)


def test_an_interrupted_decode_leaves_no_cache(face_tree, tmp_path, monkeypatch):  # noqa: F811
    calls = []

    def interrupted(path, *args):
        calls.append(path)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return np.zeros((3, 6, 5), np.uint8)

    monkeypatch.setattr(folder_module, "read_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_image_folder(face_tree, image_size=(6, 5), cache_dir=tmp_path / "cache")
    assert os.listdir(tmp_path / "cache") == []


def test_decoding_errors_are_those_of_the_in_memory_reader(face_tree, tmp_path):  # noqa: F811
    write_image(face_tree / "alice" / "big.png", size=(10, 12))
    with pytest.raises(ValueError, match="image_size"):
        load_image_folder(face_tree, cache_dir=tmp_path / "cache")
    assert os.listdir(tmp_path / "cache") == []
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache directory would go")
    with pytest.raises(ValueError, match="cannot write the decoded-image cache.*AMNP_CACHE_DIR"):
        load_image_folder(face_tree, image_size=(6, 5), cache_dir=blocked)


def test_prefetcher_returns_what_reading_in_place_returns():
    reads = []

    def read(step):
        reads.append(step)
        return step * 10

    with Prefetcher(read, end=6, depth=2) as prefetcher:
        assert [prefetcher.get(step) for step in (0, 1, 4, 5)] == [0, 10, 40, 50]
    assert max(reads) == 5, "never reads at or beyond the end"
    assert set(reads) >= {0, 1, 2, 3, 4, 5}


def test_prefetcher_passes_on_a_failed_read():
    def read(step):
        raise OSError(f"disk gone at step {step}")

    with Prefetcher(read, end=3) as prefetcher, pytest.raises(OSError, match="step 0"):
        prefetcher.get(0)


def on_disk(dataset, tmp_path):
    return dataclasses.replace(
        dataset, train_images=write_disk_images(dataset.train_images, tmp_path / "cache"))


def trained_parameters(dataset, out, **settings):
    config = TrainConfig(iters=10, batch_size=8, warmup=2, log_every=3, checkpoint_every=4, **settings)
    trainer = Trainer(config, dataset, str(out), progress=False)
    trainer.start()
    assert trainer.train(stop_at=5) == "stopped"
    resumed = Trainer(config, dataset, str(out), progress=False)
    resumed.resume()
    assert resumed.train() == "finished"
    return trainer.images.read_ahead, resumed.model.net.state_dict()


def test_training_from_disk_is_bit_identical_to_training_from_memory(tmp_path):
    memory = tiny_dataset(mirror=True)
    streams, expected = trained_parameters(memory, tmp_path / "memory")
    assert not streams
    streams, found = trained_parameters(on_disk(memory, tmp_path), tmp_path / "disk")
    assert streams
    for name, value in expected.items():
        assert np.array_equal(found[name], value), name


def test_training_from_disk_downloads_nothing_per_step(tmp_path):
    config = TrainConfig(iters=6, batch_size=8, warmup=2, log_every=2, checkpoint_every=1000)
    trainer = Trainer(config, on_disk(tiny_dataset(mirror=True), tmp_path), str(tmp_path),
                      progress=False)
    guard_parameters(trainer.model)
    trainer.train_labels = guard(trainer.train_labels)
    trainer.start()
    with transfers() as count:
        assert trainer.train() == "finished"
    with transfers() as checkpoint_count:
        trainer.save_checkpoint()
    assert count.downloads == 3 + checkpoint_count.downloads, "one read per log window"


def test_the_cli_trains_a_folder_from_the_dataset_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AMNP_CACHE_DIR", str(tmp_path / "cache"))
    root = face_folder(tmp_path / "faces", size=(12, 12))
    args = ["train", "--dataset", f"folder:{root}", "--iters", "2", "--batch-size", "8",
            "--model", "sphereface4"]
    assert cli.main(args + ["--out", str(tmp_path / "run")]) == 0
    (cached,) = os.listdir(tmp_path / "cache" / "folders")
    assert cached.startswith("faces-")
    assert os.path.getsize(tmp_path / "cache" / "folders" / cached / "images.u8") == 32 * 3 * 12 * 12
    assert cli.main(["eval", str(tmp_path / "run")]) == 0


class DiskWithLittleSpace(io.RawIOBase):
    """A file on a disk with ``space["left"]`` bytes free: as write(2) on a full disk, a
    write that does not fit writes what fits, and the next fails with ENOSPC."""

    def __init__(self, file, space):
        self.file, self.space = file, space

    def write(self, data):
        if self.space["left"] == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = self.file.write(bytes(data[:self.space["left"]]))
        self.space["left"] -= written
        return written

    def writable(self):
        return True

    def seekable(self):
        return True

    def seek(self, offset, whence=io.SEEK_SET):
        return self.file.seek(offset, whence)

    def tell(self):
        return self.file.tell()

    def fileno(self):
        return self.file.fileno()

    def close(self):
        self.file.close()
        super().close()


# 7 images of 4800 bytes: more than the 8 KiB write buffer holds, so free space of 0 and
# 10,000 bytes runs out while appending, 33,000 at the buffer's last flush, 33,610 (the
# images and 10 bytes) while writing the index.
@pytest.mark.parametrize("free", [0, 10_000, 33_000, 33_610])
def test_a_full_disk_names_the_cache_and_leaves_nothing_behind(tmp_path, monkeypatch, free):
    images = np.random.default_rng(0).integers(0, 256, (7, 3, 40, 40), dtype=np.uint8)
    space = {"left": free}

    def open_on_a_small_disk(path, mode="r", *args, **kwargs):
        if "w" not in mode:
            return open(path, mode, *args, **kwargs)
        return io.BufferedWriter(DiskWithLittleSpace(open(path, mode, buffering=0), space))

    monkeypatch.setattr(on_disk_module, "open", open_on_a_small_disk, raising=False)
    with pytest.raises(OSError, match=f"cannot write the decoded-image cache {tmp_path / 'cache'} "
                                      r"\(\[Errno 28\] No space left on device\): free disk space "
                                      "or set AMNP_CACHE_DIR to a larger disk"):
        write_disk_images(images, tmp_path / "cache")
    assert os.listdir(tmp_path) == []


@pytest.fixture
def small_tmpfs(tmp_path):
    """mount(SIZE) -> a directory on a real tmpfs of SIZE (e.g. "16k"), unmounted afterwards."""
    mounted = []

    def mount(size):
        directory = tmp_path / f"tmpfs-{size}"
        directory.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}); "
                        "test_a_full_disk_names_the_cache_and_leaves_nothing_behind injects ENOSPC instead")
        mounted.append(directory)
        return directory

    yield mount
    for directory in mounted:
        subprocess.run(["umount", str(directory)], check=True)


# 32 images of 16x16 RGB are 24 KiB: a 8 KiB or 16 KiB disk fills while they are written, a
# 24 KiB one just holds them and has no room left for the index.
@pytest.mark.parametrize("size", ["8k", "16k", "24k"])
def test_a_real_full_disk_under_the_cli(tmp_path, capsys, monkeypatch, small_tmpfs, size):
    disk = small_tmpfs(size)
    monkeypatch.setenv("AMNP_CACHE_DIR", str(disk))
    root = face_folder(tmp_path / "faces", size=(16, 16))
    out = tmp_path / "run"
    assert cli.main(["train", "--dataset", f"folder:{root}", "--iters", "1", "--batch-size", "4",
                     "--out", str(out)]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.fullmatch(
        f"amnp: error: cannot write the decoded-image cache {re.escape(str(disk))}/folders/faces-"
        r"[0-9a-f]{16} \(\[Errno 28\] No space left on device\): free disk space or set "
        "AMNP_CACHE_DIR to a larger disk", err[0]), err
    assert os.listdir(disk) == ["folders"] and os.listdir(disk / "folders") == [], "nothing left behind"
    assert not out.exists()


def test_a_writer_removes_what_a_killed_writer_left(images, tmp_path):
    abandoned = tmp_path / ".cache.999999999.x1y2"  # no such process
    abandoned.mkdir()
    (abandoned / "images.u8").write_bytes(b"half")
    write_disk_images(images, tmp_path / "cache")
    assert os.listdir(tmp_path) == ["cache"]


def test_a_file_vanishing_while_the_folder_is_listed_is_a_clear_error(face_tree, tmp_path, monkeypatch):  # noqa: F811
    listed = folder_module._image_files(face_tree)
    monkeypatch.setattr(folder_module, "_image_files",
                        lambda root: listed + [("dave", face_tree / "dave" / "gone.png")])
    with pytest.raises(ValueError, match="gone.png.*did the folder change while it was being read"):
        load_image_folder(face_tree, image_size=(6, 5), cache_dir=tmp_path / "cache")
