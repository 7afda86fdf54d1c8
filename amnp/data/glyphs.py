"""Glyph identities: the embedded default dataset, a stand-in for faces.

No face dataset can be downloaded here, so the default dataset is built from
the fonts that ship inside matplotlib.  The analogy with faces:

* an **identity** is a character ("A", "ж", "§", ...);
* a **photo** of it is the character drawn in one of 16 font faces (DejaVu
  Sans, Sans Mono and Serif in regular, bold, oblique and bold-oblique, and
  STIX General in regular, italic, bold and bold-italic) under random
  "capture variation": rotation, scale, shear, translation, stroke weight,
  blur, contrast, brightness and sensor noise.

So the network must learn what makes an "A" an "A" across typefaces, and the
test asks whether that generalises to characters it has never seen, just as
a face model is tested on people who were not in its training set.

Images are 32x32 grayscale uint8 with **bright ink on a dark background**
(like MNIST), shape (N, 1, 32, 32).  Glyphs are not mirror-symmetric ("b"
mirrored is "d"), so ``mirror=False``.

Identities.  The candidates are the printable, non-whitespace characters
present in all 16 faces.  Each is rendered once per face: at a common scale
per face (capital "H" is ``CAP_HEIGHT`` pixels tall, so "o" stays smaller
than "O"), shrunk only when it would not fit, and centred by its bounding box
on a ``TEMPLATE_SIZE`` square canvas.  Characters that render empty are
dropped.  Look-alikes are merged into one identity: two characters are merged
when their renderings differ by at most ``MERGE_RMS`` (root-mean-square, in
0..1 units) in at least ``MERGE_MIN_FACES`` of the 16 faces.  That merges
exact duplicates (Ð U+00D0 and Đ U+0110, Latin A and Greek Alpha, ...) and
also Latin/Cyrillic/Greek homoglyphs that only differ in a minority of the
faces (Latin "a" and Cyrillic "а"): left apart, they would be identical twins
that no model could tell apart.  A merged identity's photos use all of its
characters' renderings, and its name lists them all ("AΑА").  Centring by
the bounding box drops a glyph's position on the line, so a few marks ("." and
"·", "!" and "ǃ") look alike in some faces but not in most; they stay apart,
as hard cases, like look-alike people.

Split.  The identities are shuffled (seeded) and split into training and
held-out identities (a quarter by default).  The held-out identities get the
LFW-style protocol of `make_pairs_protocol`: with about 170 held-out
identities of 20 images each, the 10 folds use disjoint identities, as in
LFW.
"""
from __future__ import annotations

import functools
import os
import tempfile
import warnings
from pathlib import Path
from typing import NamedTuple

import matplotlib
import numpy as np
from matplotlib import ft2font
from tqdm.auto import tqdm

from .dataset import VerificationDataset, default_cache_dir, make_gallery_probes, make_pairs_protocol

__all__ = ["GlyphIdentities", "glyph_faces", "glyph_identities", "load_glyphs"]

FORMAT_VERSION = 1    # bump when the generated data changes, to invalidate old caches
IMAGE_SIZE = 32       # side of the output images
TEMPLATE_SIZE = 40    # side of the clean renderings; the output view spans all of it
CAP_HEIGHT = 24       # height of "H" on the template, in pixels
MAX_EXTENT = 34       # larger glyphs are shrunk to fit this square
MERGE_RMS = 0.025     # renderings closer than this (RMS, 0..1 units) look the same ...
MERGE_MIN_FACES = 8   # ... and characters that look the same in this many faces are merged
BATCH = 1024          # images generated per vectorised step

_FACE_FILES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBol.ttf", "STIXGeneralBolIta.ttf",
)

# Unhinted outlines scale linearly, so the same glyph renders consistently.
# (matplotlib >= 3.10 has the LoadFlags enum; older versions an int constant.)
_NO_HINTING = (ft2font.LoadFlags.NO_HINTING if hasattr(ft2font, "LoadFlags")
               else ft2font.LOAD_NO_HINTING)


def glyph_faces() -> list[str]:
    """Paths of the 16 font files used, from matplotlib's bundled fonts."""
    directory = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    paths = [directory / name for name in _FACE_FILES]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"matplotlib's bundled fonts are missing: {', '.join(missing)}")
    return [str(p) for p in paths]


