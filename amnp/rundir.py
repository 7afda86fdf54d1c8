"""The run directory's own rules: one writer at a time, files whole or absent, a record of
the data the run was trained on, and metrics.jsonl read as a journal.

One writer: ``hold(run_dir)`` takes an exclusive lock on ``run_dir/.lock`` (``flock``,
non-blocking) and writes its pid there; a second ``amnp train`` or ``amnp eval DIR`` on the
same directory fails at once with ``RunInUse``, naming that pid.  The kernel releases the
lock when its process ends, however it ends, so a ``kill -9`` leaves no stale lock.  Where
there is no ``fcntl`` (Windows) or the filesystem refuses locks, the directory is used
unlocked, with a warning.  Reading a run (``amnp embed``, ``verify``, ``eval --pairs``)
takes no lock: the checkpoint is replaced atomically, so a reader sees one whole checkpoint.

Whole or absent: ``atomic_file`` writes into a temporary file beside the target
(``.<stem>-<random><ext>.tmp``), flushed to disk, then renamed over it.  A process killed
mid-write leaves that temporary file behind; the next holder of the directory removes
those of the run's files (only a holder may: another process could be writing one).

The data record, ``data.json``: what ``describe_data`` says about the dataset the run was
built from (each identity's name and number of images, digests of the labels, of the
held-out protocol and of the images), written when the run starts.  ``check_data``
compares the dataset as it is now and refuses, in one line saying what changed, to resume
on other training data or to evaluate on other held-out identities.  A run without the
record (trained by an older amnp) is used as before, with a warning.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_FILE, DATA_RECORD, METRICS = ".lock", "data.json", "metrics.jsonl"
# The files of a run that are written atomically, whose temporary files a holder removes.
RUN_FILES = ("config.json", DATA_RECORD, "checkpoint.npz", METRICS, "eval.json")
DATA_FORMAT = 1
# What open() gives a new file: 0o666 less the umask (read once: setting it is the only way to
# read it, and here, at import, no other thread can be creating files).
_UMASK = os.umask(0o022)
os.umask(_UMASK)
NEW_FILE_MODE = 0o666 & ~_UMASK


class RunInUse(RuntimeError):
    """Another process holds the run directory (``hold``)."""


# ---------------------------------------------------------------------- one writer

@contextlib.contextmanager
def hold(run_dir, doing: str):
    """Hold ``run_dir`` (created if missing) as its only writer for the with-block, and
    remove what killed writers left in it.  ``doing`` ("training", "evaluating") is
    written with the pid, for the message another process gets: RunInUse.  A directory
    created here that holds nothing but the lock at the end (a run that failed to start)
    is removed again."""
    created = not os.path.isdir(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    lock_path = os.path.join(run_dir, LOCK_FILE)
    with open(lock_path, "a+") as lock:
        locked = _locked(lock, run_dir)
        if locked:
            lock.truncate(0)
            lock.write(f"{os.getpid()} {doing}\n")
            lock.flush()
            remove_leftovers(run_dir)
        try:
            yield
        finally:
            if created and locked and os.listdir(run_dir) == [LOCK_FILE]:
                os.unlink(lock_path)
                with contextlib.suppress(OSError):  # another process has just created its lock
                    os.rmdir(run_dir)
    # closing the file released the lock; the kernel does the same when the process dies


def _locked(lock, run_dir) -> bool:
    """Lock the open ``lock`` file; RunInUse when another process has it, False (with a
    warning) where locks are not available."""
    unavailable = "on this platform (no fcntl)"
    if fcntl is not None:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pid, _, doing = _holder(lock).partition(" ")
            holder = f"process {pid} ({doing})" if pid else "another process"
            raise RunInUse(f"{run_dir} is in use by {holder}; a run directory takes one writer at a "
                           "time: wait for that process to end, or use another directory") from None
        except OSError as error:
            if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            unavailable = f"on this filesystem ({error.strerror})"
    warnings.warn(f"cannot lock {run_dir} {unavailable}: nothing stops a second amnp process "
                  "from writing to it at the same time", stacklevel=4)
    return False


def _holder(lock, patience: float = 2.0) -> str:
    """The "pid doing" line of a lock another process holds.  It writes the line just after
    taking the lock, so a process that lost the race by microseconds waits for it (at most
    ``patience`` seconds; "" if it never comes)."""
    deadline = time.monotonic() + patience
    while True:
        lock.seek(0)
        line = lock.read().strip()
        if line or time.monotonic() > deadline:
            return line
        time.sleep(0.02)


def _temporary_name(path):
    """(directory, prefix, suffix) of the temporary files ``atomic_file`` writes for ``path``."""
    directory, name = os.path.split(os.path.abspath(path))
    stem, extension = os.path.splitext(name)
    return directory, f".{stem}-", f"{extension}.tmp"


@contextlib.contextmanager
def atomic_file(path, mode: str = "w"):
    """A file object whose content becomes ``path`` when the with-block ends without error,
    all at once (written beside it, flushed to disk, renamed over it); on an error the
    previous ``path`` is left as it was and the temporary file removed.  The new file gets
    the permissions open() would give it."""
    directory, prefix, suffix = _temporary_name(path)
    fd, temporary = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory)
    try:
        os.chmod(temporary, NEW_FILE_MODE)  # mkstemp's 0o600 would hide the run from its group
        with os.fdopen(fd, mode) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def write_json(path, value) -> None:
    with atomic_file(path) as file:
        json.dump(value, file, indent=2)


def remove_leftovers(run_dir) -> None:
    """Remove the temporary files of killed writes of the run's files; call it only while
    holding the directory (a live writer's temporary file looks the same)."""
    for name in RUN_FILES:
        directory, prefix, suffix = _temporary_name(os.path.join(run_dir, name))
        for path in glob.glob(os.path.join(glob.escape(directory), f"{prefix}*{suffix}")):
            os.unlink(path)


# ---------------------------------------------------------------------- metrics.jsonl

def read_metrics(path) -> list[dict]:
    """The records of metrics.jsonl, one JSON object with an integer "step" per line ([]
    when there is no file).  As a journal does, a last line cut short (no newline, not a
    record: its writer was killed) is dropped with a warning; any other damage is a
    ValueError naming the file and the line."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as file:
        lines = file.read().split(b"\n")
    last = lines.pop()  # b"" when the file ends with a newline
    records = [_record(line, path, number) for number, line in enumerate(lines, 1) if line.strip()]
    if last.strip():
        try:
            records.append(_record(last, path, len(lines) + 1))
        except ValueError:
            warnings.warn(f"{path}: dropped line {len(lines) + 1}, which was cut short "
                          "(a process stopped while writing it)", stacklevel=2)
    return records


def _record(line: bytes, path, number: int) -> dict:
    try:
        record = json.loads(line)
    except ValueError as exc:
        raise ValueError(f"{path} line {number} is not a JSON record ({exc}); the file is "
                         "damaged: repair or delete that line") from None
    step = record.get("step") if isinstance(record, dict) else None
    if isinstance(step, bool) or not isinstance(step, int):
        raise ValueError(f"{path} line {number} is not a metrics record (no integer \"step\"); "
                         "the file is damaged: repair or delete that line")
    return record


def write_metrics(path, records: list[dict]) -> None:
    with atomic_file(path) as file:
        file.writelines(json.dumps(r) + "\n" for r in records)


# ---------------------------------------------------------------------- the data record

def describe_data(dataset, spec: str) -> dict:
    """What a run is built from, for ``check_data``: for the training and the held-out
    identities, each one's name and number of images, a digest of the labels (held out:
    with the pairs, folds, gallery and probes) and a digest of the images.  A folder's
    images are digested as its list of files (identity/name), cheap where reading the
    decoded pixels would not be (a renamed or replaced file is seen, an edit inside one is
    not); the datasets held in memory (glyphs, MNIST) by their pixels.

    dataset : a VerificationDataset; spec : its TrainConfig.dataset ("folder:PATH", ...)
    """
    kind, _, root = spec.partition(":")  # a validated TrainConfig.dataset
    files = _folder_files(root) if kind == "folder" else None
    return {
        "format_version": DATA_FORMAT,
        "dataset": spec,
        "train": _describe_part(dataset.class_names, dataset.train_labels, dataset.train_images, files),
        "held_out": _describe_part(dataset.test_class_names, dataset.test_labels, dataset.test_images,
                                   files, dataset.pairs, dataset.pair_same, dataset.pair_fold,
                                   dataset.gallery, dataset.probes),
    }


def _folder_files(root) -> list[str]:
    """identity/name of every image file of a folder dataset, in the loader's order."""
    # The loader's own listing (same files, same order), imported here: amnp.data loads
    # Pillow and matplotlib, which amnp.checkpoint (importing this module) does not need.
    from .data.folder import _image_files

    root = Path(root).expanduser()
    return [path.relative_to(root).as_posix() for _, path in _image_files(root)]


