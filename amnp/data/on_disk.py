"""Images decoded once into a file on disk, and read back a batch at a time.

A face folder the size of CASIA-WebFace (494k images of 3x112x96) is 16 GB as uint8:
more than a machine's memory should have to hold just to feed a network that looks
at 256 images per step.  So a folder is decoded once into one flat uint8 file,
``images.u8``, laid out exactly like an (N, C, H, W) array, next to an ``index.npz``
that says what it holds.  `DiskImages` then behaves like that array for what a
trainer asks of it (its shape, and the rows of a batch), reading only the rows asked
for: each read maps the file, copies the rows out and unmaps it again, so the
process keeps nothing of the file but the batch (the pages it read stay in the
operating system's page cache, which gives them back when memory is short).

The cache is written into a temporary directory and renamed into place when
complete, so an interrupted decode (or a full disk) never leaves a cache that looks
finished, and it records a fingerprint of the folder (every file's path, size,
modification and inode-change time and inode number, the image size and the colour
mode): when the folder changes, the cache is decoded again instead of being silently
reused.  Setting a file's modification time back (``touch -d``) does not hide a
change, since nobody can set the inode-change time back.

The index also holds a CRC-32 of every image as written, and every read checks the
rows it returns against them, so bytes damaged on disk are never trained on: they
raise an error that names the cache.  Checking a batch of 128 images of 3x112x96
(4.1 MB) costs 1.6 to 1.9 ms on a 2-core Xeon, on top of 2.7 to 3.3 ms for the read
itself, rows in the page cache (benchmarks/cache_checksums.py); in training it runs on
the prefetch thread, zlib releasing the GIL.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import mmap
import os
import shutil
import tempfile
import warnings
import zlib
from pathlib import Path

import numpy as np

__all__ = ["DiskImages", "DiskImageWriter", "open_decoded", "cache_directory"]

FORMAT_VERSION = 2  # bump when the file layout, read_image or resize_bilinear changes
IMAGES_FILE, INDEX_FILE = "images.u8", "index.npz"


class DiskImages:
    """uint8 images of shape (N, C, H, W) kept in a file, read only when indexed.

    ``images[key]`` with a key that selects rows (an integer, a slice, a 1-D integer
    array or boolean mask) returns those images as an in-memory NumPy array, as
    indexing an array would; keys that reach inside the images (``images[..., ::-1]``,
    a tuple, None) are refused, since they would have to read every row first.
    `subset` selects rows without reading them.  ``np.asarray(images)`` reads them all.

    The file is opened once, here, and every read maps that open file: if the cache is
    decoded again (the folder changed) and the path now names a new file, these images
    still read the file they were opened with, so their rows keep matching their labels.

    ``checksums`` holds the CRC-32 (zlib.crc32) of each image of the file; every read
    checks the images it returns against them and raises ValueError, naming the cache,
    when one differs (the file was damaged after it was written).
    """

    ndim, dtype = 4, np.dtype(np.uint8)

    def __init__(self, path, shape, checksums, rows=None, file=None):
        self.path = str(path)
        self.file_shape = tuple(int(d) for d in shape)
        self.checksums = np.asarray(checksums, np.uint32)
        if self.checksums.shape != self.file_shape[:1]:
            raise ValueError(f"{self.path} holds {self.file_shape[0]} images but "
                             f"{self.checksums.size} checksums were given")
        self.rows = np.arange(self.file_shape[0]) if rows is None else np.asarray(rows, np.int64)
        self._file = open(self.path, "rb") if file is None else file

    @property
    def shape(self) -> tuple:
        return (len(self.rows),) + self.file_shape[1:]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key) -> np.ndarray:
        rows = self._selected_rows(key)
        if rows.ndim == 0:
            return self._read(rows[None])[0]
        return self._read(rows)

    # A batch reader (VerificationDataset.batch_reader): reading costs page faults and disk
    # seeks, so the trainer reads the next batches while a step computes (amnp.data.prefetch).
    read_ahead = True

    def read(self, indices) -> np.ndarray:
        """The images of the rows ``indices`` (a 1-D integer array), in memory: a batch."""
        return self[indices]

    def subset(self, key) -> "DiskImages":
        """The rows ``key`` selects, still on disk; an integer key keeps its row axis."""
        return DiskImages(self.path, self.file_shape, self.checksums,
                          np.atleast_1d(self._selected_rows(key)), self._file)

    def _selected_rows(self, key) -> np.ndarray:
        if key is None or key is Ellipsis or isinstance(key, (tuple, bool, np.bool_)) \
                or np.ndim(key) > 1:
            raise TypeError(f"DiskImages are indexed by rows only (an integer, a slice, a 1-D "
                            f"integer array or boolean mask), got {key!r}; read the rows first, "
                            "e.g. images[rows][..., ::-1]")
        return self.rows[key]

    def __array__(self, dtype=None, copy=None):
        if copy is False:
            raise ValueError("DiskImages are read from disk: an array of them is always a copy")
        images = self[:]
        return images if dtype is None else images.astype(dtype)

    def _read(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows),) + self.file_shape[1:], dtype=np.uint8)
        if len(rows):
            # Read in file order (a cold disk reads ahead), put back in the order asked for.
            order = np.argsort(rows, kind="stable")
            with mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                images = np.frombuffer(mapped, dtype=np.uint8).reshape(self.file_shape)
                out[order] = images[rows[order]]
                del images  # unmapped on leaving: the process keeps the batch, not the file's pages
            self._check(out, rows)
        return out

    def _check(self, images: np.ndarray, rows: np.ndarray) -> None:
        """Raise if an image read differs from the image written (bytes damaged on disk)."""
        damaged = [row for image, row in zip(images, rows)
                   if zlib.crc32(image) != self.checksums[row]]
        if damaged:
            directory = os.path.dirname(self.path)
            raise ValueError(
                f"the decoded-image cache {directory} is damaged: {len(damaged)} of the "
                f"{len(rows)} images just read (image {damaged[0]} of {IMAGES_FILE} first) differ "
                f"from what was written; delete {directory} and the folder is decoded again "
                "on the next run")

    def __repr__(self) -> str:
        return f"DiskImages({self.path!r}, shape={self.shape})"


def cache_directory(cache_root, source: str, settings: str) -> Path:
    """Where the decoded cache of ``source`` read with ``settings`` lives under ``cache_root``."""
    key = hashlib.sha256(os.fsencode(source) + f"\0{settings}".encode()).hexdigest()[:16]
    return Path(cache_root).expanduser() / f"{Path(source).name or 'root'}-{key}"


def open_decoded(directory: Path, fingerprint: str):
    """The cache in ``directory`` as (DiskImages, index dict), or None when there is none, it
    was decoded from a different folder state (``fingerprint``), or it cannot be read."""
    if not (directory / INDEX_FILE).exists():
        return None
    try:
        with np.load(directory / INDEX_FILE, allow_pickle=False) as stored:
            index = {key: stored[key] for key in stored.files}
        shape = tuple(int(d) for d in index["shape"])
        if int(index["format_version"]) != FORMAT_VERSION or str(index["fingerprint"]) != fingerprint:
            return None
        size = os.path.getsize(directory / IMAGES_FILE)
        if size != int(np.prod(shape)):
            raise ValueError(f"{IMAGES_FILE} holds {size} bytes, the index says {shape}")
        images = DiskImages(directory / IMAGES_FILE, shape, index["checksums"])
    except Exception as error:  # noqa: BLE001 - any unreadable cache is decoded again
        warnings.warn(f"the decoded-image cache {directory} is unreadable ({error}); "
                      "decoding the folder again", stacklevel=3)
        return None
    return images, index


class DiskImageWriter:
    """Writes images of one shape, one at a time, into a new cache directory.

    Used as a context manager: ``commit(**index)`` moves the finished cache into
    ``directory``; leaving the block without committing (an error, Ctrl-C) deletes what
    was written, so a cache that exists is always complete.  A failed write (a full
    disk) raises OSError naming the cache and AMNP_CACHE_DIR wherever it happens (an
    image, the buffer's last flush, the index) and deletes what was written too.  The
    temporary directory's name carries the writer's process id, so that one left by a
    killed process is recognised and removed by the next writer.
    """

    def __init__(self, directory: Path, fingerprint: str):
        self.directory, self.fingerprint = Path(directory), fingerprint
        self.image_shape, self.checksums = None, []

    def __enter__(self):
        parent, self.temporary = self.directory.parent, None
        try:
            parent.mkdir(parents=True, exist_ok=True)
            _remove_abandoned(parent, self.directory.name)
            self.temporary = Path(tempfile.mkdtemp(
                prefix=f".{self.directory.name}.{os.getpid()}.", dir=parent))
            self.file = open(self.temporary / IMAGES_FILE, "wb")
        except OSError as error:
            if self.temporary is not None:
                shutil.rmtree(self.temporary, ignore_errors=True)
            raise ValueError(f"cannot write the decoded-image cache under {parent} ({error}); "
                             "set AMNP_CACHE_DIR to a writable directory") from None
        return self

    def append(self, image: np.ndarray) -> None:
        """Add one uint8 (C, H, W) image; every image must have the shape of the first."""
        if self.image_shape is None:
            self.image_shape = image.shape
        if image.shape != self.image_shape or image.dtype != np.uint8:
            raise ValueError(f"DiskImageWriter: expected uint8 {self.image_shape}, "
                             f"got {image.dtype} {image.shape}")
        data = np.ascontiguousarray(image).tobytes()
        with self._explained_write_errors():
            self.file.write(data)
        self.checksums.append(zlib.crc32(data))

    def commit(self, **index) -> DiskImages:
        """Finish the cache, with ``index`` (arrays) stored beside the images; returns them.

        Both files reach the disk (fsync) before the directory is moved into place.  A
        cache already there (the folder's previous state, or one another process has just
        committed) is moved aside first and then deleted; whoever has its images open
        keeps reading them, since DiskImages read the file they opened.
        """
        if not self.checksums:
            raise ValueError("DiskImageWriter: no images to commit")
        shape = (len(self.checksums),) + tuple(self.image_shape)
        checksums = np.array(self.checksums, np.uint32)
        with self._explained_write_errors():
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            with open(self.temporary / INDEX_FILE, "wb") as file:
                np.savez(file, format_version=FORMAT_VERSION, fingerprint=self.fingerprint,
                         shape=np.array(shape), checksums=checksums, **index)
                file.flush()
                os.fsync(file.fileno())
            aside = self.temporary.with_name(self.temporary.name + ".old")
            try:
                os.replace(self.directory, aside)
            except FileNotFoundError:
                pass
            try:
                os.replace(self.temporary, self.directory)
            except OSError as error:
                if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                # another process committed this folder in between: same files, same cache
            shutil.rmtree(aside, ignore_errors=True)
        return DiskImages(self.directory / IMAGES_FILE, shape, checksums)

    @contextlib.contextmanager
    def _explained_write_errors(self):
        """A failed write (a full disk, most likely) says which cache and what to do."""
        try:
            yield
        except OSError as error:
            raise OSError(f"cannot write the decoded-image cache {self.directory} ({error}): "
                          "free disk space or set AMNP_CACHE_DIR to a larger disk") from error

    def __exit__(self, *exc_info):
        # Uncommitted, the file is thrown away: closing it flushes its buffer, which fails
        # again on a full disk, and must not keep the directory from being deleted.
        with contextlib.suppress(OSError):
            self.file.close()
        if self.temporary.exists():  # not committed
            shutil.rmtree(self.temporary, ignore_errors=True)
        return False


def _remove_abandoned(parent: Path, name: str) -> None:
    """Delete temporary directories of ``name`` left by writers that no longer run (killed
    while decoding: they never reached their own clean-up)."""
    prefix = f".{name}."
    for candidate in parent.iterdir():
        if not candidate.name.startswith(prefix):
            continue
        try:
            pid = int(candidate.name[len(prefix):].split(".")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(candidate, ignore_errors=True)
        except (ValueError, PermissionError):  # not ours, or another user's live process
            continue
