"""Tests for amnp.data: the container, the protocol, glyphs, image folders, LFW pairs, MNIST."""
import gzip
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from amnp.data import (
    VerificationDataset,
    default_cache_dir,
    glyph_faces,
    glyph_identities,
    load_folder_dataset,
    load_glyphs,
    load_image_folder,
    load_lfw_pairs,
    load_mnist_dataset,
    make_gallery_probes,
    make_pairs_protocol,
    read_idx,
    resize_bilinear,
)
from amnp.data import glyphs as glyphs_module

# ----------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------


def check_protocol(labels, pairs, same, fold):
    """Invariants every pair protocol must satisfy."""
    labels = np.asarray(labels)
    assert pairs.dtype == np.int64 and fold.dtype == np.int64 and same.dtype == bool
    assert np.all(pairs[:, 0] < pairs[:, 1]), "no self-pairs, canonical order"
    assert np.array_equal(labels[pairs[:, 0]] == labels[pairs[:, 1]], same)
    codes = pairs[:, 0] * len(labels) + pairs[:, 1]
    assert len(np.unique(codes)) == len(pairs), "no pair twice"
    for f in np.unique(fold):
        assert same[fold == f].sum() == (~same[fold == f]).sum(), "balanced folds"


def small_dataset(**changes):
    rng = np.random.default_rng(0)
    test_labels = np.array([0, 0, 1, 1, 2])
    fields = dict(
        name="toy",
        train_images=rng.integers(0, 256, (6, 1, 4, 4), dtype=np.uint8),
        train_labels=np.array([0, 1, 2, 0, 1, 2]),
        test_images=rng.integers(0, 256, (5, 1, 4, 4), dtype=np.uint8),
        test_labels=test_labels,
        pairs=np.array([[0, 1], [1, 2], [2, 3], [3, 4]]),
        pair_same=np.array([True, False, True, False]),
        pair_fold=np.array([0, 0, 1, 1]),
        gallery=np.array([0, 2]),
        probes=np.array([1, 3]),
        mirror=False,
        class_names=["a", "b", "c"],
    )
    fields.update(changes)
    return VerificationDataset(**fields)


# ----------------------------------------------------------------------------
# Container
# ----------------------------------------------------------------------------


def test_container_properties_and_repr():
    ds = small_dataset()
    assert ds.num_classes == 3
    assert ds.image_shape == (1, 4, 4)
    assert ds.train_labels.dtype == np.int64
    assert "6 training images of 3 identities" in repr(ds)


@pytest.mark.parametrize("changes, message", [
    (dict(train_images=np.zeros((6, 4, 4), np.uint8)), r"\(N, C, H, W\)"),
    (dict(test_images=np.zeros((5, 1, 5, 5), np.uint8)), "same"),
    (dict(train_labels=np.array([0, 1, 2, 0, 1, 3])), "train_labels"),
    (dict(train_labels=np.array([0, 1, 2])), "6 train_images but 3 train_labels"),
    (dict(pairs=np.array([[0, 1], [1, 2], [2, 3], [3, 5]])), "pairs must index"),
    (dict(pair_same=np.array([True, True, True, False])), "disagrees"),
    (dict(pair_fold=np.array([0, 0, 1])), "pair_fold"),
    (dict(gallery=np.array([0, 1]), probes=np.array([1, 3])), "disjoint"),
    (dict(probes=np.array([9])), "probes"),
])
def test_container_rejects_inconsistent_fields(changes, message):
    with pytest.raises(ValueError, match=message):
        small_dataset(**changes)


