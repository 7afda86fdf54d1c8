"""MNIST and Fashion-MNIST from their IDX files, as a verification dataset.

The IDX format (http://yann.lecun.com/exdb/mnist/): a 4-byte magic number
``00 00 <type> <ndim>``, then ``ndim`` big-endian uint32 dimension sizes,
then the values in C order, big-endian.  Files may be gzipped.

Classes play the role of identities: the ``holdout_classes`` (default the
digits 8 and 9) are never trained on and form the test protocol.  That is
the opposite of faces -- very few identities with thousands of images each
-- so the 10 verification folds cannot use disjoint identities: every fold
draws its pairs from all held-out classes (see `make_pairs_protocol`), and
the identification gallery has one image per held-out class.
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from .dataset import VerificationDataset, make_gallery_probes, make_pairs_protocol

__all__ = ["FASHION_MNIST_CLASSES", "load_mnist_dataset", "read_idx"]

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")

# IDX type byte -> big-endian numpy dtype
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """Read an IDX file, raw or gzipped (detected from its content).

    Parameters
    ----------
    path : path

    Returns
    -------
    numpy array with the file's shape and type, native byte order.

    Raises
    ------
    ValueError
        Missing file, corrupt gzip stream, bad magic number, unknown type,
        or a size that does not match the header (truncated file), with the
        file name and what was wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"IDX file {path} does not exist")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip magic number
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise ValueError(f"{path}: corrupt or truncated gzip data ({error})") from None
    if len(raw) < 4:
        raise ValueError(f"{path} is too short ({len(raw)} bytes) to be an IDX file")
    if raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file: its magic number starts with "
                         f"{raw[:2].hex()}, expected 0000")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_TYPES:
        raise ValueError(f"{path}: unknown IDX data type 0x{type_code:02x}")
    if ndim == 0:
        raise ValueError(f"{path}: the IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path} is truncated: the header needs {header} bytes, "
                         f"the file has {len(raw)}")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[type_code])
    expected = int(np.prod(shape)) * dtype.itemsize
    found = len(raw) - header
    if found < expected:
        raise ValueError(f"{path} is truncated: shape {shape} needs {expected} bytes of data, "
                         f"found {found}")
    if found > expected:
        raise ValueError(f"{path} is corrupt: {found - expected} bytes follow the "
                         f"{expected} bytes of data declared for shape {shape}")
    data = np.frombuffer(raw, dtype=dtype, count=int(np.prod(shape)), offset=header)
    return data.reshape(shape).astype(dtype.newbyteorder("="))


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    return None


def _read_split(root: Path, prefix: str):
    """(images, labels) of ``prefix`` ("train" or "t10k"), or None if absent."""
    image_file = _find(root, f"{prefix}-images-idx3-ubyte")
    label_file = _find(root, f"{prefix}-labels-idx1-ubyte")
    if image_file is None and label_file is None:
        return None
    if image_file is None or label_file is None:
        missing = f"{prefix}-images-idx3-ubyte" if image_file is None \
            else f"{prefix}-labels-idx1-ubyte"
        raise ValueError(f"{root} has only half of the {prefix} split: {missing}[.gz] is missing")
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{image_file} must hold uint8 images of shape (N, H, W), "
                         f"got {images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"{label_file} must hold one label per image of {image_file} "
                         f"({len(images)}), got shape {labels.shape}")
    return images, labels.astype(np.int64)


def load_mnist_dataset(root, holdout_classes=(8, 9), seed: int = 0, folds: int = 10,
                       pairs_per_fold: int = 300, class_names=None,
                       name: str = "mnist") -> VerificationDataset:
    """MNIST (or Fashion-MNIST, same file names) as a verification dataset.

    Reads ``train-images-idx3-ubyte`` / ``train-labels-idx1-ubyte`` (and
    ``t10k-*`` when present, merged in), each optionally ``.gz``, from
    ``root``.  Classes in ``holdout_classes`` become the held-out identities
    (all their images), the others the training classes.

    Parameters
    ----------
    root : path
    holdout_classes : sequence of int
        At least two classes (different-identity pairs need two).
    seed : int
    folds, pairs_per_fold : int
        Verification protocol size (every fold draws from all held-out classes).
    class_names : sequence of str, optional
        A name per class (e.g. `FASHION_MNIST_CLASSES`); default the digits.
    name : str
        Dataset name ("mnist"; "fashion-mnist" reads better for Fashion-MNIST).

    Returns
    -------
    VerificationDataset
        images uint8 (N, 1, 28, 28), mirror False.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ValueError(f"MNIST directory {root} does not exist")
    splits = [s for s in (_read_split(root, "train"), _read_split(root, "t10k")) if s is not None]
    if not splits:
        raise ValueError(f"no MNIST files in {root}: expected train-images-idx3-ubyte[.gz] "
                         "and train-labels-idx1-ubyte[.gz]")
    images = np.concatenate([s[0] for s in splits])[:, None]  # (N, 1, H, W)
    labels = np.concatenate([s[1] for s in splits])

    classes = np.unique(labels)
    holdout = np.unique(np.asarray(holdout_classes, dtype=np.int64))
    if holdout.size < 2 or not np.isin(holdout, classes).all():
        raise ValueError(f"holdout_classes must name at least two of the classes "
                         f"{classes.tolist()}, got {list(holdout_classes)}")
    train_classes = np.setdiff1d(classes, holdout)
    if train_classes.size == 0:
        raise ValueError("holdout_classes leaves no class for training")
    if class_names is None:
        class_names = [str(c) for c in range(int(classes.max()) + 1)]
    if len(class_names) <= classes.max():
        raise ValueError(f"class_names has {len(class_names)} names, "
                         f"but the labels go up to {classes.max()}")

    rng = np.random.default_rng(seed)
    is_test = np.isin(labels, holdout)
    test_labels = np.searchsorted(holdout, labels[is_test]).astype(np.int64)
    pairs, pair_same, pair_fold = make_pairs_protocol(test_labels, rng, folds, pairs_per_fold)
    gallery, probes = make_gallery_probes(test_labels, rng)
    return VerificationDataset(
        name=name, train_images=images[~is_test],
        train_labels=np.searchsorted(train_classes, labels[~is_test]).astype(np.int64),
        test_images=images[is_test], test_labels=test_labels, pairs=pairs, pair_same=pair_same,
        pair_fold=pair_fold, gallery=gallery, probes=probes, mirror=False,
        class_names=[class_names[c] for c in train_classes],
        test_class_names=[class_names[c] for c in holdout])
