"""The dataset container shared by every loader, and the LFW-style test protocol.

A face-verification dataset has two disjoint halves:

* the *training* identities, used to learn an embedding with a classifier
  head (AM-Softmax needs class labels);
* the *held-out* identities, never seen in training, used to test whether
  the embedding generalises: pairs of held-out images are compared
  (verification: "same person?") and probes are matched against a gallery
  (identification: "which enrolled person?").

`make_pairs_protocol` and `make_gallery_probes` build the two tests from the
held-out labels; every loader in this package uses them.  `make_open_set_protocol`
builds a third, open-set identification (BLUFR's DIR@FAR), at evaluation time.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..backend import asarray, get_array_module
from ..validation import integer_array, row_indices
from .on_disk import DiskImages

__all__ = [
    "VerificationDataset",
    "default_cache_dir",
    "make_gallery_probes",
    "make_open_set_protocol",
    "make_pairs_protocol",
]


def default_cache_dir() -> Path:
    """Directory for generated datasets.

    ``$AMNP_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/amnp``, else
    ``~/.cache/amnp``.  The directory is not created here.
    """
    if os.environ.get("AMNP_CACHE_DIR"):
        return Path(os.environ["AMNP_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "amnp"
    return Path.home() / ".cache" / "amnp"


def _check_images(name: str, images) -> None:
    if not isinstance(images, (np.ndarray, DiskImages)):
        raise TypeError(f"{name} must be a numpy array or DiskImages, got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise TypeError(f"{name} must have dtype uint8 (pixel values 0..255), got {images.dtype}")
    if images.ndim != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W), got {images.shape}")


@dataclass(repr=False, eq=False)  # arrays make == and the default repr useless
class VerificationDataset:
    """Training identities plus held-out identities with their test protocol.

    Attributes
    ----------
    name : str
        Short name ("glyphs", "folder", "mnist").
    train_images : uint8 array or DiskImages, shape (N, C, H, W)
        Training images, pixel values 0..255; a `DiskImages` (a folder decoded
        into a cache) stays on disk and is read a batch at a time.
    train_labels : int64 array, shape (N,)
        Training class of each image, ``0 .. num_classes - 1``.
    test_images : uint8 array or DiskImages, shape (M, C, H, W)
        Images of the held-out identities (never seen in training).
    test_labels : int64 array, shape (M,)
        Identity of each held-out image, numbered ``0 ..`` on their own.
    pairs : int64 array, shape (P, 2)
        Verification pairs, indices into ``test_images``.
    pair_same : bool array, shape (P,)
        True where both images of the pair show the same identity.
    pair_fold : int64 array, shape (P,)
        Fold of each pair, ``0 .. folds - 1`` (LFW: 10 folds).
    gallery : int64 array, shape (G,)
        Indices into ``test_images``: one enrolled image per identity.
    probes : int64 array, shape (Q,)
        Indices into ``test_images``: the other images of gallery identities.
    mirror : bool
        True when a horizontal mirror shows the same identity (faces), so
        random mirroring is a valid augmentation; False for glyphs and digits.
    class_names : list of str
        Name of each training class (length ``num_classes``).
    test_class_names : list of str
        Name of each held-out identity, indexed by ``test_labels``; may be
        empty when the loader has no names to offer.
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    pairs: np.ndarray
    pair_same: np.ndarray
    pair_fold: np.ndarray
    gallery: np.ndarray
    probes: np.ndarray
    mirror: bool
    class_names: list[str]
    test_class_names: list[str] = field(default_factory=list)

    def __post_init__(self):
        _check_images("train_images", self.train_images)
        _check_images("test_images", self.test_images)
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise ValueError(
                "train_images and test_images must have the same (C, H, W), got "
                f"{self.train_images.shape[1:]} and {self.test_images.shape[1:]}")
        if self.train_images.shape[1] not in (1, 3):
            raise ValueError(f"images must have 1 or 3 channels, got {self.train_images.shape[1]}")

        self.train_labels = integer_array(self.train_labels, "train_labels", 1)
        self.test_labels = integer_array(self.test_labels, "test_labels", 1)
        pairs = np.asarray(self.pairs)
        self.pairs = integer_array(pairs.reshape(0, 2) if pairs.size == 0 else pairs, "pairs", 2)
        self.pair_fold = integer_array(self.pair_fold, "pair_fold", 1)
        self.gallery = integer_array(self.gallery, "gallery", 1)
        self.probes = integer_array(self.probes, "probes", 1)
        self.pair_same = np.asarray(self.pair_same)
        if self.pair_same.size == 0:
            self.pair_same = self.pair_same.astype(bool)
        if self.pair_same.dtype != bool:
            raise TypeError(f"pair_same must be a bool array, got dtype {self.pair_same.dtype}")
        self.class_names = [str(name) for name in self.class_names]
        self.test_class_names = [str(name) for name in self.test_class_names]
        self.mirror = bool(self.mirror)

        n_train, n_test = len(self.train_images), len(self.test_images)
        if len(self.train_labels) != n_train:
            raise ValueError(f"{n_train} train_images but {len(self.train_labels)} train_labels")
        if len(self.test_labels) != n_test:
            raise ValueError(f"{n_test} test_images but {len(self.test_labels)} test_labels")
        row_indices(self.train_labels, self.num_classes, "train_labels", f"the {self.num_classes} class_names")
        if self.test_labels.size and self.test_labels.min() < 0:
            raise ValueError("test_labels must be non-negative identity ids")
        if self.test_class_names and self.test_labels.size \
                and self.test_labels.max() >= len(self.test_class_names):
            raise ValueError(
                f"test_labels go up to {self.test_labels.max()} but there are only "
                f"{len(self.test_class_names)} test_class_names")

        if self.pairs.shape[1] != 2:
            raise ValueError(f"pairs must have shape (P, 2), got {self.pairs.shape}")
        n_pairs = len(self.pairs)
        if self.pair_same.shape != (n_pairs,) or self.pair_fold.shape != (n_pairs,):
            raise ValueError(
                f"{n_pairs} pairs need pair_same and pair_fold of shape ({n_pairs},), got "
                f"{self.pair_same.shape} and {self.pair_fold.shape}")
        row_indices(self.pairs, n_test, "pairs", "test_images")
        if self.pair_fold.size and self.pair_fold.min() < 0:
            raise ValueError("pair_fold must hold non-negative fold numbers")
        # pair_same is redundant with test_labels; a mismatch means a bug in the loader.
        actual_same = self.test_labels[self.pairs[:, 0]] == self.test_labels[self.pairs[:, 1]]
        if np.any(actual_same != self.pair_same):
            bad = int(np.flatnonzero(actual_same != self.pair_same)[0])
            raise ValueError(
                f"pair_same[{bad}] = {bool(self.pair_same[bad])} disagrees with test_labels "
                f"of pair {tuple(int(i) for i in self.pairs[bad])}")

        row_indices(self.gallery, n_test, "gallery", "test_images")
        row_indices(self.probes, n_test, "probes", "test_images")
        if np.intersect1d(self.gallery, self.probes).size:
            raise ValueError("gallery and probes must be disjoint")

    @property
    def num_classes(self) -> int:
        """Number of training classes (identities)."""
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape (C, H, W) of one image."""
        return tuple(int(d) for d in self.train_images.shape[1:])

    def batch_reader(self):
        """The training images as a trainer reads them, a batch at a time: ``read(indices)``
        gives the uint8 images of the rows ``indices`` (a 1-D integer array), and
        ``read_ahead`` says whether reading is slow enough to do ahead of the step that needs
        it.  Images in memory move to the device (the current backend) once, here, and a
        batch only indexes them there; a `DiskImages` reads each batch from its file."""
        if isinstance(self.train_images, DiskImages):
            return self.train_images
        return DeviceImages(self.train_images)

    def __repr__(self) -> str:
        # The default dataclass repr would print every pixel.
        n_test_ids = len(np.unique(self.test_labels))
        return (
            f"VerificationDataset({self.name!r}: {len(self.train_images)} training images of "
            f"{self.num_classes} identities, {len(self.test_images)} held-out images of "
            f"{n_test_ids} identities, image shape {self.image_shape}, "
            f"{int(self.pair_same.sum())} same / {int((~self.pair_same).sum())} different pairs in "
            f"{len(np.unique(self.pair_fold))} folds, gallery {len(self.gallery)}, "
            f"probes {len(self.probes)}, mirror={self.mirror})")


class DeviceImages:
    """uint8 images (N, C, H, W) held on the device, read a batch at a time (see
    `VerificationDataset.batch_reader`): no transfer per batch but the indices'."""

    read_ahead = False

    def __init__(self, images):
        self.images = asarray(images)

    def read(self, indices):
        return self.images[get_array_module(self.images).asarray(indices)]