def _describe_part(names, labels, images, files, *protocol) -> dict:
    counts = np.bincount(labels, minlength=len(names)).tolist()
    names = list(names) or [f"identity {i}" for i in range(len(counts))]
    if files is None:
        content = hashlib.sha256()
        for start in range(0, len(images), 4096):  # a few MB at a time
            content.update(np.ascontiguousarray(images[start:start + 4096]).tobytes())
    else:
        own = set(names)
        listing = "\n".join(f for f in files if f.split("/")[0] in own)
        content = hashlib.sha256(listing.encode("utf-8", "surrogateescape"))  # names need not be UTF-8
    arrays = hashlib.sha256()
    for array in (labels, *protocol):
        arrays.update(np.ascontiguousarray(array).astype("<i8").tobytes() + b"|")
    return {"identities": dict(zip(names, counts)), "labels": arrays.hexdigest(),
            "images": content.hexdigest()}


def write_data_record(run_dir, dataset, spec: str) -> None:
    write_json(os.path.join(run_dir, DATA_RECORD), describe_data(dataset, spec))


def check_data(run_dir, dataset, spec: str, resuming: bool) -> None:
    """Refuse (ValueError, one line saying what changed) to go on with a dataset that is not
    the one ``run_dir`` was trained on, where that matters: resuming needs the same training
    images and labels, and evaluating (``resuming`` False, or the evaluation at the end of a
    resumed run) the same held-out identities.  Held-out identities that kept their names
    but not their images or pairs are evaluated with a warning (the results are honest, not
    comparable with the earlier ones); a change of the training identities alone cannot
    matter to an evaluation.  A run without data.json is only warned about."""
    path = os.path.join(run_dir, DATA_RECORD)
    if not os.path.exists(path):
        warnings.warn(f"{run_dir} has no record of the data it was trained on ({DATA_RECORD}: it was "
                      f"trained by an older amnp), so nothing checks that {spec} is unchanged",
                      stacklevel=2)
        return
    recorded, current = _read_record(path), describe_data(dataset, spec)
    held_out = set(current["held_out"]["identities"])
    other_held_out = held_out != set(recorded["held_out"]["identities"])
    if resuming and (other_held_out or recorded["train"] != current["train"]):
        consequence = "resuming would train on other images or labels than the run's"
    elif other_held_out:
        trained_on = sorted(held_out & set(recorded["train"]["identities"]))
        consequence = ("evaluating would hold out other identities than the run did"
                       + (f", including {_few(trained_on)} it trained on" if trained_on else ""))
    else:
        if recorded["held_out"] != current["held_out"]:
            warnings.warn(f"the dataset {spec} changed since {run_dir} was trained: "
                          f"{_changes(recorded, current)}; its held-out identities are the same, "
                          "but the results may differ from the run's earlier ones", stacklevel=2)
        return
    raise ValueError(f"the dataset {spec} changed since {run_dir} was trained: "
                     f"{_changes(recorded, current)}; {consequence}. Put the data back as it was, "
                     "or start a new run on it")


