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


def mismatches(given: dict, own: dict, complete: bool) -> list[str]:
    """What keeps the arrays ``given`` from replacing ``own`` (both {name: array}):
    missing names (when ``complete``), unexpected names, other shapes, other dtypes."""
    problems = []
    missing = sorted(set(own) - set(given)) if complete else []
    unexpected = sorted(set(given) - set(own))
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected)}")
    for name in sorted(set(given) & set(own)):
        if tuple(given[name].shape) != tuple(own[name].shape):
            problems.append(f"{name} has shape {tuple(given[name].shape)}, "
                            f"the model needs {tuple(own[name].shape)}")
        elif np.dtype(given[name].dtype) != np.dtype(own[name].dtype):
            problems.append(f"{name} has dtype {given[name].dtype}, the model needs {own[name].dtype}")
    return problems


def _parameters(model) -> dict:
    return {name: owner.params[key] for name, owner, key in model.named_parameters()}


def load(path, model, optimizer=None) -> dict:
    """Load a checkpoint into ``model`` (and ``optimizer``); returns its meta dict.

    All or nothing: every parameter and momentum array is checked for its name,
    shape and dtype before anything is assigned, so a checkpoint from another
    model is a CheckpointError naming what does not match, and neither the
    model nor the optimizer changes.  Momentum may cover fewer parameters than
    the model (none at step 0), never others.
    """
    params, velocity, meta = read(path)
    own = _parameters(model)
    problems = [f"parameters: {p}" for p in mismatches(params, own, complete=True)]
    if optimizer is not None:
        problems += [f"momentum: {p}" for p in mismatches(velocity, own, complete=False)]
    if problems:
        raise CheckpointError(f"checkpoint {path} does not fit this model: {'; '.join(problems)}")
    model.load_state_dict(params)
    if optimizer is not None:
        optimizer.load_state_dict({name: asarray(v) for name, v in velocity.items()})
    return meta


def load_network(path, net, prefix: str = "net.") -> dict:
    """Load only the embedding network of a training checkpoint (its parameters named
    ``prefix`` + name, see ``TrainingModel``) into ``net``, for inference: the classifier
    head and the momentum are not read into memory beyond the file.  All or nothing,
    as ``load``; returns the meta dict."""
    params, _, meta = read(path)
    params = {name[len(prefix):]: v for name, v in params.items() if name.startswith(prefix)}
    problems = mismatches(params, _parameters(net), complete=True)
    if problems:
        raise CheckpointError(f"checkpoint {path} does not fit this network: {'; '.join(problems)}")
    net.load_state_dict(params)
    return meta
