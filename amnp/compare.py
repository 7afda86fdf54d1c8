"""The paper's experiment: the same network trained with each loss, compared in one table.

    amnp compare --out DIR --seeds 0,1,2,3,4

trains one run per entry (default: softmax, NormFace, A-Softmax m = 4, AM-Softmax with
m = 0.25, 0.3, 0.35, 0.4, AM-Softmax without feature normalisation, ArcFace) and seed,
each an ordinary run directory ``DIR/seed-S/<entry>``; at one seed every entry has the
same network, data, initialisation, batches and schedule.  Each run is evaluated on its
held-out identities (with all-pairs verification and bootstrap intervals,
amnp.statistics), and ``DIR/comparison.md``, ``DIR/comparison.json`` and ``DIR/figures/``
(target logits, every run's ROC at the first seed, features on the sphere) give each
entry's mean and interval over seeds and its paired difference from a reference entry,
with a verdict.  Running it again with the same DIR skips finished runs (also when more
seeds are asked for), resumes an interrupted one and rebuilds the tables (finished runs
are re-evaluated, which gives the same numbers); Ctrl-C, SIGTERM or SIGHUP stops between
steps, saving the run in progress and leaving every finished run intact.

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
from .init import stream_seed
from .layers import inference_mode
from .inference import evaluate, preprocess
from .optim import SGD, scaled_paper_schedule
from .rundir import read_metrics
from .statistics import mean_interval, paired_difference, percent_with_interval
from .training import Interrupted, Trainer, TrainingDiverged, sgd_step
from .validation import value_checks

DEFAULT_ENTRIES = ("softmax", "normface", "sphereface:m=4", "am-softmax:m=0.25", "am-softmax:m=0.3",
                   "am-softmax:m=0.35", "am-softmax:m=0.4", "am-softmax:normalize_features=false",
                   "arcface")
DEFAULT_EPOCHS = 5.0
DEFAULT_SEEDS = (0, 1, 2, 3, 4)


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


def parse_seeds(text: str) -> list[int]:
    """"0,1,2" -> [0, 1, 2]; refused unless distinct integers >= 0."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--seeds takes comma-separated integers, e.g. 0,1,2,3,4, got {text!r}") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) < len(seeds):
        raise ValueError(f"--seeds takes distinct integers >= 0, e.g. 0,1,2,3,4, got {text!r}")
    return seeds


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
    seed: int
    metrics: dict | None       # eval.json of the run; None if it diverged
    scores: np.ndarray | None  # cosine of each held-out pair, for the ROC figure
    steps: int
    train_seconds: float
    diverged: str = ""         # the trainer's message when it diverged


def train_entry(entry: Entry, base: TrainConfig, dataset, out_dir: str, position: str, progress):
    """The trained run of one entry at ``base.seed``: a new run, the rest of an interrupted
    one, or the one finished earlier.  Returns its Row; raises Interrupted when a stop signal
    stopped it (its checkpoint saved)."""
    config = dataclasses.replace(base, loss=entry.loss, loss_options=dict(entry.options),
                                 backend=base.backend or get_backend())
    config.validate()
    run_dir = os.path.join(out_dir, entry.name)
    trainer = Trainer(config, dataset, run_dir, progress=progress)
    title = f"{entry_title(entry)}, seed {config.seed}"
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
                return Row(entry, config.seed, None, None, exc.step,
                           train_seconds(run_dir, config.batch_size), str(exc))
        metrics, scores = evaluate(trainer.model.net, dataset, run_dir, config.seed)
        return Row(entry, config.seed, metrics, scores, trainer.step,
                   train_seconds(run_dir, config.batch_size))


def _settings(config: TrainConfig) -> dict:
    """What makes two runs the same experiment: everything but the backend, so a comparison
    started on one backend may continue on the other."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k != "backend"}


def train_seconds(run_dir: str, batch_size: int) -> float:
    """Training time from metrics.jsonl: each logged window's images over its images/s."""
    records = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
    steps = np.diff([0] + [r["step"] for r in records])
    return float(sum(n * batch_size / r["images_per_s"] for n, r in zip(steps, records)))