@pytest.mark.parametrize("changes, message", [
    (dict(train_images=np.zeros((6, 1, 4, 4), np.float32)), "uint8"),
    (dict(train_labels=np.zeros(6)), "integers"),
    (dict(pair_same=np.zeros(4, np.int64)), "bool array"),
    (dict(gallery=np.array([0.0, 1.0])), "integer"),
])
def test_container_refuses_a_wrong_dtype_with_a_type_error(changes, message):
    with pytest.raises(TypeError, match=message):
        small_dataset(**changes)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("AMNP_CACHE_DIR", str(tmp_path / "a"))
    assert default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("AMNP_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "amnp"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "amnp"


# ----------------------------------------------------------------------------
# Protocol
# ----------------------------------------------------------------------------


def test_protocol_disjoint_folds_like_lfw():
    rng = np.random.default_rng(1)
    labels = rng.permutation(np.repeat(np.arange(60), 8))
    pairs, same, fold = make_pairs_protocol(labels, rng, folds=10, pairs_per_fold=20)
    check_protocol(labels, pairs, same, fold)
    assert np.array_equal(np.bincount(fold), np.full(10, 40))
    identities = [set(labels[pairs[fold == f]].ravel()) for f in range(10)]
    for f in range(10):
        for g in range(f):
            assert not identities[f] & identities[g], "each fold has its own identities"


def test_protocol_few_identities_share_folds():
    # Two identities with many images (the MNIST situation).
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1], 50)
    pairs, same, fold = make_pairs_protocol(labels, rng, folds=10, pairs_per_fold=30)
    check_protocol(labels, pairs, same, fold)
    assert np.array_equal(np.bincount(fold), np.full(10, 60))


def test_protocol_reduces_with_warning_when_too_few_pairs():
    labels = np.array([0, 0, 0, 1, 2])  # 3 same pairs possible
    with pytest.warns(UserWarning, match="using 1 pairs"):
        pairs, same, fold = make_pairs_protocol(labels, np.random.default_rng(0), folds=3)
    check_protocol(labels, pairs, same, fold)
    assert len(pairs) == 6


def test_protocol_needs_an_identity_with_two_images():
    with pytest.raises(ValueError, match="has only one image; same-identity pairs need two"):
        make_pairs_protocol([0, 1, 2, 3], np.random.default_rng(0))
    with pytest.raises(ValueError, match="at least two held-out identities"):
        make_pairs_protocol([5, 5, 5], np.random.default_rng(0))


def test_protocol_labels_must_be_one_dimensional_integers():
    with pytest.raises(ValueError, match=r"labels must have 1 dimension\(s\), got shape \(2, 2\)"):
        make_pairs_protocol([[0, 0], [1, 1]], np.random.default_rng(0))
    with pytest.raises(TypeError, match="labels must hold integers, got dtype float64"):
        make_pairs_protocol([0.0, 0.0, 1.0, 1.0], np.random.default_rng(0))


@given(st.lists(st.integers(0, 6), min_size=2, max_size=60), st.integers(1, 4),
       st.integers(1, 12), st.integers(0, 2 ** 32 - 1))
