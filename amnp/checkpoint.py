"""Checkpoints: one .npz file, written atomically, read without pickle.

Layout: ``param/<dotted name>`` arrays, ``velocity/<dotted name>`` arrays (the
optimizer's momentum), and ``meta``: a JSON string with the step, the config
and a format version.  Everything is a plain array, so ``np.load`` runs with
``allow_pickle=False`` and a hostile file cannot execute code.  ``read`` checks
the meta (a hand-edited one is a CheckpointError saying what is wrong), so
whatever reads a checkpoint can rely on it.

Writing goes to a temporary file in the same directory, flushed to disk, then
renamed over the old checkpoint (amnp.rundir.atomic_file): a crash or Ctrl-C
mid-write leaves the previous checkpoint intact.
"""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from .backend import asarray, to_numpy
from .rundir import atomic_file
from .validation import matching_state

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, truncated, corrupt, or from another model."""


def save(path, model, optimizer, meta: dict) -> None:
    write(path, model.state_dict(), optimizer.state_dict(), meta)


def write(path, params: dict, velocity: dict, meta: dict) -> None:
    """Write parameters and momentum given as {dotted name: array} (what ``save`` takes from
    a model and its optimizer; the trainer on several ranks gathers a sharded head's first)."""
    arrays = {f"param/{name}": to_numpy(value) for name, value in params.items()}
    arrays.update({f"velocity/{name}": to_numpy(v) for name, v in velocity.items()})
    arrays["meta"] = np.array(json.dumps(dict(meta, format_version=FORMAT_VERSION)))
    with atomic_file(path, "wb") as file:
        np.savez(file, **arrays)


def read(path):
    """-> (params {name: array}, velocity {name: array}, meta dict), or CheckpointError.

    The meta is checked: a JSON object with this format version, ``step`` a non-negative
    integer, ``config`` (if present) an object, ``image_shape`` (if present) three positive
    integers (C, H, W) with ``mirror`` true or false."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            contents = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({type(exc).__name__}: {exc})") from None
    if "meta" not in contents:
        raise CheckpointError(f"checkpoint {path} has no meta (the step and settings); "
                              "it was not written by amnp")
    try:
        meta = json.loads(str(contents.pop("meta")))
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {path} has a meta that is not JSON ({exc})") from None
    _check_meta(meta, path)
    params = {k[len("param/"):]: v for k, v in contents.items() if k.startswith("param/")}
    velocity = {k[len("velocity/"):]: v for k, v in contents.items() if k.startswith("velocity/")}
    return params, velocity, meta


def _check_meta(meta, path) -> None:
    """CheckpointError naming the first thing wrong with ``meta`` (see ``read``)."""
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path} has a meta that is not a JSON object: {meta!r:.60}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {meta.get('format_version')}, expected {FORMAT_VERSION}")
    problem = None
    step, shape = meta.get("step"), meta.get("image_shape")
    if not _is_int(step) or step < 0:
        problem = f"step must be a non-negative integer, got {step!r:.60}" if "step" in meta else "no step"
    elif not isinstance(meta.get("config", {}), dict):
        problem = f"config must be an object, got {meta['config']!r:.60}"
    elif "image_shape" in meta and not (isinstance(shape, list) and len(shape) == 3
                                        and all(_is_int(d) and d > 0 for d in shape)):
        problem = f"image_shape must be three positive integers (C, H, W), got {shape!r:.60}"
    elif "image_shape" in meta and not isinstance(meta.get("mirror"), bool):
        problem = f"mirror must be true or false, got {meta.get('mirror')!r:.60}"
    if problem:
        raise CheckpointError(f"checkpoint {path} has invalid meta: {problem}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
    assign(path, model, optimizer, params, velocity)
    return meta


def assign(path, model, optimizer, params: dict, velocity: dict) -> None:
    """Load parameters and momentum read from the checkpoint ``path`` into ``model`` and
    ``optimizer`` (if not None), all or nothing, as ``load`` does."""
    own = _parameters(model)
    checks = [("parameters", params, True)] + ([("momentum", velocity, False)] if optimizer else [])
    problems = []
    for what, given, complete in checks:
        try:
            matching_state(given, own, what, complete)
        except (ValueError, TypeError) as exc:
            problems.append(str(exc))
    if problems:
        raise CheckpointError(f"checkpoint {path} does not fit this model: {'; '.join(problems)}")
    model.load_state_dict(params)
    if optimizer is not None:
        optimizer.load_state_dict({name: asarray(v) for name, v in velocity.items()})


def load_network(path, net, prefix: str = "net.") -> dict:
    """Load only the embedding network of a training checkpoint (its parameters named
    ``prefix`` + name, see ``TrainingModel``) into ``net``, for inference: the classifier
    head and the momentum are not read into memory beyond the file.  All or nothing,
    as ``load``; returns the meta dict."""
    params, _, meta = read(path)
    params = {name[len(prefix):]: v for name, v in params.items() if name.startswith(prefix)}
    try:
        matching_state(params, _parameters(net))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit this network: {exc}") from None
    net.load_state_dict(params)
    return meta