def seed_dir(out_dir: str, seed: int) -> str:
    """Where the runs of one seed live: ``DIR/seed-S/<entry>``."""
    return os.path.join(out_dir, f"seed-{seed}")


def find_reference(entries, reference: str | None) -> Entry:
    """The entry the others are compared with: the one that trains as ``reference``
    (written as an entry; options compared after defaults are filled in, so "am-softmax"
    finds "am-softmax:m=0.35").  Default: AM-Softmax with its default options if it is
    among the entries, else the first entry."""
    wanted = parse_entry(reference or "am-softmax")
    resolved = resolve_loss_options(wanted.loss, wanted.options)
    for entry in entries:
        if entry.loss == wanted.loss and resolve_loss_options(entry.loss, entry.options) == resolved:
            return entry
    if reference is None:
        return entries[0]
    raise ValueError(f"--reference {reference} trains as none of the compared losses "
                     f"({', '.join(entry.name for entry in entries)})")


# ---------------------------------------------------------------------- the tables

class Metric(NamedTuple):
    column: str
    value: object             # eval.json -> the number
    interval: object          # eval.json -> its bootstrap interval over identities
    higher_is_better: bool = True


def _all_pairs_tar(far: str) -> Metric:
    return Metric(f"TAR@FAR={far} (all pairs)", lambda m: m["all_pairs"]["tar_at_far"][far],
                  lambda m: m["all_pairs"]["intervals"]["tar_at_far"][far])


METRICS = (
    Metric("verification (10 folds)", lambda m: m["verification_accuracy"],
           lambda m: m["intervals"]["verification_accuracy"]),
    _all_pairs_tar("1e-3"), _all_pairs_tar("1e-4"), _all_pairs_tar("1e-5"),
    Metric("EER (all pairs)", lambda m: m["all_pairs"]["eer"], lambda m: m["all_pairs"]["intervals"]["eer"],
           higher_is_better=False),
    Metric("top-1", lambda m: m["identification_top1"], lambda m: m["intervals"]["identification_top1"]),
    Metric("DIR@FAR=1e-2 (rank 1)", lambda m: m["dir_at_far"]["1e-2"],
           lambda m: m["intervals"]["dir_at_far"]["1e-2"]),
)


def _points(difference: float, interval) -> str:
    return f"{100 * difference:+.2f} [{100 * interval[0]:+.2f}, {100 * interval[1]:+.2f}]"


def summarize(rows, seeds, reference: Entry) -> tuple[list[dict], list[dict]]:
    """Per entry, each metric's mean over the seeds and its interval (t over seeds; with
    one seed, the run's bootstrap interval over identities); and, with two or more seeds,
    each entry's paired difference from the reference, seed by seed, with its verdict.
    A seed where a run diverged is left out of its entry's numbers and of its pairs."""
    entries, by_entry = {}, {}
    for row in rows:
        entries[row.entry.name] = row.entry
        by_entry.setdefault(row.entry.name, {})[row.seed] = row
    summary, paired = [], []
    for name, runs in by_entry.items():
        entry = entries[name]
        trained = [seed for seed in seeds if runs[seed].metrics is not None]
        record = {"entry": entry.name, "title": entry_title(entry), "seeds": trained,
                  "diverged": [seed for seed in seeds if seed not in trained],
                  "train_seconds": float(np.mean([runs[seed].train_seconds for seed in seeds])),
                  "steps": max(runs[seed].steps for seed in seeds), "metrics": {}}
        for metric in METRICS:
            if not trained:
                continue
            values = [metric.value(runs[seed].metrics) for seed in trained]
            if len(values) == 1:
                mean, interval = values[0], metric.interval(runs[trained[0]].metrics)
            else:
                mean, interval = mean_interval(values)
            record["metrics"][metric.column] = {"mean": mean, "interval": interval, "values": values}
        summary.append(record)
        if entry == reference or len(seeds) < 2:
            continue
        reference_runs = by_entry[reference.name]
        common = [seed for seed in trained if reference_runs[seed].metrics is not None]
        pair = {"entry": entry.name, "title": entry_title(entry), "seeds": common, "metrics": {}}
        if len(common) >= 2:
            for metric in METRICS:
                pair["metrics"][metric.column] = paired_difference(
                    [metric.value(runs[seed].metrics) for seed in common],
                    [metric.value(reference_runs[seed].metrics) for seed in common],
                    metric.higher_is_better)
        paired.append(pair)
    return summary, paired