# ----------------------------------------------------------------------------
# The verification protocol
# ----------------------------------------------------------------------------

def _group_by_label(indices: np.ndarray, labels: np.ndarray):
    """Sort ``indices`` by label.

    Returns ``(order, start, count)``: ``order`` are the indices sorted by
    label, and identity ``k`` (in sorted label order) occupies
    ``order[start[k] : start[k] + count[k]]``.
    """
    order = indices[np.argsort(labels[indices], kind="stable")]
    _, start, count = np.unique(labels[order], return_index=True, return_counts=True)
    return order, start, count


def _unique_pairs(candidates: np.ndarray, size: int) -> np.ndarray:
    """Drop repeated pairs from ``candidates`` (shape (K, 2), each row sorted), keeping first draws."""
    codes = candidates[:, 0] * size + candidates[:, 1]
    _, first = np.unique(codes, return_index=True)
    return candidates[np.sort(first)]


def _draw_distinct(draw, capacity: int, n: int, enumerate_all, size: int, rng) -> np.ndarray:
    """``n`` distinct pairs out of ``capacity`` possible ones.

    When the possible pairs are few, list them all and choose ``n``;
    otherwise draw random candidates with ``draw(k)`` and drop repeats until
    there are enough (fast, because repeats are then rare).
    """
    if capacity <= 4 * n:
        every = enumerate_all()
        return every[rng.choice(len(every), size=n, replace=False)]
    chosen = np.empty((0, 2), dtype=np.int64)
    while len(chosen) < n:
        chosen = _unique_pairs(np.concatenate([chosen, draw(2 * (n - len(chosen)))]), size)
    return chosen[:n]