def _read_record(path) -> dict:
    try:
        with open(path) as file:
            record = json.load(file)
        for part in ("train", "held_out"):
            if not isinstance(record[part]["identities"], dict):
                raise TypeError("identities is not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a record of the run's data ({type(exc).__name__}: {exc}); "
                         "restore it, or delete it to use the run without the check") from None
    return record


def _changes(recorded: dict, current: dict) -> str:
    """What differs between two data records, in words."""
    before = {**recorded["train"]["identities"], **recorded["held_out"]["identities"]}
    now = {**current["train"]["identities"], **current["held_out"]["identities"]}
    added = [name for name in now if name not in before]
    removed = [name for name in before if name not in now]
    recounted = [f"{name}: {before[name]} → {count}" for name, count in now.items()
                 if name in before and before[name] != count]
    changes = []
    if added:
        changes.append(f"{_few(added)} added")
    if removed:
        changes.append(f"{_few(removed)} removed")
    if recounted:
        changes.append(f"other numbers of images for {_few(recounted)}")
    if not changes:
        parts = [part for part in ("train", "held_out")
                 if recorded[part]["images"] != current[part]["images"]]
        if parts:
            where = " and ".join("training" if p == "train" else "held-out" for p in parts)
            changes.append(f"the {where} images differ (files renamed or replaced, or other pixels)")
        else:
            changes.append("the labels or the held-out pairs differ")
    return ", ".join(changes)


def _few(names: list[str], shown: int = 3) -> str:
    """"3 identities (a, b, c)", "5 identities (a, b, c, …)"."""
    listed = ", ".join(names[:shown]) + (", …" if len(names) > shown else "")
    return f"{len(names)} identit{'y' if len(names) == 1 else 'ies'} ({listed})"
