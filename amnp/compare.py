"""The paper's experiment: the same network trained with each loss, compared in one table.

    amnp compare --out DIR

trains one run per entry (default: softmax, NormFace, A-Softmax m = 4, AM-Softmax with
m = 0.25, 0.3, 0.35, 0.4, AM-Softmax without feature normalisation, ArcFace), each an
ordinary run directory ``DIR/<entry>`` with the same network, data, schedule and seed,
evaluates each on the held-out identities, and writes ``DIR/comparison.md``,
``DIR/comparison.json`` and ``DIR/figures/`` (target logits, every run's ROC, features on
the sphere).  Running it again with the same DIR skips finished runs, resumes an
interrupted one and rebuilds the table (finished runs are re-evaluated, which gives
the same numbers).  Ctrl-C, SIGTERM or SIGHUP stops between steps, saving the run in
progress and leaving every finished run intact.

An entry is ``LOSS`` or ``LOSS:OPTION=VALUE:...``, e.g. ``am-softmax:m=0.3`` or
``am-softmax:normalize_features=false``, with the options of amnp.config.LOSSES.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import NamedTuple

import numpy as np

from . import figures, models, rundir
from .backend import asarray, get_backend, to_numpy
from .evaluation import roc_curve
from .config import TrainConfig, build_head, read_config, resolve_loss_options
from .functional import l2_normalize_forward
from .heads import TrainingModel
from .inference import evaluate, preprocess
from .optim import SGD, scaled_paper_schedule
from .rundir import read_metrics
from .training import Interrupted, Trainer, TrainingDiverged, sgd_step
from .validation import value_checks

DEFAULT_ENTRIES = ("softmax", "normface", "sphereface:m=4", "am-softmax:m=0.25", "am-softmax:m=0.3",
                   "am-softmax:m=0.35", "am-softmax:m=0.4", "am-softmax:normalize_features=false",
                   "arcface")
DEFAULT_EPOCHS = 5.0


class Entry(NamedTuple):
    name: str      # as written; also the name of its run directory
    loss: str
    options: dict  # the options given; the run's config.json records them all, resolved


def parse_entry(text: str) -> Entry:
    """"am-softmax:m=0.3:s=20" -> Entry("am-softmax:m=0.3:s=20", "am-softmax", {"m": 0.3, "s": 20.0});
    an unknown loss, option or value is refused here, before any training."""
    loss, *assignments = text.strip().split(":")
    options = {}
    for assignment in assignments:
        name, equals, value = assignment.partition("=")
        if not (equals and name and value):
            raise ValueError(f"comparison entry {text!r}: options are written NAME=VALUE, got {assignment!r}")
        options[name] = _option_value(value, text)
    resolve_loss_options(loss, options)
    return Entry(text.strip(), loss, options)


def _option_value(value: str, entry: str):
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"comparison entry {entry!r}: {value!r} is not a number, true or false") from None


def entry_title(entry: Entry) -> str:
    """The label of an entry in tables and figures: "am-softmax m=0.3", "am-softmax w/o FN"."""
    words = [entry.loss]
    for name, value in entry.options.items():
        if name == "normalize_features" and value is False:
            words.append("w/o FN")
        else:
            words.append(f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}")
    return " ".join(words)


class Row(NamedTuple):
    entry: Entry
    metrics: dict | None       # eval.json of the run; None if it diverged
    scores: np.ndarray | None  # cosine of each held-out pair, for the ROC figure
    steps: int
    train_seconds: float
    diverged: str = ""         # the trainer's message when it diverged


def train_entry(entry: Entry, base: TrainConfig, dataset, out_dir: str, position: str, progress):
    """The trained run of one entry: a new run, the rest of an interrupted one, or the one
    finished earlier.  Returns its Row; raises Interrupted when a stop signal stopped it
    (its checkpoint saved)."""
    config = dataclasses.replace(base, loss=entry.loss, loss_options=dict(entry.options),
                                 backend=base.backend or get_backend())
    config.validate()
    run_dir = os.path.join(out_dir, entry.name)
    trainer = Trainer(config, dataset, run_dir, progress=progress)
    title = entry_title(entry)
    with rundir.hold(run_dir, "training"):  # one writer at a time: a second comparison fails here
        if os.path.exists(os.path.join(run_dir, "config.json")):
            saved = read_config(run_dir)
            if _settings(saved) != _settings(config):
                differ = sorted(k for k in _settings(config) if _settings(saved)[k] != _settings(config)[k])
                raise ValueError(f"{run_dir} holds a run with other settings than this comparison's "
                                 f"({', '.join(differ)}); choose another --out")
            trainer.resume()
        else:
            trainer.start()
        finished_before = trainer.step >= trainer.total_steps and os.path.exists(os.path.join(run_dir, "eval.json"))
        if finished_before:
            print(f"{position} {title}: finished earlier", flush=True)
        else:
            print(f"{position} {title}: steps {trainer.step} to {trainer.total_steps}", flush=True)
            try:
                if trainer.train() != "finished":
                    raise Interrupted(trainer.stopped_by)
            except TrainingDiverged as exc:  # one loss failing to train is a result, not the end
                print(f"{position} {title}: {exc}", flush=True)
                return Row(entry, None, None, exc.step, train_seconds(run_dir, config.batch_size), str(exc))
        metrics, scores = evaluate(trainer.model.net, dataset, run_dir, config.seed)
        return Row(entry, metrics, scores, trainer.step, train_seconds(run_dir, config.batch_size))


def _settings(config: TrainConfig) -> dict:
    """What makes two runs the same experiment: everything but the backend, so a comparison
    started on one backend may continue on the other."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k != "backend"}