def test_protocol_invariants_on_random_labels(labels, folds, per_fold, seed):
    labels = np.array(labels)
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            pairs, same, fold = make_pairs_protocol(labels, rng, folds, per_fold)
        except ValueError:
            # Refused only when fewer than `folds` pairs of some kind exist.
            _, counts = np.unique(labels, return_counts=True)
            same_possible = (counts * (counts - 1) // 2).sum()
            different_possible = (len(labels) ** 2 - (counts ** 2).sum()) // 2
            assert min(same_possible, different_possible) < folds
            return
    check_protocol(labels, pairs, same, fold)
    assert set(np.unique(fold)) == set(range(folds))


def test_gallery_probes():
    labels = np.array([3, 3, 3, 7, 9, 9])
    gallery, probes = make_gallery_probes(labels, np.random.default_rng(0))
    assert sorted(labels[gallery]) == [3, 9], "one image per identity with >= 2 images"
    assert len(probes) == 3
    assert not set(gallery) & set(probes)
    assert set(gallery) | set(probes) == {0, 1, 2, 4, 5}, "the single-image identity is left out"
    enrolled = [make_gallery_probes(labels, np.random.default_rng(s))[0][0] for s in range(20)]
    assert len(set(enrolled)) > 1, "the enrolled image is random"


# ----------------------------------------------------------------------------
# Glyphs
# ----------------------------------------------------------------------------


def test_glyph_faces():
    faces = glyph_faces()
    assert len(faces) == 16
    names = [os.path.basename(f) for f in faces]
    assert not any("Display" in n or "NonUni" in n or "STIXSiz" in n for n in names)
    assert all(os.path.isfile(f) for f in faces)


def test_glyph_identities_merge_lookalikes():
    glyphs = glyph_identities()
    f, n, t, _ = glyphs.templates.shape
    assert f == 16 and n == len(glyphs.characters) == len(glyphs.identity)
    assert len(glyphs.names) == glyphs.identity.max() + 1 > 600
    assert glyphs.templates.max(axis=(2, 3)).min() >= 64, "no empty rendering"
    assert all(c.isprintable() and not c.isspace() for c in glyphs.characters)

    def identity_of(char):
        return glyphs.identity[glyphs.characters.index(char)]

    assert identity_of("\u00d0") == identity_of("\u0110")  # Ð, Đ
    assert identity_of("A") == identity_of("\u0391")       # Latin A, Greek Alpha
    assert identity_of("A") != identity_of("B")
    assert identity_of("b") != identity_of("d")
    assert "\u00d0\u0110" in glyphs.names


@pytest.fixture(scope="module")
def tiny_glyphs(tmp_path_factory):
    cache = tmp_path_factory.mktemp("glyph-cache")
    return load_glyphs(seed=3, train_per_class=2, test_per_class=11, num_test_identities=60,
                       cache_dir=cache, progress=False), cache


def test_glyphs_small(tiny_glyphs):
    ds, _ = tiny_glyphs
    k = len(glyph_identities().names)
    assert ds.name == "glyphs" and ds.mirror is False
    assert ds.train_images.shape == ((k - 60) * 2, 1, 32, 32)
    assert ds.test_images.shape == (60 * 11, 1, 32, 32)
    assert ds.train_images.dtype == np.uint8
    assert np.array_equal(np.bincount(ds.train_labels), np.full(k - 60, 2))
    assert np.array_equal(np.bincount(ds.test_labels), np.full(60, 11))
    assert ds.num_classes == k - 60 and len(ds.test_class_names) == 60
    # Train and held-out identities are disjoint and together cover everything.
    assert not set(ds.class_names) & set(ds.test_class_names)
    assert set(ds.class_names) | set(ds.test_class_names) == set(glyph_identities().names)
    # Bright ink on a dark background: the border is darker than the brightest pixels.
    images = ds.train_images[:, 0].astype(float)
    border = np.concatenate([images[:, 0], images[:, -1]], axis=1).mean(axis=1)
    assert np.mean(border < images.max(axis=(1, 2)) - 60) > 0.95
    check_protocol(ds.test_labels, ds.pairs, ds.pair_same, ds.pair_fold)


def test_glyphs_deterministic_from_seed(tiny_glyphs, tmp_path):
    ds, _ = tiny_glyphs
    again = load_glyphs(seed=3, train_per_class=2, test_per_class=11, num_test_identities=60,
                        cache_dir=tmp_path / "fresh", progress=False)
    for key in ("train_images", "train_labels", "test_images", "test_labels", "pairs",
                "pair_same", "pair_fold", "gallery", "probes"):
        assert np.array_equal(getattr(ds, key), getattr(again, key)), key
    assert ds.class_names == again.class_names

    other = load_glyphs(seed=4, train_per_class=2, test_per_class=11, num_test_identities=60,
                        cache_dir=tmp_path / "fresh", progress=False)
    assert not np.array_equal(ds.train_images, other.train_images)
    assert ds.class_names != other.class_names, "the identity split depends on the seed"


def test_glyph_cache_round_trip_and_corrupt_file(tiny_glyphs, monkeypatch):
    ds, cache = tiny_glyphs
    (path,) = cache.glob("glyphs-*.npz")
    assert "seed3" in path.name and "v1" in path.name
    assert not list(cache.glob("*.tmp")), "no temporary file left behind"

    def fail(*args):
        raise AssertionError("the cache should have been used")

    with monkeypatch.context() as m:
        m.setattr(glyphs_module, "_generate", fail)
        cached = load_glyphs(seed=3, train_per_class=2, test_per_class=11,
                             num_test_identities=60, cache_dir=cache, progress=False)
    assert np.array_equal(cached.train_images, ds.train_images)
    assert cached.class_names == ds.class_names

    path.write_bytes(b"this is not a zip file")
    with pytest.warns(UserWarning, match="unreadable"):
        rebuilt = load_glyphs(seed=3, train_per_class=2, test_per_class=11,
                              num_test_identities=60, cache_dir=cache, progress=False)
    assert np.array_equal(rebuilt.test_images, ds.test_images)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rewritten cache reads cleanly
        load_glyphs(seed=3, train_per_class=2, test_per_class=11, num_test_identities=60,
                    cache_dir=cache, progress=False)


def test_glyphs_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="test_per_class"):
        load_glyphs(test_per_class=1, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="num_test_identities"):
        load_glyphs(num_test_identities=1, train_per_class=1, test_per_class=2,
                    cache_dir=tmp_path, progress=False)