def _same_pairs(order, start, count, n, rng) -> np.ndarray:
    """``n`` distinct same-identity pairs, as positions into ``order`` (shape (n, 2))."""
    capacity = count * (count - 1) // 2

    def draw(k):
        # Pick identities in proportion to their number of pairs, so every
        # same-identity pair is equally likely, then two different images.
        ident = rng.choice(len(count), size=k, p=capacity / capacity.sum())
        a = rng.integers(count[ident])
        b = rng.integers(count[ident] - 1)
        b = b + (b >= a)  # skip a itself
        return np.sort(np.stack([start[ident] + a, start[ident] + b], axis=1), axis=1)

    def enumerate_all():
        blocks = []
        for s, c in zip(start, count):
            i, j = np.triu_indices(c, k=1)
            blocks.append(np.stack([s + i, s + j], axis=1))
        return np.concatenate(blocks)

    return _draw_distinct(draw, int(capacity.sum()), n, enumerate_all, len(order), rng)


def _different_pairs(order, start, count, n, rng) -> np.ndarray:
    """``n`` distinct different-identity pairs, as positions into ``order`` (shape (n, 2))."""
    m = len(order)
    capacity = (m * m - int((count.astype(np.int64) ** 2).sum())) // 2
    group = np.repeat(np.arange(len(count)), count)  # identity of each position

    def draw(k):
        # First image uniform; second uniform among the images of *other*
        # identities: draw from m - count positions and jump over a's block.
        a = rng.integers(m, size=k)
        ga = group[a]
        b = rng.integers(m - count[ga])
        b = b + np.where(b >= start[ga], count[ga], 0)
        return np.sort(np.stack([a, b], axis=1), axis=1)

    def enumerate_all():
        blocks = []
        for s, c in zip(start, count):
            i, j = np.meshgrid(np.arange(s, s + c), np.arange(s + c, m), indexing="ij")
            blocks.append(np.stack([i.ravel(), j.ravel()], axis=1))
        return np.concatenate(blocks)

    return _draw_distinct(draw, capacity, n, enumerate_all, m, rng)