def train_seconds(run_dir: str, batch_size: int) -> float:
    """Training time from metrics.jsonl: each logged window's images over its images/s."""
    records = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
    steps = np.diff([0] + [r["step"] for r in records])
    return float(sum(n * batch_size / r["images_per_s"] for n, r in zip(steps, records)))


# ---------------------------------------------------------------------- the table

COLUMNS = ("loss", "verification", "TAR@FAR=1e-2", "TAR@FAR=1e-3", "EER", "DIR@FAR=1e-2 (rank 1)",
           "top-1", "steps", "train time")


def table_row(row: Row) -> list[str]:
    m = row.metrics
    if m is None:
        return [entry_title(row.entry), "diverged"] + ["–"] * 5 + [str(row.steps),
                                                                   f"{row.train_seconds / 60:.1f} min"]
    return [entry_title(row.entry),
            f"{100 * m['verification_accuracy']:.2f}% ± {100 * m['verification_accuracy_std']:.2f}",
            f"{100 * m['tar_at_far']['1e-2']:.2f}%", f"{100 * m['tar_at_far']['1e-3']:.2f}%",
            f"{100 * m['eer']:.2f}%", f"{100 * m['dir_at_far']['1e-2']:.2f}%",
            f"{100 * m['identification_top1']:.2f}%", str(row.steps), f"{row.train_seconds / 60:.1f} min"]


def markdown_table(rows) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(table_row(row)) + " |" for row in rows]
    return "\n".join(lines)


def write_comparison(rows, out_dir: str, dataset, base: TrainConfig) -> str:
    """comparison.md, comparison.json and the ROC figure; returns the table."""
    table = markdown_table(rows)
    evaluated = [row for row in rows if row.metrics is not None]
    if not evaluated:
        raise ValueError("every run of the comparison diverged; see the messages above")
    metrics = evaluated[0].metrics
    protocol = (f"{dataset.name}, {base.model} network, seed {base.seed}; verification: "
                f"{metrics['num_folds']} folds, {metrics['num_pairs']} pairs; DIR@FAR=1e-2 with "
                f"{metrics['open_set_impostor_probes']} impostor probes")
    with open(os.path.join(out_dir, "comparison.md"), "w") as file:
        file.write(f"# Loss comparison\n\n{protocol}\n\n{table}\n")
    with open(os.path.join(out_dir, "comparison.json"), "w") as file:
        json.dump({"protocol": protocol, "config": dataclasses.asdict(base),
                   "runs": [{"entry": r.entry.name, "title": entry_title(r.entry), "steps": r.steps,
                             "train_seconds": r.train_seconds, "metrics": r.metrics,
                             "diverged": r.diverged} for r in rows]},
                  file, indent=2)
    curves = {}
    for row in evaluated:
        far, tar, _ = roc_curve(row.scores, dataset.pair_same)
        curves[entry_title(row.entry)] = (far, tar)
    figures.plot_roc_curves(curves, os.path.join(out_dir, "figures", "roc.png"))
    return table