def test_glyphs_default_protocol(tmp_path):
    """The default configuration: LFW-sized protocol with identity-disjoint folds."""
    ds = load_glyphs(cache_dir=tmp_path, progress=False)
    assert np.array_equal(np.bincount(ds.pair_fold), np.full(10, 600))
    for f in range(10):
        assert ds.pair_same[ds.pair_fold == f].sum() == 300
    check_protocol(ds.test_labels, ds.pairs, ds.pair_same, ds.pair_fold)
    labels = ds.test_labels
    assert np.all(labels[ds.pairs[ds.pair_same, 0]] == labels[ds.pairs[ds.pair_same, 1]])
    assert np.all(labels[ds.pairs[~ds.pair_same, 0]] != labels[ds.pairs[~ds.pair_same, 1]])
    identities = [set(labels[ds.pairs[ds.pair_fold == f]].ravel()) for f in range(10)]
    assert all(not identities[f] & identities[g] for f in range(10) for g in range(f))
    assert len(ds.gallery) == len(np.unique(labels))
    assert len(ds.gallery) + len(ds.probes) == len(labels)
    assert len(ds.train_images) > 15000 and ds.image_shape == (1, 32, 32)


# ----------------------------------------------------------------------------
# Image folders and LFW pairs
# ----------------------------------------------------------------------------


def write_image(path, size=(8, 8), seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    shape = (size[0], size[1], 3) if mode == "RGB" else size
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)


def face_folder(root, identities=8, per_identity=4, size=(16, 16)):
    """root/p0, root/p1, …: ``per_identity`` PNG images of ``size`` each, seeded 10·i + k; returns root."""
    for i in range(identities):
        (root / f"p{i}").mkdir(parents=True)
        for k in range(per_identity):
            write_image(root / f"p{i}" / f"{k}.png", size=size, seed=10 * i + k)
    return root


@pytest.fixture
def face_tree(tmp_path):
    """alice: 3 PNG, bob: 2 JPEG (upper-case extension), carol: 2 PNG + 1 corrupt, dave: 1."""
    root = tmp_path / "faces"
    for name, files in {"alice": ["a1.png", "a2.png", "a3.png"], "bob": ["b1.JPG", "b2.jpeg"],
                        "carol": ["c1.png", "c2.png"], "dave": ["d1.png"]}.items():
        (root / name).mkdir(parents=True)
        for i, f in enumerate(files):
            write_image(root / name / f, seed=i)
    (root / "carol" / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "carol" / "notes.txt").write_text("ignored")
    return root


def test_load_image_folder(face_tree):
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        folder = load_image_folder(face_tree)
    assert folder.skipped == 1
    assert folder.class_names == ["alice", "bob", "carol", "dave"]
    assert folder.images.shape == (8, 3, 8, 8) and folder.images.dtype == np.uint8
    assert folder.labels.tolist() == [0, 0, 0, 1, 1, 2, 2, 3]
    assert folder.paths[0].endswith("a1.png")
    # PNG is lossless: the pixels come back exactly, channels first.
    expected = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    assert np.array_equal(folder.images[0], expected.transpose(2, 0, 1))

    with pytest.warns(UserWarning):
        gray = load_image_folder(face_tree, grayscale=True, image_size=(5, 6))
    assert gray.images.shape == (8, 1, 5, 6)


def test_load_image_folder_sizes_must_match(face_tree):
    write_image(face_tree / "alice" / "big.png", size=(10, 12))
    with pytest.raises(ValueError, match="image_size"):
        load_image_folder(face_tree)
    with pytest.warns(UserWarning):
        folder = load_image_folder(face_tree, image_size=(8, 8))
    assert folder.images.shape == (9, 3, 8, 8)


