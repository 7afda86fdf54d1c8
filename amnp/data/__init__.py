"""Datasets for face verification with AM-Softmax.

Every loader returns a `VerificationDataset`: training identities with class
labels, and held-out identities with an LFW-style pair protocol (10 folds of
same / different pairs) and a gallery/probe split.

* `load_glyphs` -- the embedded default: characters drawn in 16 of
  matplotlib's font faces under random capture variation (no download);
* `load_folder_dataset` -- real faces from ``root/<identity>/<image>``,
  optionally with LFW's pairs.txt; with ``cache_dir`` the folder is decoded
  once onto disk and its images stay there (`DiskImages`, amnp.data.on_disk),
  read a batch at a time, so a folder larger than memory can be trained on;
* `load_mnist_dataset` -- MNIST / Fashion-MNIST IDX files, digits as identities.
"""
from .dataset import (
    VerificationDataset,
    default_cache_dir,
    make_gallery_probes,
    make_open_set_protocol,
    make_pairs_protocol,
)
from .on_disk import DiskImages
from .folder import (
    ImageFolder,
    LFWPairs,
    load_folder_dataset,
    load_image_folder,
    load_lfw_pairs,
    read_image,
    resize_bilinear,
)
from .glyphs import GlyphIdentities, glyph_faces, glyph_identities, load_glyphs
from .mnist import FASHION_MNIST_CLASSES, load_mnist_dataset, read_idx

__all__ = [
    "VerificationDataset", "default_cache_dir", "make_gallery_probes", "make_open_set_protocol",
    "make_pairs_protocol",
    "DiskImages", "ImageFolder", "LFWPairs", "load_folder_dataset", "load_image_folder", "load_lfw_pairs",
    "read_image", "resize_bilinear",
    "GlyphIdentities", "glyph_faces", "glyph_identities", "load_glyphs",
    "FASHION_MNIST_CLASSES", "load_mnist_dataset", "read_idx",
]