def compare(entries, base: TrainConfig, dataset, out_dir: str, progress=None,
            sphere_steps: int | None = None) -> str:
    """Train and evaluate every entry, then write the table and figures; returns the table.
    A stop signal (Ctrl-C, SIGTERM, SIGHUP) raises Interrupted after saving the run in
    progress: run again with the same out_dir to continue."""
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    for number, entry in enumerate(entries, 1):
        rows.append(train_entry(entry, base, dataset, out_dir, f"[{number}/{len(entries)}]", progress))
    table = write_comparison(rows, out_dir, dataset, base)
    figure_dir = os.path.join(out_dir, "figures")
    figures.plot_target_logits(os.path.join(figure_dir, "target_logits.png"))
    print(f"features on the sphere: {len(entries)} SphereFace-4 networks with a 3-d embedding", flush=True)
    panels = sphere_features(entries, dataset, base.seed,
                             steps=SPHERE_STEPS if sphere_steps is None else sphere_steps)
    figures.plot_features_on_sphere(panels, os.path.join(figure_dir, "features_on_sphere.png"))
    return table


# ---------------------------------------------------------------------- features on the sphere

SPHERE_IDENTITIES = 8
SPHERE_STEPS = 300
SPHERE_BATCH = 64
# A tenth of the training lr: the gradient through a normalisation is orthogonal to the
# feature, so every SGD step lengthens it (‖f + δ‖² = ‖f‖² + ‖δ‖²) and shrinks the next
# step by 1/‖f‖.  At lr 0.1 the 3-d features of the normalised losses grew to norms of
# 10³–10⁵ within 300 steps and froze in one blob; at 0.01 every loss separates the 8
# identities (training accuracy 0.94–1.0, measured).
SPHERE_LR = 0.01


def sphere_features(entries, dataset, seed: int, steps: int = SPHERE_STEPS,
                    identities: int = SPHERE_IDENTITIES) -> dict:
    """The paper's feature picture: for each entry, a SphereFace-4 with a 3-dimensional
    embedding trained on the first ``identities`` training identities, with the same initial
    weights, batches and schedule for every loss.  Returns {title: (unit features (N, 3), labels)}."""
    chosen = np.unique(dataset.train_labels)[:identities]
    rows = np.flatnonzero(np.isin(dataset.train_labels, chosen))
    labels_host = np.searchsorted(chosen, dataset.train_labels[rows])
    x, labels = preprocess(asarray(dataset.train_images[rows])), asarray(labels_host)
    schedule = scaled_paper_schedule(steps, base_lr=SPHERE_LR, warmup_steps=min(50, steps))
    panels = {}
    for entry in entries:
        rng = np.random.default_rng(seed)
        net = models.sphereface(4, widths=(16, 32, 64, 128), in_channels=dataset.image_shape[0],
                                input_size=dataset.image_shape[1:], embedding_size=3, rng=rng)
        head = build_head(entry.loss, 3, len(chosen), rng=rng, **entry.options)
        model = TrainingModel(net, head)
        optimizer = SGD(model)
        batches = np.random.default_rng([seed, 5])
        for step in range(steps):
            index = asarray(batches.choice(len(rows), min(SPHERE_BATCH, len(rows)), replace=False))
            with value_checks(False):  # labels 0 .. identities − 1 by construction, as in training
                sgd_step(model, optimizer, x[index], labels[index], schedule(step), step)
        features, _ = l2_normalize_forward(net.forward(x))
        panels[entry_title(entry)] = (to_numpy(features), labels_host)
    return panels