def test_load_image_folder_bad_paths(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=f"no images found under {tmp_path / 'empty'}"):
        load_image_folder(tmp_path / "empty")
    (tmp_path / "bad" / "x").mkdir(parents=True)
    (tmp_path / "bad" / "x" / "y.jpg").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="could be read"):
        load_image_folder(tmp_path / "bad")


def test_resize_bilinear():
    image = np.arange(16, dtype=np.uint8).reshape(1, 4, 4) * 10
    assert np.array_equal(resize_bilinear(image, (4, 4)), image)
    up = resize_bilinear(np.full((3, 2, 2), 77, np.uint8), (5, 3))
    assert up.shape == (3, 5, 3) and np.all(up == 77)
    down = resize_bilinear(image, (2, 2))
    assert down.shape == (1, 2, 2) and down[0, 0, 0] < down[0, 1, 1]


@pytest.fixture
def lfw(tmp_path):
    """A miniature LFW: 4 people, pairs.txt with 2 folds of 1 same + 1 different pair."""
    root = tmp_path / "lfw"
    for name, n in {"Ann_Lee": 3, "Bo_Chen": 2, "Cy_Diaz": 1, "Di_Eng": 2}.items():
        (root / name).mkdir(parents=True)
        for k in range(1, n + 1):
            write_image(root / name / f"{name}_{k:04d}.jpg", seed=k)
    pairs_txt = tmp_path / "pairs.txt"
    pairs_txt.write_text("2\t1\nAnn_Lee\t1\t3\nAnn_Lee\t1\tCy_Diaz\t1\n"
                         "Bo_Chen\t1\t2\nAnn_Lee\t2\tBo_Chen\t2\n")
    return root, pairs_txt


def test_load_lfw_pairs(lfw):
    root, pairs_txt = lfw
    result = load_lfw_pairs(pairs_txt, root)
    assert result.identity_names == ["Ann_Lee", "Bo_Chen", "Cy_Diaz"]
    assert result.test_images.shape == (6, 3, 8, 8), "each referenced image once"
    assert result.pair_same.tolist() == [True, False, True, False]
    assert result.pair_fold.tolist() == [0, 0, 1, 1]
    names = [result.identity_names[label] for label in result.test_labels]
    assert [names[i] for i in result.pairs[1]] == ["Ann_Lee", "Cy_Diaz"]
    assert result.paths[result.pairs[0, 1]].endswith("Ann_Lee_0003.jpg")


def test_load_lfw_pairs_errors(lfw, tmp_path):
    root, pairs_txt = lfw
    missing = tmp_path / "missing.txt"
    missing.write_text("1 1\nAnn_Lee 1 9\nAnn_Lee 1 Bo_Chen 1\n")
    with pytest.raises(ValueError, match="Ann_Lee_0009.jpg does not exist"):
        load_lfw_pairs(missing, root)
    short = tmp_path / "short.txt"
    short.write_text("10 300\nAnn_Lee 1 2\n")
    with pytest.raises(ValueError, match="6000 lines"):
        load_lfw_pairs(short, root)
    swapped = tmp_path / "swapped.txt"
    swapped.write_text("1 1\nAnn_Lee 1 Bo_Chen 1\nAnn_Lee 1 2\n")
    with pytest.raises(ValueError, match="line 2"):
        load_lfw_pairs(swapped, root)
    itself = tmp_path / "itself.txt"
    itself.write_text("1 1\nAnn_Lee 2 2\nAnn_Lee 1 Bo_Chen 1\n")
    with pytest.raises(ValueError, match="line 2: pairs an image with itself"):
        load_lfw_pairs(itself, root)


def test_load_folder_dataset_holdout(face_tree):
    with pytest.warns(UserWarning):
        ds = load_folder_dataset(face_tree, holdout_fraction=0.5, seed=1, folds=2,
                                 pairs_per_fold=1)
    assert ds.name == "folder" and ds.mirror is True
    assert len(ds.test_class_names) == 2 and "dave" not in ds.test_class_names
    assert not set(ds.class_names) & set(ds.test_class_names)
    assert len(ds.train_images) + len(ds.test_images) == 8
    check_protocol(ds.test_labels, ds.pairs, ds.pair_same, ds.pair_fold)
    assert len(ds.gallery) == 2