def _render(font: ft2font.FT2Font, char: str, size_pt: float) -> np.ndarray:
    """Render one character; returns the uint8 bitmap cropped to its ink (maybe 0x0)."""
    font.set_size(size_pt, 72)  # at 72 dpi, 1 pt = 1 pixel
    font.set_text(char, flags=_NO_HINTING)
    font.draw_glyphs_to_bitmap(antialiased=True)
    bitmap = np.asarray(font.get_image())
    rows = np.flatnonzero(bitmap.any(axis=1))
    cols = np.flatnonzero(bitmap.any(axis=0))
    if rows.size == 0:
        return np.zeros((0, 0), dtype=np.uint8)
    return bitmap[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def _render_face(font: ft2font.FT2Font, chars: list[str]) -> np.ndarray:
    """Render ``chars`` in one face, centred on the template canvas.

    Returns uint8 (len(chars), TEMPLATE_SIZE, TEMPLATE_SIZE); an all-zero
    template means the character rendered empty.
    """
    reference = 100.0
    size = reference * CAP_HEIGHT / _render(font, "H", reference).shape[0]
    templates = np.zeros((len(chars), TEMPLATE_SIZE, TEMPLATE_SIZE), dtype=np.uint8)
    for i, char in enumerate(chars):
        glyph, glyph_size = _render(font, char, size), size
        while max(glyph.shape) > MAX_EXTENT:
            # Shrink to fit; pixel rounding can need a second, smaller step.
            glyph_size *= min(0.97, MAX_EXTENT / max(glyph.shape))
            glyph = _render(font, char, glyph_size)
        h, w = glyph.shape
        top, left = (TEMPLATE_SIZE - h) // 2, (TEMPLATE_SIZE - w) // 2
        templates[i, top:top + h, left:left + w] = glyph
    return templates


def _merge_lookalikes(templates: np.ndarray) -> np.ndarray:
    """Group characters that look the same in at least MERGE_MIN_FACES faces.

    Parameters
    ----------
    templates : uint8 array, shape (F, N, T, T)

    Returns
    -------
    int64 array, shape (N,): group of each character, numbered in order of
    the group's first character.
    """
    faces, n, t, _ = templates.shape
    x = templates.reshape(faces, n, t * t).astype(np.float32) / 255
    threshold = MERGE_RMS ** 2 * t * t  # on the sum of squared differences

    # Exact distances between all N^2 pairs in 16 faces cost ~13 G
    # multiply-adds, so first find candidates on 4x4 block sums (T is a
    # multiple of 4): by Cauchy-Schwarz, |sum_block(a - b)|^2 <= 16 *
    # sum_block((a - b)^2), so the block distance / 16 never exceeds the exact
    # distance and no true match is lost (+1e-3 absorbs float32 rounding).
    block = 4
    pooled = templates.reshape(faces, n, t // block, block, t // block, block)
    pooled = pooled.sum(axis=(3, 5), dtype=np.float32).reshape(faces, n, -1) / 255
    votes = np.zeros((n, n), dtype=np.int16)
    for p in pooled:
        sq = (p * p).sum(axis=1)
        votes += (sq[:, None] + sq[None, :] - 2 * p @ p.T) / block ** 2 <= threshold + 1e-3
    a, b = np.nonzero(np.triu(votes >= MERGE_MIN_FACES, k=1))

    # Exact check of the candidates, then union-find over the merged pairs.
    exact = ((x[:, a] - x[:, b]) ** 2).sum(axis=2)  # (F, candidates)
    matched = (exact <= threshold).sum(axis=0) >= MERGE_MIN_FACES
    parent = np.arange(n)

    def root(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for i, j in zip(a[matched], b[matched]):
        ri, rj = root(i), root(j)
        parent[max(ri, rj)] = min(ri, rj)
    roots = np.array([root(i) for i in range(n)])
    return np.unique(roots, return_inverse=True)[1].astype(np.int64)


class GlyphIdentities(NamedTuple):
    """The clean renderings behind the glyph dataset.

    templates : uint8 array, shape (F, N, T, T)
        Character ``n`` in face ``f``, on a TEMPLATE_SIZE canvas (ink = 255).
    characters : list of str, length N
        The characters, grouped by identity (identity order, then code point).
    identity : int64 array, shape (N,)
        Identity of each character, sorted, ``0 .. K - 1``.
    names : list of str, length K
        Name of each identity: its characters, concatenated ("ÐĐ").
    """

    templates: np.ndarray
    characters: list
    identity: np.ndarray
    names: list


@functools.lru_cache(maxsize=1)
def glyph_identities() -> GlyphIdentities:
    """Render every candidate character in every face and merge look-alikes.

    Computed once per process (1-2 s); the arrays are read-only.
    """
    fonts = [ft2font.FT2Font(path) for path in glyph_faces()]
    common = set.intersection(*(set(font.get_charmap()) for font in fonts))
    chars = [chr(c) for c in sorted(common) if chr(c).isprintable() and not chr(c).isspace()]
    templates = np.stack([_render_face(font, chars) for font in fonts])

    # A sample draws a random face, so the glyph must have ink in all of them.
    visible = (templates.max(axis=(2, 3)) >= 64).all(axis=0)
    templates, chars = templates[:, visible], [c for c, v in zip(chars, visible) if v]

    identity = _merge_lookalikes(templates)
    order = np.argsort(identity, kind="stable")
    templates, identity = templates[:, order], identity[order]
    chars = [chars[i] for i in order]
    names = ["".join(chars[i] for i in np.flatnonzero(identity == k))
             for k in range(identity.max() + 1)]
    templates.setflags(write=False)
    identity.setflags(write=False)
    return GlyphIdentities(templates, chars, identity, names)


# ----------------------------------------------------------------------------
# Capture variation, vectorised over a batch
# ----------------------------------------------------------------------------

def _filter3(x: np.ndarray, reduce) -> np.ndarray:
    """3x3 max or min filter (``reduce`` = np.maximum / np.minimum) of (B, H, W), zero border."""
    p = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    rows = reduce(reduce(p[:, :-2], p[:, 1:-1]), p[:, 2:])                    # (B, H, W + 2)
    return reduce(reduce(rows[:, :, :-2], rows[:, :, 1:-1]), rows[:, :, 2:])  # (B, H, W)


def _affine_sample(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random affine view of each template, bilinear interpolation.

    Parameters
    ----------
    clean : float32 array, shape (B, T, T)

    Returns
    -------
    float32 array, shape (B, S, S), S = IMAGE_SIZE.
    """
    b, t = clean.shape[0], clean.shape[1]
    s = IMAGE_SIZE
    angle = np.deg2rad(rng.uniform(-12, 12, b))
    scale = rng.uniform(0.85, 1.15, b)
    shear = rng.uniform(-0.15, 0.15, b)
    shift = rng.uniform(-2, 2, (b, 2)).astype(np.float32)  # output pixels, (x, y)

    # The forward map is  out = scale * R(angle) @ Shear @ src + shift.  To
    # fill each output pixel we need the inverse,
    #   src = Shear^-1 @ R(-angle) @ (out - shift) / scale,
    # evaluated on the output grid, in coordinates centred on the image.
    cos, sin = np.cos(angle), np.sin(angle)
    rot_inv = np.stack([np.stack([cos, sin], -1), np.stack([-sin, cos], -1)], -2)  # (B, 2, 2)
    shear_inv = np.zeros((b, 2, 2))
    shear_inv[:, 0, 0] = shear_inv[:, 1, 1] = 1
    shear_inv[:, 0, 1] = -shear
    inverse = shear_inv @ rot_inv / scale[:, None, None] * (t / s)  # output px -> template px

    centred = (np.arange(s) - (s - 1) / 2).astype(np.float32)
    gx = centred[None, None, :] - shift[:, None, None, 0]  # (B, 1, S)
    gy = centred[None, :, None] - shift[:, None, None, 1]  # (B, S, 1)
    m = inverse.astype(np.float32)[:, :, :, None, None]    # (B, 2, 2, 1, 1)
    x = m[:, 0, 0] * gx + m[:, 0, 1] * gy + (t - 1) / 2    # (B, S, S)
    y = m[:, 1, 0] * gx + m[:, 1, 1] * gy + (t - 1) / 2

    # Bilinear interpolation: a weighted sum of the 4 neighbouring pixels.
    # The template gets a zero border (1 pixel before, 2 after) and the
    # coordinates are clipped into it, so outside the template reads 0
    # without any masking; the whole batch is gathered at once through flat
    # indices into the padded batch.
    padded = np.pad(clean, ((0, 0), (1, 2), (1, 2)))
    side = t + 3
    x = np.clip(x, -1, t) + 1
    y = np.clip(y, -1, t) + 1
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    flat = (np.arange(b)[:, None, None] * side * side
            + y0.astype(np.intp) * side + x0.astype(np.intp))
    pixels = padded.reshape(-1)
    top = pixels[flat] * (1 - fx) + pixels[flat + 1] * fx
    bottom = pixels[flat + side] * (1 - fx) + pixels[flat + side + 1] * fx
    return top * (1 - fy) + bottom * fy


def _gaussian_blur(x: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Blur each image of (B, H, W) with its own sigma (a 5-tap separable Gaussian)."""
    h, w = x.shape[1:]
    taps = np.arange(-2, 3)
    # sigma -> 0 gives a delta kernel (no blur); the floor avoids dividing by 0.
    kernel = np.exp(-taps ** 2 / (2 * np.maximum(sigma, 0.05)[:, None] ** 2)).astype(np.float32)
    kernel /= kernel.sum(axis=1, keepdims=True)  # (B, 5)
    p = np.pad(x, ((0, 0), (2, 2), (2, 2)))
    rows = sum(kernel[:, k, None, None] * p[:, k:k + h, :] for k in range(5))   # (B, H, W + 4)
    return sum(kernel[:, k, None, None] * rows[:, :, k:k + w] for k in range(5))


def _capture_variation(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Turn clean templates into "photos".

    Parameters
    ----------
    clean : float32 array, shape (B, T, T), ink 1 on background 0

    Returns
    -------
    uint8 array, shape (B, 1, S, S), bright ink on a dark background.
    """
    b = clean.shape[0]
    # Stroke weight: w > 0 thickens towards a 3x3 dilation; w < 0 thins the
    # anti-aliased edges with a gamma > 1 (an erosion would erase the thin
    # strokes of the light faces).
    weight = rng.uniform(-1, 1, (b, 1, 1)).astype(np.float32)
    thick = clean + np.maximum(weight, 0) * (_filter3(clean, np.maximum) - clean)
    clean = np.where(weight > 0, thick, clean ** (1 + 2 * np.abs(weight)))

    image = _affine_sample(clean, rng)
    image = _gaussian_blur(image, rng.uniform(0, 1, b))

    background = rng.uniform(0, 0.25, (b, 1, 1)).astype(np.float32)
    ink = rng.uniform(0.6, 1, (b, 1, 1)).astype(np.float32)
    image = background + (ink - background) * image
    image += rng.uniform(0, 0.08, (b, 1, 1)).astype(np.float32) * rng.standard_normal(
        image.shape, dtype=np.float32)
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)[:, None]


def _photograph(glyphs: GlyphIdentities, identities: np.ndarray, per_class: int,
                rng: np.random.Generator, progress: bool, desc: str):
    """``per_class`` random photos of each of ``identities``, in shuffled order.

    Returns (images uint8 (n, 1, S, S), labels int64 (n,)) with labels
    ``0 .. len(identities) - 1`` indexing ``identities``.
    """
    labels = rng.permutation(np.repeat(np.arange(len(identities), dtype=np.int64), per_class))
    n = len(labels)
    _, first, count = np.unique(glyphs.identity, return_index=True, return_counts=True)
    wanted = identities[labels]
    # A random face, and a random member character of a merged identity.
    char = first[wanted] + (rng.random(n) * count[wanted]).astype(np.int64)
    face = rng.integers(glyphs.templates.shape[0], size=n)

    images = np.empty((n, 1, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for lo in tqdm(range(0, n, BATCH), desc=desc, disable=not progress, leave=False):
        hi = min(lo + BATCH, n)
        clean = glyphs.templates[face[lo:hi], char[lo:hi]].astype(np.float32) / 255
        images[lo:hi] = _capture_variation(clean, rng)
    return images, labels


def _generate(seed, train_per_class, test_per_class, num_test_identities, progress):
    glyphs = glyph_identities()
    k = len(glyphs.names)
    n_test = round(k / 4) if num_test_identities is None else num_test_identities
    if not 2 <= n_test <= k - 1:
        raise ValueError(f"num_test_identities must be in 2..{k - 1} (there are {k} identities), "
                         f"got {n_test}")

    # Independent streams: changing train_per_class does not change the
    # split, the held-out images or the protocol.
    split_rng, train_rng, test_rng, protocol_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4))
    shuffled = split_rng.permutation(k)
    test_ids, train_ids = np.sort(shuffled[:n_test]), np.sort(shuffled[n_test:])

    train_images, train_labels = _photograph(glyphs, train_ids, train_per_class, train_rng,
                                             progress, "glyphs: training images")
    test_images, test_labels = _photograph(glyphs, test_ids, test_per_class, test_rng,
                                           progress, "glyphs: held-out images")
    pairs, pair_same, pair_fold = make_pairs_protocol(test_labels, protocol_rng)
    gallery, probes = make_gallery_probes(test_labels, protocol_rng)
    return VerificationDataset(
        name="glyphs", train_images=train_images, train_labels=train_labels,
        test_images=test_images, test_labels=test_labels,
        pairs=pairs, pair_same=pair_same, pair_fold=pair_fold, gallery=gallery, probes=probes,
        mirror=False, class_names=[glyphs.names[i] for i in train_ids],
        test_class_names=[glyphs.names[i] for i in test_ids])


_ARRAYS = ("train_images", "train_labels", "test_images", "test_labels", "pairs", "pair_same",
           "pair_fold", "gallery", "probes")


def _read_cache(path: Path) -> VerificationDataset:
    with np.load(path, allow_pickle=False) as stored:
        arrays = {key: stored[key] for key in _ARRAYS}
        names = stored["class_names"].tolist()
        test_names = stored["test_class_names"].tolist()
    return VerificationDataset(name="glyphs", mirror=False, class_names=names,
                               test_class_names=test_names, **arrays)


def _write_cache(dataset: VerificationDataset, path: Path) -> None:
    """Save atomically: a reader never sees a half-written file."""
    arrays = {key: getattr(dataset, key) for key in _ARRAYS}
    arrays["class_names"] = np.array(dataset.class_names, dtype=str)
    arrays["test_class_names"] = np.array(dataset.test_class_names, dtype=str)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except OSError as error:
        warnings.warn(f"could not write the glyph dataset cache {path}: {error}", stacklevel=3)
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def load_glyphs(seed: int = 0, train_per_class: int = 40, test_per_class: int = 20,
                num_test_identities: int | None = None, cache_dir=None,
                progress: bool = True) -> VerificationDataset:
    """The glyph-identity verification dataset (see the module docstring).

    Parameters
    ----------
    seed : int
        Everything (identity split, images, pairs) is a function of the seed.
    train_per_class : int
        Images per training identity.
    test_per_class : int
        Images per held-out identity (>= 2, for same-identity pairs).
    num_test_identities : int, optional
        Number of held-out identities; default a quarter of all identities.
    cache_dir : path, optional
        Where the generated arrays are cached as one .npz file; default
        `default_cache_dir()`.  A corrupt cache file is regenerated.
    progress : bool
        Show a progress bar while generating.

    Returns
    -------
    VerificationDataset
        name "glyphs", images uint8 (N, 1, 32, 32), mirror False,
        10 folds x (300 same + 300 different) pairs.
    """
    for arg, value, low in (("train_per_class", train_per_class, 1),
                            ("test_per_class", test_per_class, 2)):
        if int(value) != value or value < low:
            raise ValueError(f"{arg} must be an integer >= {low}, got {value!r}")
    held_out = "auto" if num_test_identities is None else int(num_test_identities)
    path = Path(cache_dir if cache_dir is not None else default_cache_dir()).expanduser() / (
        f"glyphs-v{FORMAT_VERSION}-seed{seed}-train{train_per_class}-test{test_per_class}"
        f"-heldout{held_out}-mpl{matplotlib.__version__}.npz")
    if path.exists():
        try:
            return _read_cache(path)
        except Exception as error:  # noqa: BLE001 - any unreadable cache is rebuilt
            warnings.warn(f"the glyph dataset cache {path} is unreadable ({error!r}); "
                          "regenerating it", stacklevel=2)
    dataset = _generate(seed, int(train_per_class), int(test_per_class), num_test_identities,
                        progress)
    _write_cache(dataset, path)
    return dataset
