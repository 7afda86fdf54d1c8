"""Real face data: an image-folder tree, and LFW's ``pairs.txt`` protocol.

Layout expected by `load_image_folder`::

    root/
        Alice/  img1.jpg  img2.png ...
        Bob/    ...

one sub-directory per identity, PNG or JPEG files inside (extensions in any
case).  LFW (``lfw/<name>/<name>_0001.jpg``) has exactly this layout, so a
downloaded LFW copy works both as an image folder and with its pairs.txt.
Images are read with Pillow (installed with matplotlib).
"""
from __future__ import annotations

import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .dataset import VerificationDataset, make_gallery_probes, make_pairs_protocol
from .on_disk import DiskImages, DiskImageWriter, cache_directory, open_decoded

__all__ = ["ImageFolder", "LFWPairs", "load_folder_dataset", "load_image_folder",
           "load_lfw_pairs", "read_image", "resize_bilinear"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
DECODE_THREADS = min(4, os.cpu_count() or 1)
DECODE_CHUNK = 256  # files handed to the decoding threads at a time: bounds the images in flight
WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # how Pillow reads 16-bit grey PNGs


class ImageFolder(NamedTuple):
    """Result of `load_image_folder`.

    images : uint8 array, shape (N, C, H, W)
    labels : int64 array, shape (N,), indices into ``class_names``
    class_names : list of str, the identity directory names, sorted
    paths : list of str, the file of each image (a name that is not valid UTF-8 keeps its
        bytes as surrogate escapes: ``os.fsencode(path)`` gives them back)
    skipped : int, number of image files that could not be read
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list
    paths: list
    skipped: int


class LFWPairs(NamedTuple):
    """Result of `load_lfw_pairs`, ready for a `VerificationDataset`.

    test_images : uint8 array, shape (M, C, H, W), each referenced image once
    test_labels : int64 array, shape (M,), indices into ``identity_names``
    pairs : int64 array, shape (P, 2), indices into ``test_images``
    pair_same : bool array, shape (P,)
    pair_fold : int64 array, shape (P,)
    identity_names : list of str, sorted
    paths : list of str, the file of each image in ``test_images``
    """

    test_images: np.ndarray
    test_labels: np.ndarray
    pairs: np.ndarray
    pair_same: np.ndarray
    pair_fold: np.ndarray
    identity_names: list
    paths: list


def resize_bilinear(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize one image with bilinear interpolation.

    Pixel centres are aligned like most image libraries do (source
    coordinate ``(i + 0.5) * H / h - 0.5``).  Strong downscaling aliases;
    that is acceptable for resizing face crops to a network input.

    Parameters
    ----------
    image : uint8 array, shape (C, H, W)
    size : (h, w)

    Returns
    -------
    uint8 array, shape (C, h, w)
    """
    _, height, width = image.shape
    h, w = size

    def axis(n_out, n_in):
        coord = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        low = np.floor(coord).astype(np.intp)
        high = np.minimum(low + 1, n_in - 1)
        return low, high, (coord - low).astype(np.float32)

    y0, y1, fy = axis(h, height)
    x0, x1, fx = axis(w, width)
    img = image.astype(np.float32)
    rows = img[:, y0] * (1 - fy)[:, None] + img[:, y1] * fy[:, None]   # (C, h, W)
    out = rows[:, :, x0] * (1 - fx) + rows[:, :, x1] * fx               # (C, h, w)
    return np.round(out).astype(np.uint8)


def read_image(path, grayscale: bool = False, image_size=None) -> np.ndarray:
    """Read one image as uint8 (C, H, W), resized to ``image_size`` if given.

    16-bit grey PNGs are scaled to 8 bits (their high byte, as Pillow reads 16-bit
    colour PNGs), not clipped at 255.

    Raises OSError, ValueError or SyntaxError (what Pillow raises) when the
    file cannot be decoded, and ValueError for an image Pillow refuses as a
    decompression bomb (over twice ``PIL.Image.MAX_IMAGE_PIXELS`` pixels; over
    once, Pillow reads it with a DecompressionBombWarning).
    """
    try:
        with Image.open(path) as image:
            pixels = np.asarray(_eight_bit(image).convert("L" if grayscale else "RGB"))
    except Image.DecompressionBombError as error:
        raise ValueError(str(error)) from None
    pixels = pixels[None] if grayscale else pixels.transpose(2, 0, 1)
    # Resizing right away keeps memory at the target size (LFW: 13k images).
    if image_size is not None and pixels.shape[1:] != tuple(image_size):
        pixels = resize_bilinear(pixels, image_size)
    return pixels


def _eight_bit(image: Image.Image) -> Image.Image:
    """``image`` with 8-bit channels: Pillow's convert("L"/"RGB") would clip 16-bit grey at 255.
    PNG has no grey deeper than 16 bits, so the 32-bit "I" mode also holds 16-bit values."""
    if image.mode not in WIDE_GREY_MODES:
        return image
    values = np.clip(np.asarray(image), 0, 65535).astype(np.uint16)
    return Image.fromarray((values >> 8).astype(np.uint8), "L")


def _size_mismatch(where, first_path, first_shape, path, shape) -> ValueError:
    return ValueError(
        f"images under {where} have different sizes ({first_shape[1]}x{first_shape[2]} in "
        f"{first_path}, {shape[1]}x{shape[2]} in {path}); "
        "resize them with image_size=(H, W) (amnp: --image-size H,W)")


def _stack(images: list[np.ndarray], paths: list[str], where) -> np.ndarray:
    """Stack (C, H, W) images into (N, C, H, W); they must have the same size."""
    first = images[0].shape
    for image, path in zip(images, paths):
        if image.shape != first:
            raise _size_mismatch(where, paths[0], first, path, image.shape)
    return np.stack(images)


def _image_files(root: Path) -> list:
    """(identity, path) of every image file of ``root``, in sorted order."""
    if not root.is_dir():
        raise ValueError(f"image folder {root} does not exist or is not a directory")
    identity_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    files = [(d.name, f) for d in identity_dirs for f in sorted(d.iterdir())
             if f.is_file() and not f.name.startswith(".")
             and f.suffix.lower() in IMAGE_EXTENSIONS]
    if not files:
        raise ValueError(
            f"no images found under {root}: expected root/<identity>/<image>.png or .jpg")
    return files


def _decoded(files, grayscale, image_size, progress, where):
    """Decode ``files`` in order, a few at a time on a thread pool (Pillow releases the GIL
    while decoding); yields each image, or None for a file that cannot be decoded."""
    def read(path):
        try:
            return read_image(path, grayscale, image_size)
        except (OSError, ValueError, SyntaxError):
            return None

    with ThreadPoolExecutor(DECODE_THREADS) as pool, \
            tqdm(total=len(files), desc=f"decoding {where}", unit="img", disable=not progress,
                 leave=False) as bar:
        for start in range(0, len(files), DECODE_CHUNK):
            chunk = [path for _, path in files[start:start + DECODE_CHUNK]]
            yield from pool.map(read, chunk)
            bar.update(len(chunk))


def _fingerprint(files, root: Path, settings: str) -> str:
    """A digest of the decoding settings and of every file's path, size, modification and
    inode-change times and inode number: a file replaced, or changed with its modification
    time set back, changes its inode-change time, which nobody can set back."""
    digest = hashlib.sha256(settings.encode())
    for _, path in files:
        try:
            status = path.stat()
        except OSError as error:
            raise ValueError(f"cannot read {path} ({error}); did the folder change while it "
                             "was being read?") from None
        # os.fsencode: a name that is not valid UTF-8 has its own bytes back
        digest.update(os.fsencode(path.relative_to(root)) + (
            f"\0{status.st_size}\0{status.st_mtime_ns}\0{status.st_ctime_ns}\0{status.st_ino}\n"
            .encode()))
    return digest.hexdigest()


def load_image_folder(root, image_size=None, grayscale: bool = False, cache_dir=None,
                      progress: bool = False) -> ImageFolder:
    """Read an identity-per-directory image tree.

    Identities are the sub-directories of ``root`` in sorted order, images the
    ``.png/.jpg/.jpeg`` files inside (sorted by name); hidden files and other
    extensions are ignored.  Files that cannot be decoded (or are over
    Pillow's decompression-bomb limit, see `read_image`) are skipped,
    counted in ``skipped`` and reported with a warning; an identity whose
    images are all unreadable is left out.  File names need not be valid
    UTF-8.

    Parameters
    ----------
    root : path
    image_size : (H, W), optional
        Resize every image to this size (bilinear).  Without it, all images
        must already have the same size.
    grayscale : bool
        Read as 1 channel instead of RGB (3 channels).
    cache_dir : path, optional
        Decode the folder once into a cache under this directory and return
        its images as `DiskImages`, read from disk a batch at a time (see
        amnp.data.on_disk); later calls reuse the cache while the folder's
        files are unchanged.  Without it the images are decoded into memory.
    progress : bool
        Show a progress bar while decoding.

    Returns
    -------
    ImageFolder(images uint8 (N, C, H, W), labels int64 (N,), class_names,
    paths, skipped); ``images`` is a `DiskImages` with ``cache_dir``.

    Raises
    ------
    ValueError
        ``root`` missing or not a directory, no image files, none readable,
        images of different sizes without ``image_size``, or a cache directory
        that cannot be written.
    """
    root = Path(root).expanduser()
    if image_size is not None:
        image_size = (int(image_size[0]), int(image_size[1]))
    files = _image_files(root)
    if cache_dir is None:
        images, kept = _decode_into(files, root, grayscale, image_size, progress, sink=None)
    else:
        images, kept = _open_or_decode(files, root, grayscale, image_size, progress, cache_dir)
    if kept.size == 0:
        raise ValueError(f"none of the {len(files)} image files under {root} could be read")
    unreadable = np.setdiff1d(np.arange(len(files)), kept)
    if unreadable.size:
        warnings.warn(f"skipped {unreadable.size} unreadable image file(s) under {root}, "
                      f"e.g. {files[unreadable[0]][1]}", stacklevel=2)
    names = [files[i][0] for i in kept]
    paths = [str(files[i][1]) for i in kept]
    class_names = sorted(set(names))
    labels = np.searchsorted(class_names, names).astype(np.int64)
    return ImageFolder(images, labels, class_names, paths, int(unreadable.size))


def _open_or_decode(files, root, grayscale, image_size, progress, cache_dir):
    """The folder's cache under ``cache_dir``, decoded first if it is missing or stale.
    Returns (DiskImages or None when no file could be read, positions in ``files`` kept)."""
    settings = f"size={image_size} grayscale={bool(grayscale)}"
    directory = cache_directory(cache_dir, str(root.resolve()), settings)
    fingerprint = _fingerprint(files, root, settings)
    cached = open_decoded(directory, fingerprint)
    if cached is not None:
        images, index = cached
        return images, index["kept"]
    with DiskImageWriter(directory, fingerprint) as writer:
        _, kept = _decode_into(files, root, grayscale, image_size, progress, writer)
        return (writer.commit(kept=kept) if kept.size else None), kept


def _decode_into(files, root, grayscale, image_size, progress, sink):
    """Decode every file, appending each readable image to ``sink`` (a DiskImageWriter) or,
    without one, stacking them in memory.  Returns (stacked images or None, int64 array of
    the positions in ``files`` that could be read)."""
    kept, in_memory, first = [], [], None
    for position, image in enumerate(_decoded(files, grayscale, image_size, progress, root)):
        if image is None:
            continue
        if first is None:
            first = (files[position][1], image.shape)
        elif image.shape != first[1]:
            raise _size_mismatch(root, *first, files[position][1], image.shape)
        (in_memory.append if sink is None else sink.append)(image)
        kept.append(position)
    stacked = np.stack(in_memory) if in_memory else None
    return stacked, np.array(kept, dtype=np.int64)


def _parse_pairs_txt(pairs_txt: Path):
    """Parse LFW's pairs.txt.

    Format: a header ``folds n`` (or just ``n`` for a single fold, as in
    pairsDevTrain.txt), then per fold ``n`` same-identity lines
    ``name idx1 idx2`` followed by ``n`` different-identity lines
    ``name1 idx1 name2 idx2``.

    Returns a list of ``((name1, idx1), (name2, idx2), same, fold, line_number)``.
    """
    lines = [(number, line.split()) for number, line in
             enumerate(pairs_txt.read_text().splitlines(), start=1) if line.strip()]
    if not lines:
        raise ValueError(f"{pairs_txt} is empty")
    try:
        header = [int(token) for token in lines[0][1]]
    except ValueError:
        header = []
    if len(header) not in (1, 2) or min(header) < 1:
        raise ValueError(f"{pairs_txt}: the first line must be 'folds pairs_per_fold' "
                         f"(e.g. '10 300'), got {' '.join(lines[0][1])!r}")
    folds, n = header if len(header) == 2 else (1, header[0])
    body = lines[1:]
    if len(body) != 2 * folds * n:
        raise ValueError(f"{pairs_txt}: the header announces {folds} folds x {2 * n} pairs = "
                         f"{2 * folds * n} lines, found {len(body)}")

    entries = []
    for position, (number, tokens) in enumerate(body):
        fold, offset = divmod(position, 2 * n)
        same = offset < n
        expected = 3 if same else 4
        if len(tokens) != expected:
            kind = "same-identity 'name idx1 idx2'" if same else \
                "different-identity 'name1 idx1 name2 idx2'"
            raise ValueError(f"{pairs_txt}, line {number}: expected a {kind} pair, "
                             f"got {' '.join(tokens)!r}")
        try:
            if same:
                first, second = (tokens[0], int(tokens[1])), (tokens[0], int(tokens[2]))
            else:
                first, second = (tokens[0], int(tokens[1])), (tokens[2], int(tokens[3]))
        except ValueError:
            raise ValueError(f"{pairs_txt}, line {number}: image numbers must be integers, "
                             f"got {' '.join(tokens)!r}") from None
        if not same and first[0] == second[0]:
            raise ValueError(f"{pairs_txt}, line {number}: a different-identity pair names "
                             f"{first[0]} twice")
        entries.append((first, second, same, fold, number))
    return entries


def load_lfw_pairs(pairs_txt, root, image_size=None, grayscale: bool = False) -> LFWPairs:
    """Read the images of an LFW-style ``pairs.txt`` and its 10-fold protocol.

    Image ``(name, k)`` is the file ``root/name/name_{k:04d}.jpg``.  Each
    image is loaded once even when several pairs use it.

    Parameters
    ----------
    pairs_txt : path
        LFW pairs.txt (or pairsDevTest.txt, single fold).
    root : path
        The LFW image directory.
    image_size : (H, W), optional
        Resize to this size; needed if the images differ in size.
    grayscale : bool

    Returns
    -------
    LFWPairs

    Raises
    ------
    ValueError
        Malformed pairs.txt (with the line number), a pair listed twice or
        pairing an image with itself, or a referenced image that is missing
        or unreadable (naming its path).
    """
    pairs_txt, root = Path(pairs_txt).expanduser(), Path(root).expanduser()
    if image_size is not None:
        image_size = (int(image_size[0]), int(image_size[1]))
    if not pairs_txt.is_file():
        raise ValueError(f"pairs file {pairs_txt} does not exist")
    entries = _parse_pairs_txt(pairs_txt)

    index = {}  # (name, k) -> position in the image list
    images, image_names, paths = [], [], []
    pairs = np.empty((len(entries), 2), dtype=np.int64)
    for p, (first, second, _, _, number) in enumerate(entries):
        for side, (name, k) in enumerate((first, second)):
            if (name, k) not in index:
                path = root / name / f"{name}_{k:04d}.jpg"
                if not path.is_file():
                    raise ValueError(f"{pairs_txt}, line {number}: image {path} does not exist")
                try:
                    images.append(read_image(path, grayscale, image_size))
                except (OSError, ValueError, SyntaxError) as error:
                    raise ValueError(f"{pairs_txt}, line {number}: cannot read image {path} "
                                     f"({error})") from None
                index[(name, k)] = len(paths)
                image_names.append(name)
                paths.append(str(path))
            pairs[p, side] = index[(name, k)]
    if np.any(pairs[:, 0] == pairs[:, 1]):
        number = entries[int(np.flatnonzero(pairs[:, 0] == pairs[:, 1])[0])][4]
        raise ValueError(f"{pairs_txt}, line {number}: pairs an image with itself")
    _, first, seen = np.unique(np.sort(pairs, axis=1), axis=0, return_index=True, return_inverse=True)
    repeated = np.flatnonzero(first[seen.ravel()] != np.arange(len(pairs)))
    if repeated.size:  # a repeated pair would count twice in the accuracy
        again, original = entries[int(repeated[0])][4], entries[int(first[seen.ravel()[repeated[0]]])][4]
        raise ValueError(f"{pairs_txt}, line {again}: repeats the pair of line {original} "
                         f"({repeated.size} repeated pair(s) in all)")

    identity_names = sorted(set(image_names))
    labels = np.searchsorted(identity_names, image_names).astype(np.int64)
    return LFWPairs(
        test_images=_stack(images, paths, root), test_labels=labels, pairs=pairs,
        pair_same=np.array([e[2] for e in entries], dtype=bool),
        pair_fold=np.array([e[3] for e in entries], dtype=np.int64),
        identity_names=identity_names, paths=paths)


def load_folder_dataset(root, holdout_fraction: float = 0.1, seed: int = 0, image_size=None,
                        grayscale: bool = False, pairs_txt=None, lfw_root=None,
                        folds: int = 10, pairs_per_fold: int = 300, cache_dir=None,
                        progress: bool = False) -> VerificationDataset:
    """A face-verification dataset from an image folder (name "folder", mirror=True).

    Without ``pairs_txt``: the identities are split at random (seeded) into
    training and held-out identities, about ``holdout_fraction`` of them held
    out.  Held-out identities are drawn only from identities with two or
    more images (only those can form same-identity pairs); identities with a
    single image always go to training, where one image is still a valid
    class example.  The held-out images get `make_pairs_protocol` (``folds``
    x ``pairs_per_fold`` same + different pairs, reduced with a warning when
    there are too few images) and `make_gallery_probes`.

    With ``pairs_txt`` (LFW's pairs.txt): the held-out set is exactly the
    images named in it, read from ``lfw_root`` (default ``root``) with its
    own folds, and training uses every identity of ``root`` that does not
    appear in pairs.txt, so train and test stay disjoint.
    ``holdout_fraction``, ``folds`` and ``pairs_per_fold`` are then unused.

    Parameters
    ----------
    root : path
        ``root/<identity>/<image>`` tree (see `load_image_folder`).
    holdout_fraction : float in (0, 1)
    seed : int
    image_size : (H, W), optional
        Resize every image (train and test) to this size.
    grayscale : bool
    pairs_txt, lfw_root : path, optional
    folds, pairs_per_fold : int
    cache_dir : path, optional
        Decode ``root`` once into a cache under this directory and leave its
        images there (`DiskImages`, read a batch at a time; see
        `load_image_folder`), so that a folder larger than memory can be
        trained on.  LFW's pairs.txt images are always read into memory.
    progress : bool
        Show a progress bar while decoding.

    Returns
    -------
    VerificationDataset

    Raises
    ------
    ValueError
        Bad paths (see `load_image_folder`), fewer than two identities with
        two images to hold out, or fewer than two identities left for training.
    """
    folder = load_image_folder(root, image_size=image_size, grayscale=grayscale,
                               cache_dir=cache_dir, progress=progress)
    rng = np.random.default_rng(seed)
    names = np.array(folder.class_names)

    if pairs_txt is not None:
        # The LFW images must have the training images' size.
        lfw = load_lfw_pairs(pairs_txt, lfw_root if lfw_root is not None else root,
                             image_size=folder.images.shape[2:], grayscale=grayscale)
        train_ids = np.flatnonzero(~np.isin(names, lfw.identity_names))
        if train_ids.size == 0:
            raise ValueError(f"every identity under {root} appears in {pairs_txt}; "
                             "none is left for training")
        test_images, test_labels = lfw.test_images, lfw.test_labels
        pairs, pair_same, pair_fold = lfw.pairs, lfw.pair_same, lfw.pair_fold
        test_names = lfw.identity_names
    else:
        if not 0 < holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must be between 0 and 1, got {holdout_fraction}")
        counts = np.bincount(folder.labels, minlength=len(names))
        eligible = np.flatnonzero(counts >= 2)
        if eligible.size < 2:
            raise ValueError(
                f"{root} has {eligible.size} identities with two or more images; held-out "
                "identities need two images each for same-identity pairs, and at least two "
                "of them are needed for different-identity pairs")
        n_test = min(max(2, round(holdout_fraction * len(names))), eligible.size)
        if len(names) - n_test < 2:
            raise ValueError(
                f"{root} has {len(names)} identities; a folder dataset needs at least "
                f"{n_test + 2}: {n_test} held out for testing and 2 to train on (a classifier "
                "over a single identity has nothing to tell apart)")
        test_ids = np.sort(rng.choice(eligible, size=n_test, replace=False))
        train_ids = np.setdiff1d(np.arange(len(names)), test_ids)
        is_test = np.isin(folder.labels, test_ids)
        test_images = _rows(folder.images, is_test)
        test_labels = np.searchsorted(test_ids, folder.labels[is_test]).astype(np.int64)
        pairs, pair_same, pair_fold = make_pairs_protocol(test_labels, rng, folds, pairs_per_fold)
        test_names = names[test_ids].tolist()

    is_train = np.isin(folder.labels, train_ids)
    gallery, probes = make_gallery_probes(test_labels, rng)
    return VerificationDataset(
        name="folder", train_images=_rows(folder.images, is_train),
        train_labels=np.searchsorted(train_ids, folder.labels[is_train]).astype(np.int64),
        test_images=test_images, test_labels=test_labels, pairs=pairs, pair_same=pair_same,
        pair_fold=pair_fold, gallery=gallery, probes=probes, mirror=True,
        class_names=names[train_ids].tolist(), test_class_names=test_names)


def _rows(images, mask):
    """The images ``mask`` selects; those of a `DiskImages` stay on disk."""
    return images.subset(mask) if isinstance(images, DiskImages) else images[mask]