def markdown_tables(summary, paired, seeds, reference: Entry) -> str:
    """The table of means and intervals, and the table of paired differences."""
    columns = ["loss"] + [metric.column for metric in METRICS] + ["steps", "train time"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for record in summary:
        name = record["title"] + (f" ({len(record['diverged'])} diverged)" if record["diverged"] else "")
        cells = [percent_with_interval(record["metrics"][m.column]["mean"], record["metrics"][m.column]["interval"])
                 if m.column in record["metrics"] else "diverged" for m in METRICS]
        lines.append("| " + " | ".join([name] + cells + [str(record["steps"]),
                                                          f"{record['train_seconds'] / 60:.1f} min"]) + " |")
    if len(seeds) == 1:
        return ("\n".join(lines) + "\n\nOne seed: each interval is the 95% bootstrap interval over held-out "
                "identities; paired differences between losses need two or more seeds (--seeds 0,1,2,3,4).")
    text = (f"Mean over seeds {', '.join(map(str, seeds))} [95% t interval over seeds]; "
            "EER: lower is better.\n\n" + "\n".join(lines))
    columns = [f"loss − {entry_title(reference)}"] + [metric.column for metric in METRICS]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for pair in paired:
        if not pair["metrics"]:
            lines.append(f"| {pair['title']} | " + " | ".join(["fewer than 2 seeds trained"] * len(METRICS)) + " |")
            continue
        cells = [f"{_points(p['difference'], p['interval'])} {p['verdict']}"
                 for p in (pair["metrics"][m.column] for m in METRICS)]
        lines.append(f"| {pair['title']} | " + " | ".join(cells) + " |")
    return (text + f"\n\nPaired difference from {entry_title(reference)}, seed by seed, in points "
            "[95% t interval over seeds]: ahead or behind when the interval excludes 0, "
            "else no difference resolved.\n\n" + "\n".join(lines))


def write_comparison(rows, out_dir: str, dataset, base: TrainConfig, seeds, reference: Entry) -> str:
    """comparison.md, comparison.json and the ROC figure (of the first seed); returns the tables."""
    evaluated = [row for row in rows if row.metrics is not None]
    if not evaluated:
        raise ValueError("every run of the comparison diverged; see the messages above")
    summary, paired = summarize(rows, seeds, reference)
    tables = markdown_tables(summary, paired, seeds, reference)
    metrics = evaluated[0].metrics
    protocol = (f"{dataset.name}, {base.model} network, seeds {', '.join(map(str, seeds))}; verification: "
                f"{metrics['num_folds']} folds, {metrics['num_pairs']} pairs, and all pairs of "
                f"{metrics['all_pairs']['num_images']} images ({metrics['all_pairs']['num_genuine_pairs']} "
                f"genuine, {metrics['all_pairs']['num_impostor_pairs']} impostor); DIR@FAR=1e-2 with "
                f"{metrics['open_set_impostor_probes']} impostor probes")
    with open(os.path.join(out_dir, "comparison.md"), "w") as file:
        file.write(f"# Loss comparison\n\n{protocol}\n\n{tables}\n")
    with open(os.path.join(out_dir, "comparison.json"), "w") as file:
        json.dump({"protocol": protocol, "config": dataclasses.asdict(base), "seeds": list(seeds),
                   "reference": reference.name, "summary": summary, "paired": paired,
                   "runs": [{"entry": r.entry.name, "title": entry_title(r.entry), "seed": r.seed,
                             "steps": r.steps, "train_seconds": r.train_seconds, "metrics": r.metrics,
                             "diverged": r.diverged} for r in rows]},
                  file, indent=2)
    curves = {}
    for row in evaluated:
        if row.seed == seeds[0]:
            far, tar, _ = roc_curve(row.scores, dataset.pair_same)
            curves[entry_title(row.entry)] = (far, tar)
    figures.plot_roc_curves(curves, os.path.join(out_dir, "figures", "roc.png"))
    return tables


def check_layout(entries, out_dir: str) -> None:
    """A comparison directory of an earlier amnp kept one seed's runs in DIR/<entry>; the
    runs now live in DIR/seed-S/<entry>.  Refuse such a directory, saying how to reuse it."""
    for entry in entries:
        old = os.path.join(out_dir, entry.name, "config.json")
        if os.path.exists(old):
            raise ValueError(f"{out_dir} holds a one-seed comparison of an earlier amnp ({old}); to reuse "
                             f"its runs move each {out_dir}/<entry> to {out_dir}/seed-<its seed>/<entry>, "
                             "or choose another --out")


def compare(entries, base: TrainConfig, load_dataset, out_dir: str, seeds=None, reference: str | None = None,
            progress=None, sphere_steps: int | None = None) -> str:
    """Train and evaluate every entry at every seed (``load_dataset(seed)`` gives the seed's
    data; default seeds: ``[base.seed]``; given seeds replace it, and comparison.json records
    the first), then write the tables and figures; returns the tables.  A stop signal (Ctrl-C, SIGTERM, SIGHUP) raises Interrupted after saving the run
    in progress: run again with the same out_dir to continue, and with more seeds to add
    them (finished runs are reused)."""
    seeds = [base.seed] if seeds is None else list(seeds)
    if not seeds or len(set(seeds)) < len(seeds):
        raise ValueError(f"seeds must be distinct and at least one, got {seeds}")
    base = dataclasses.replace(base, seed=seeds[0])
    reference_entry = find_reference(entries, reference)
    check_layout(entries, out_dir)
    os.makedirs(out_dir, exist_ok=True)
    rows, total, first_dataset = [], len(entries) * len(seeds), None
    for s, seed in enumerate(seeds):
        dataset = load_dataset(seed)
        if first_dataset is None:
            first_dataset = dataset
        for number, entry in enumerate(entries, 1):
            position = f"[{s * len(entries) + number}/{total}]"
            rows.append(train_entry(entry, dataclasses.replace(base, seed=seed), dataset,
                                    seed_dir(out_dir, seed), position, progress))
    tables = write_comparison(rows, out_dir, first_dataset, base, seeds, reference_entry)
    figure_dir = os.path.join(out_dir, "figures")
    figures.plot_target_logits(os.path.join(figure_dir, "target_logits.png"))
    print(f"features on the sphere: {len(entries)} SphereFace-4 networks with a 3-d embedding", flush=True)
    panels = sphere_features(entries, first_dataset, seeds[0],
                             steps=SPHERE_STEPS if sphere_steps is None else sphere_steps)
    figures.plot_features_on_sphere(panels, os.path.join(figure_dir, "features_on_sphere.png"))
    return tables


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
        batches = np.random.default_rng(stream_seed(seed, "sphere features"))
        for step in range(steps):
            index = asarray(batches.choice(len(rows), min(SPHERE_BATCH, len(rows)), replace=False))
            with value_checks(False):  # labels 0 .. identities − 1 by construction, as in training
                sgd_step(model, optimizer, x[index], labels[index], schedule(step), step)
        with inference_mode():
            features, _ = l2_normalize_forward(net.forward(x))
        panels[entry_title(entry)] = (to_numpy(features), labels_host)
    return panels