def test_load_folder_dataset_with_lfw_pairs(lfw):
    root, pairs_txt = lfw
    ds = load_folder_dataset(root, pairs_txt=pairs_txt)
    assert ds.class_names == ["Di_Eng"], "identities of pairs.txt are excluded from training"
    assert len(ds.pairs) == 4 and ds.pair_fold.tolist() == [0, 0, 1, 1]


def test_load_folder_dataset_single_image_identities(tmp_path):
    root = tmp_path / "singles"
    for name in ("a", "b", "c", "d"):
        (root / name).mkdir(parents=True)
        write_image(root / name / "1.png")
    with pytest.raises(ValueError, match="two or more images"):
        load_folder_dataset(root)


# ----------------------------------------------------------------------------
# MNIST IDX files
# ----------------------------------------------------------------------------


def idx_bytes(array):
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}
    header = bytes([0, 0, codes[array.dtype], array.ndim])
    return header + np.array(array.shape, dtype=">u4").tobytes() + array.tobytes()


def test_read_idx_raw_and_gzip(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 4), dtype=np.uint8)
    (tmp_path / "raw").write_bytes(idx_bytes(images))
    (tmp_path / "packed.gz").write_bytes(gzip.compress(idx_bytes(images)))
    assert np.array_equal(read_idx(tmp_path / "raw"), images)
    assert np.array_equal(read_idx(tmp_path / "packed.gz"), images)
    floats = np.arange(6, dtype=">f4").reshape(2, 3)
    (tmp_path / "floats").write_bytes(idx_bytes(floats))
    result = read_idx(tmp_path / "floats")
    assert result.dtype == np.float32 and result.dtype.isnative
    assert np.array_equal(result, floats)


def test_read_idx_corrupt_files(tmp_path):
    data = idx_bytes(np.zeros((5, 3, 4), np.uint8))
    cases = {
        "truncated": (data[:-7], "truncated"),
        "header": (data[:9], "truncated"),
        "tiny": (data[:2], "too short"),
        "magic": (b"\x12\x34" + data[2:], "magic number"),
        "type": (data[:2] + b"\x42" + data[3:], "data type"),
        "trailing": (data + b"xx", "corrupt"),
        "badgzip.gz": (gzip.compress(data)[:-10], "gzip"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=message) as error:
            read_idx(tmp_path / name)
        assert name in str(error.value), "the message names the file"
    with pytest.raises(ValueError, match="does not exist"):
        read_idx(tmp_path / "nothing")


def write_mnist(root, n_per_class=6, gz=False, prefix="train", seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10, dtype=np.uint8), n_per_class)
    images = rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
    for stem, array in ((f"{prefix}-images-idx3-ubyte", images),
                        (f"{prefix}-labels-idx1-ubyte", labels)):
        content = idx_bytes(array)
        if gz:
            (root / (stem + ".gz")).write_bytes(gzip.compress(content))
        else:
            (root / stem).write_bytes(content)
    return images, labels


def test_load_mnist_dataset(tmp_path):
    train_images, _ = write_mnist(tmp_path, gz=True)
    write_mnist(tmp_path, n_per_class=2, prefix="t10k", seed=1)
    ds = load_mnist_dataset(tmp_path, holdout_classes=(8, 9), folds=10, pairs_per_fold=3)
    assert ds.name == "mnist" and ds.mirror is False
    assert ds.image_shape == (1, 28, 28)
    assert ds.class_names == [str(d) for d in range(8)] and ds.test_class_names == ["8", "9"]
    assert len(ds.train_images) == 8 * 8 and len(ds.test_images) == 2 * 8
    assert np.array_equal(ds.train_images[0, 0], train_images[0])
    check_protocol(ds.test_labels, ds.pairs, ds.pair_same, ds.pair_fold)
    assert len(ds.pairs) == 60 and len(ds.gallery) == 2


def test_load_mnist_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_mnist_dataset(tmp_path / "missing")
    with pytest.raises(ValueError, match="no MNIST files"):
        load_mnist_dataset(tmp_path)
    write_mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"")
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte"):
        load_mnist_dataset(tmp_path)
    os.remove(tmp_path / "t10k-images-idx3-ubyte")
    with pytest.raises(ValueError, match="holdout_classes"):
        load_mnist_dataset(tmp_path, holdout_classes=(9,))
