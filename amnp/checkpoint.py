"""Checkpoints: one .npz file, written atomically, read without pickle.

Layout: ``param/<dotted name>`` arrays, ``velocity/<dotted name>`` arrays (the
optimizer's momentum), and ``meta``: a JSON string with the step, the config
and a format version.  Everything is a plain array, so ``np.load`` runs with
``allow_pickle=False`` and a hostile file cannot execute code.

Writing goes to a temporary file in the same directory, flushed to disk, then
renamed over the old checkpoint: a crash or Ctrl-C mid-write leaves the
previous checkpoint intact.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as np

from .backend import asarray, to_numpy

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, truncated, corrupt, or from another model."""


def save(path, model, optimizer, meta: dict) -> None:
    arrays = {f"param/{name}": value for name, value in model.state_dict().items()}
    arrays.update({f"velocity/{name}": to_numpy(v) for name, v in optimizer.state_dict().items()})
    arrays["meta"] = np.array(json.dumps(dict(meta, format_version=FORMAT_VERSION)))
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=".checkpoint-", suffix=".npz.tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as file:
            np.savez(file, **arrays)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def read(path):
    """-> (params {name: array}, velocity {name: array}, meta dict), or CheckpointError."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            contents = {key: archive[key] for key in archive.files}
        meta = json.loads(str(contents.pop("meta")))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({type(exc).__name__}: {exc})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {meta.get('format_version')}, expected {FORMAT_VERSION}")
    params = {k[len("param/"):]: v for k, v in contents.items() if k.startswith("param/")}
    velocity = {k[len("velocity/"):]: v for k, v in contents.items() if k.startswith("velocity/")}
    return params, velocity, meta


def load(path, model, optimizer=None) -> dict:
    """Load a checkpoint into ``model`` (and ``optimizer``); returns its meta dict.

    A checkpoint from another model (other parameter names or shapes) is a
    CheckpointError naming what does not match; nothing is loaded then.
    """
    params, velocity, meta = read(path)
    try:
        if optimizer is not None:  # checked against the model's shapes before anything is loaded
            optimizer.load_state_dict({name: asarray(v) for name, v in velocity.items()})
        model.load_state_dict(params)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit this model: {exc}") from None
    return meta