def _pair_capacity(labels: np.ndarray, indices: np.ndarray) -> tuple[int, int]:
    """(number of possible same pairs, number of possible different pairs) among ``indices``."""
    _, count = np.unique(labels[indices], return_counts=True)
    count = count.astype(np.int64)
    same = int((count * (count - 1) // 2).sum())
    different = int((len(indices) ** 2 - (count ** 2).sum()) // 2)
    return same, different


def _deal_identities(counts, folds, rng) -> np.ndarray:
    """Fold of each identity, balancing the number of same-identity pairs per fold.

    Identities are shuffled (random tie-breaking), sorted by their number of
    pairs, largest first, and each goes to the fold that has the fewest
    pairs so far (greedy balancing).  Identities with one image cannot form a
    same pair; they are dealt round-robin so each fold gets its share of
    different-pair material.
    """
    shuffled = rng.permutation(len(counts))
    pairs_of = counts * (counts - 1) // 2
    fold_of = np.empty(len(counts), dtype=np.int64)
    load = np.zeros(folds, dtype=np.int64)
    multi = shuffled[np.argsort(-pairs_of[shuffled], kind="stable")]
    multi = multi[counts[multi] >= 2]
    for k in multi:  # a loop over identities, not images
        fold = int(np.argmin(load))
        fold_of[k] = fold
        load[fold] += pairs_of[k]
    single = shuffled[counts[shuffled] < 2]
    fold_of[single] = np.arange(len(single)) % folds
    return fold_of


def make_pairs_protocol(labels, rng: np.random.Generator, folds: int = 10,
                        pairs_per_fold: int = 300):
    """Build LFW-style verification folds from held-out identity labels.

    Every fold holds ``pairs_per_fold`` same-identity pairs followed by
    ``pairs_per_fold`` different-identity pairs; no pair appears twice and no
    image is paired with itself.

    Like LFW, the identities are split into ``folds`` disjoint groups and each
    fold draws its pairs from its own group only, so a threshold tuned on nine
    folds is tested on people it has never seen.  When there are too few
    identities for that (some group could not supply ``pairs_per_fold`` pairs
    of either kind, e.g. MNIST's two held-out digits), every fold draws from
    all identities instead; pairs are still never repeated, but an image can
    appear in several folds.  When even the pooled identities cannot supply
    ``folds * pairs_per_fold`` distinct pairs of each kind, ``pairs_per_fold``
    is reduced to what is possible, with a warning.

    Parameters
    ----------
    labels : int array, shape (M,)
        Identity of each held-out image.
    rng : numpy.random.Generator
        Source of randomness (the result is a function of its state).
    folds, pairs_per_fold : int
        Number of folds, and of same (and of different) pairs in each.

    Returns
    -------
    pairs : int64 array, shape (P, 2)
        Image indices, ``pairs[:, 0] < pairs[:, 1]``; P = 2 * folds * pairs_per_fold.
    pair_same : bool array, shape (P,)
    pair_fold : int64 array, shape (P,)

    Raises
    ------
    ValueError
        Fewer than two identities, or no identity with two images.
    """
    labels = integer_array(labels, "labels", 1)
    if folds < 1 or pairs_per_fold < 1:
        raise ValueError(f"folds and pairs_per_fold must be >= 1, got {folds} and {pairs_per_fold}")
    ids, counts = np.unique(labels, return_counts=True)
    if len(ids) < 2:
        raise ValueError(
            f"different-identity pairs need at least two held-out identities, got {len(ids)}")
    if counts.max() < 2:
        raise ValueError(
            f"identity {ids[0]} has only one image; same-identity pairs need two, "
            "and none of the held-out identities has two or more images")

    all_images = np.arange(len(labels))
    fold_of_identity = _deal_identities(counts, folds, rng)
    fold_of_image = fold_of_identity[np.searchsorted(ids, labels)]
    groups = [all_images[fold_of_image == f] for f in range(folds)]
    disjoint = all(min(_pair_capacity(labels, g)) >= pairs_per_fold for g in groups)
    if not disjoint:
        # Pool all identities and draw every fold's pairs at once, so that
        # no pair is used by two folds.
        same_cap, diff_cap = _pair_capacity(labels, all_images)
        possible = min(same_cap, diff_cap) // folds
        if possible < pairs_per_fold:
            if possible == 0:
                raise ValueError(
                    f"the held-out images allow only {same_cap} same-identity and {diff_cap} "
                    f"different-identity pairs, too few for {folds} folds")
            warnings.warn(
                f"the held-out images allow only {same_cap} same-identity and {diff_cap} "
                f"different-identity pairs; using {possible} pairs of each kind per fold "
                f"instead of {pairs_per_fold}", stacklevel=2)
            pairs_per_fold = possible
        groups = [all_images]

    pairs, same, fold = [], [], []
    per_group = pairs_per_fold if disjoint else folds * pairs_per_fold
    for g, indices in enumerate(groups):
        order, start, count = _group_by_label(indices, labels)
        same_pos = _same_pairs(order, start, count, per_group, rng)
        diff_pos = _different_pairs(order, start, count, per_group, rng)
        # In the pooled case, chunk k of each kind becomes fold k.
        fold_ids = np.full(per_group, g) if disjoint else np.arange(per_group) // pairs_per_fold
        for f in np.unique(fold_ids):
            pairs += [order[same_pos[fold_ids == f]], order[diff_pos[fold_ids == f]]]
            same += [np.ones(pairs_per_fold, bool), np.zeros(pairs_per_fold, bool)]
            fold += [np.full(2 * pairs_per_fold, f, dtype=np.int64)]
    pairs = np.sort(np.concatenate(pairs), axis=1).astype(np.int64)
    return pairs, np.concatenate(same), np.concatenate(fold)


def make_gallery_probes(labels, rng: np.random.Generator):
    """Split held-out images into a gallery and probes for closed-set identification.

    For every identity with at least two images, one image chosen at random
    is enrolled in the gallery and the others become probes.  Identities with
    a single image are left out (a probe needs a *different* enrolled image).

    Parameters
    ----------
    labels : int array, shape (M,)
    rng : numpy.random.Generator

    Returns
    -------
    gallery : int64 array, shape (G,)
        One index per identity with >= 2 images, sorted.
    probes : int64 array, shape (Q,)
        The remaining images of those identities, sorted.
    """
    labels = integer_array(labels, "labels", 1)
    # A random permutation followed by a stable sort by label puts each
    # identity's images together in random order: the first one is enrolled.
    order = rng.permutation(len(labels))
    order = order[np.argsort(labels[order], kind="stable")]
    _, first, counts = np.unique(labels[order], return_index=True, return_counts=True)
    enrolled = np.zeros(len(labels), dtype=bool)
    enrolled[first] = True
    has_probes = np.repeat(counts >= 2, counts)
    gallery = order[enrolled & has_probes]
    probes = order[~enrolled & has_probes]
    return np.sort(gallery).astype(np.int64), np.sort(probes).astype(np.int64)


def make_open_set_protocol(labels, rng: np.random.Generator, gallery_fraction: float = 1 / 3,
                           enrolled_per_identity: int = 1):
    """Split held-out images into a gallery and genuine and impostor probes (BLUFR).

    A third (``gallery_fraction``) of the identities, drawn at random among
    those with two or more images, are enrolled: ``enrolled_per_identity``
    random images each (at most all but one) go to the gallery, their other
    images are genuine probes.  Every image of the other identities is an
    impostor probe: a person the system has never enrolled, who should be
    rejected.  At least one identity is enrolled and at least one is not.

    Parameters
    ----------
    labels : int array, shape (M,)
    rng : numpy.random.Generator
    gallery_fraction : float in (0, 1)
    enrolled_per_identity : int >= 1

    Returns
    -------
    gallery : int64 array, shape (G,), sorted
    genuine : int64 array, shape (Q1,), sorted: images of enrolled identities
    impostors : int64 array, shape (Q2,), sorted: images of identities not enrolled

    Raises
    ------
    ValueError
        Fewer than two identities, or none with two images.
    """
    labels = integer_array(labels, "labels", 1)
    if not 0 < gallery_fraction < 1:
        raise ValueError(f"gallery_fraction must be between 0 and 1, got {gallery_fraction}")
    if int(enrolled_per_identity) != enrolled_per_identity or enrolled_per_identity < 1:
        raise ValueError(f"enrolled_per_identity must be an integer >= 1, got {enrolled_per_identity}")
    ids, counts = np.unique(labels, return_counts=True)
    eligible = ids[counts >= 2]
    if len(ids) < 2 or eligible.size == 0:
        raise ValueError(
            f"open-set identification needs an enrolled identity with two images (one to enrol, "
            f"one to probe) and an identity that is not enrolled; the {len(labels)} held-out "
            f"images have {len(ids)} identities, {eligible.size} of them with two images")
    n_enrolled = min(max(1, round(gallery_fraction * len(ids))), eligible.size, len(ids) - 1)
    enrolled_ids = rng.choice(eligible, size=n_enrolled, replace=False)
    # As in make_gallery_probes: a permutation, then a stable sort by label, puts each
    # identity's images together in random order; the first ones are enrolled.
    order = rng.permutation(len(labels))
    order = order[np.argsort(labels[order], kind="stable")]
    _, first, per_identity = np.unique(labels[order], return_index=True, return_counts=True)
    rank = np.arange(len(order)) - np.repeat(first, per_identity)
    is_enrolled = np.isin(labels[order], enrolled_ids)
    in_gallery = is_enrolled & (rank < np.minimum(enrolled_per_identity,
                                                  np.repeat(per_identity, per_identity) - 1))
    gallery = np.sort(order[in_gallery])
    genuine = np.sort(order[is_enrolled & ~in_gallery])
    impostors = np.sort(order[~is_enrolled])
    return gallery.astype(np.int64), genuine.astype(np.int64), impostors.astype(np.int64)
