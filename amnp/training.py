"""The training loop, its run directory, and evaluation of a trained network.

A run directory holds:
    config.json      the TrainConfig, as given
    metrics.jsonl    one JSON object per logged step
    checkpoint.npz   parameters, momentum, step (see amnp.checkpoint)
    eval.json        held-out verification and identification results
    figures/         curves, ROC, pair-score histograms, sample images

Every random choice is a pure function of (seed, step): the minibatch of step t
comes from the permutation of its epoch, drawn from a generator seeded with
(seed, epoch), and its mirror flips from one seeded with (seed, t).  So a run
resumed from a checkpoint sees exactly the batches the uninterrupted run would
have seen, and on NumPy ends with bit-for-bit the same parameters.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from . import checkpoint, figures, models
from .backend import BACKENDS, asarray, get_array_module, get_backend, set_backend, to_numpy
from .data import DiskImages, make_gallery_probes, make_open_set_protocol
from .data.prefetch import Prefetcher
from .evaluation import roc_curve
from .heads import TrainingModel, build_head, resolve_loss_options
from .optim import SGD, scaled_paper_schedule
from .statistics import evaluate_with_intervals
from .validation import NonFiniteError, class_labels, finite


@dataclass
class TrainConfig:
    """Everything that defines a run.  Defaults: the small preset on the glyph dataset.

    ``loss_options`` are the options of the loss (amnp.heads.LOSSES); ``validate``
    fills in the defaults of those not given, so config.json records every value.
    """
    dataset: str = "glyphs"
    image_size: list[int] | None = None  # (H, W) to resize a folder dataset's images to
    grayscale: bool = False              # read a folder dataset as 1 channel
    model: str = "small"
    loss: str = "am-softmax"
    loss_options: dict = dataclasses.field(default_factory=dict)
    iters: int | None = None
    epochs: float | None = 10.0
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup: int = 100
    backend: str | None = None  # None: the current backend (AMNP_BACKEND, else numpy)
    seed: int = 0
    log_every: int = 20
    checkpoint_every: int = 500

    def validate(self) -> None:
        """Refuse impossible settings before any data is loaded or any file written."""
        kind, _ = parse_dataset_spec(self.dataset)
        if self.image_size is not None and not (
                len(self.image_size) == 2 and all(int(d) == d and d >= 1 for d in self.image_size)):
            raise ValueError(f"image-size must be two positive integers H,W, got {self.image_size}")
        if kind != "folder" and (self.image_size is not None or self.grayscale):
            raise ValueError(f"image-size and grayscale apply to folder datasets only; "
                             f"{self.dataset} images have a fixed size and channels")
        if self.model not in models.PRESETS:
            raise ValueError(f"unknown model {self.model!r}; expected one of {', '.join(models.PRESETS)}")
        self.loss_options = resolve_loss_options(self.loss, self.loss_options)
        for name in ("batch_size", "log_every", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        if self.iters is not None and self.iters < 1:
            raise ValueError(f"iters must be a positive integer, got {self.iters}")
        if self.iters is None and not (self.epochs is not None and 0 < self.epochs < math.inf):
            raise ValueError(f"epochs must be a finite number > 0, got {self.epochs}")
        if not 0 < self.lr < math.inf:
            raise ValueError(f"the learning rate must be a finite number > 0, got {self.lr}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if self.backend is not None and self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; expected one of {', '.join(BACKENDS)}")

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """A config from config.json, including those written before losses had their own
        options (m, s, margin_ramp and conditional_margin at the top level)."""
        values = dict(values)
        legacy = {key: values.pop(key) for key in LEGACY_LOSS_KEYS if key in values}
        if legacy and values.get("loss", cls.loss) == "am-softmax":
            values["loss_options"] = {**legacy, **values.get("loss_options", {})}
        return cls(**values)

    def total_steps(self, num_train_images: int) -> int:
        if self.iters is not None:
            return int(self.iters)
        return max(1, math.ceil(self.epochs * steps_per_epoch(num_train_images, self.batch_size)))


LEGACY_LOSS_KEYS = ("m", "s", "margin_ramp", "conditional_margin")
DATASET_KINDS = ("glyphs", "folder:PATH", "mnist:PATH")


def parse_dataset_spec(spec: str) -> tuple[str, str]:
    """"glyphs" -> ("glyphs", ""), "folder:PATH" -> ("folder", PATH), "mnist:PATH" -> ("mnist", PATH)."""
    kind, _, path = spec.partition(":")
    if (kind == "glyphs" and not path) or (kind in ("folder", "mnist") and path):
        return kind, path
    raise ValueError(f"unknown dataset {spec!r}; expected one of {', '.join(DATASET_KINDS)}")


def steps_per_epoch(num_images: int, batch_size: int) -> int:
    """Full batches per pass over the data (the last partial batch is dropped)."""
    return max(1, num_images // batch_size)


def preprocess(images_uint8, mirror_mask=None):
    """uint8 (N, C, H, W) -> float32 (x − 127.5) / 128, as the paper; rows of mirror_mask
    (bool (N,)) are flipped left-right.  Works on either backend."""
    xp = get_array_module(images_uint8)
    x = (images_uint8.astype(xp.float32) - 127.5) / 128.0
    if mirror_mask is not None:
        x = xp.where(mirror_mask[:, None, None, None], x[..., ::-1], x)
    return x


class TrainingDiverged(RuntimeError):
    """The loss or a parameter became NaN or Inf at ``step``; the message names it."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class Trainer:
    """Builds the network, head, optimizer and schedule of a TrainConfig and runs the loop.

    One step: minibatch → net.forward → head.forward (loss) → head.backward →
    net.backward → optimizer.step(lr).  The run directory ``out_dir`` must exist
    before ``train`` (the CLI creates it and writes config.json).
    """

    def __init__(self, config: TrainConfig, dataset, out_dir: str, progress: bool | None = None):
        if config.backend is None:  # a bad AMNP_BACKEND raises here, never falls back to numpy
            config = dataclasses.replace(config, backend=get_backend())
        config.validate()
        set_backend(config.backend)
        self.config, self.dataset, self.out_dir = config, dataset, out_dir
        self.progress = sys.stderr.isatty() if progress is None else progress
        rng = np.random.default_rng(config.seed)
        net = models.build(config.model, dataset.image_shape, rng=rng)
        head = build_head(config.loss, models.embedding_size(net), dataset.num_classes, rng=rng,
                          **config.loss_options)
        self.model = TrainingModel(net, head)
        self.optimizer = SGD(self.model, config.momentum, config.weight_decay)
        self.num_train = len(dataset.train_labels)
        if config.batch_size > self.num_train:
            raise ValueError(
                f"batch-size {config.batch_size} is larger than the {self.num_train} training images")
        self.total_steps = config.total_steps(self.num_train)
        self.steps_per_epoch = steps_per_epoch(self.num_train, config.batch_size)
        self.schedule = scaled_paper_schedule(self.total_steps, config.lr, min(config.warmup, self.total_steps))
        self.step = 0
        # Checked once here, so that no step has to read labels back from the device.
        class_labels(dataset.train_labels, self.num_train, dataset.num_classes, "the training set")
        # An in-memory training set moves to the device once, as uint8, and each step only
        # indexes it; one kept on disk (a decoded folder) is read a batch at a time, ahead of
        # the step that needs it (self._prefetcher, while train runs), and each batch moves.
        self.streams = isinstance(dataset.train_images, DiskImages)
        self.train_images = dataset.train_images if self.streams else asarray(dataset.train_images)
        self.train_labels = asarray(dataset.train_labels.astype(np.int64))
        self._prefetcher = None
        self._interrupted = False

    # ------------------------------------------------------------------ batches
    def batch_indices(self, step: int) -> np.ndarray:
        epoch, position = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng([self.config.seed, 1, epoch]).permutation(self.num_train)
        b = self.config.batch_size
        return order[position * b:(position + 1) * b]

    def batch(self, step: int):
        xp = get_array_module(self.train_labels)
        index = xp.asarray(self.batch_indices(step))
        if self.streams:
            images = xp.asarray(self._prefetcher.get(step) if self._prefetcher
                                else self.read_batch(step))
        else:
            images = self.train_images[index]
        mirror = None
        if self.dataset.mirror:
            flips = np.random.default_rng([self.config.seed, 2, step]).random(len(index)) < 0.5
            mirror = xp.asarray(flips)
        return preprocess(images, mirror), self.train_labels[index]

    def read_batch(self, step: int) -> np.ndarray:
        """The uint8 images of step ``step``, read from disk (a training set kept there)."""
        return self.train_images[self.batch_indices(step)]

    # ------------------------------------------------------------------ files
    def path(self, name: str) -> str:
        return os.path.join(self.out_dir, name)

    def save_checkpoint(self) -> None:
        """Write the checkpoint, unless a parameter went NaN or Inf: that would overwrite the
        last good one with a useless one (TrainingDiverged instead)."""
        for name, owner, key in self.model.named_parameters():
            try:
                finite(owner.params[key], "training", f"parameter {name}")
            except NonFiniteError as exc:
                raise self._diverged(exc, self.step) from None
        checkpoint.save(self.path("checkpoint.npz"), self.model, self.optimizer,
                        {"step": self.step, "config": dataclasses.asdict(self.config),
                         "image_shape": list(self.dataset.image_shape), "mirror": self.dataset.mirror})

    def start(self) -> None:
        """Begin a new run: create the run directory, write config.json and a step-0
        checkpoint, so that a run killed before its first checkpoint can still resume."""
        os.makedirs(self.out_dir, exist_ok=True)
        with open(self.path("config.json"), "w") as file:
            json.dump(dataclasses.asdict(self.config), file, indent=2)
        self.save_checkpoint()

    def resume(self) -> None:
        """Continue from the run directory's checkpoint; logged steps after it are dropped."""
        meta = checkpoint.load(self.path("checkpoint.npz"), self.model, self.optimizer)
        self.step = int(meta["step"])
        records = read_metrics(self.path("metrics.jsonl"))
        write_metrics(self.path("metrics.jsonl"), [r for r in records if r["step"] <= self.step])

    # ------------------------------------------------------------------ the loop
    def train_step(self, step: int):
        """One SGD step; returns device scalars (loss, margin-free accuracy, mean target cosine).

        Nothing in a step reads a value back from the device, which on a GPU would stall it
        until it caught up: the labels were checked once in __init__, so the loss skips its
        value checks, and finiteness is checked once per window of steps (``_read_window``).
        """
        net, head = self.model.net, self.model.head
        x, y = self.batch(step)
        head.set_step(step)
        loss = head.forward(net.forward(x), y, check_values=False)
        net.backward(head.backward())
        self.optimizer.step(self.schedule(step))
        correct = (head.scores.argmax(axis=1) == y).mean()
        return loss, correct, head.target_cosines().mean()

    def train(self, stop_at: int | None = None) -> str:
        """Train up to the last step (or ``stop_at``); returns "finished", "stopped" or
        "interrupted".  Raises TrainingDiverged on a non-finite loss or parameters, keeping
        the last good checkpoint untouched: the losses of the steps since the last log are
        read (one transfer) and checked before any checkpoint is written."""
        end = self.total_steps if stop_at is None else min(stop_at, self.total_steps)
        restore_interrupt_handler = self._catch_interrupts()
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not self.progress,
                   unit="step", dynamic_ncols=True, file=sys.stderr)
        window = []
        window_start = time.perf_counter()
        if self.streams:
            self._prefetcher = Prefetcher(self.read_batch, end)
        try:
            while self.step < end and not self._interrupted:
                window.append(self.train_step(self.step))
                self.step += 1
                bar.update(1)
                log_due = self.step % self.config.log_every == 0 or self.step == end
                checkpoint_due = self.step % self.config.checkpoint_every == 0
                if not (log_due or checkpoint_due):
                    continue
                values = self._read_window(window)
                if checkpoint_due:
                    self.save_checkpoint()
                if log_due:
                    record = self._log(values, time.perf_counter() - window_start)
                    bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['accuracy']:.3f}",
                                    cos=f"{record['mean_target_cosine']:.3f}", lr=f"{record['lr']:.3g}",
                                    img_s=f"{record['images_per_s']:.0f}")
                    if not self.progress and self.step % self.steps_per_epoch < self.config.log_every:
                        print(format_record(record, self.step / self.steps_per_epoch), flush=True)
                    window, window_start = [], time.perf_counter()
            self._read_window(window)
            self.save_checkpoint()
        finally:
            if self._prefetcher is not None:
                self._prefetcher.close()
                self._prefetcher = None
            bar.close()
            restore_interrupt_handler()
        if self._interrupted:
            return "interrupted"
        return "finished" if self.step >= self.total_steps else "stopped"

    def _read_window(self, window) -> np.ndarray:
        """The (loss, accuracy, target cosine) of each step since the last log, (steps, 3), on
        the host in one transfer; raises TrainingDiverged naming the first non-finite loss."""
        if not window:
            return np.zeros((0, 3))
        xp = get_array_module(*window[0])
        values = to_numpy(xp.stack([xp.stack([xp.asarray(v, dtype=xp.float64) for v in step])
                                    for step in window]))
        bad = np.flatnonzero(~np.isfinite(values[:, 0]))
        if bad.size:
            first = self.step - len(window) + int(bad[0])
            raise self._diverged(f"the loss is {values[bad[0], 0]}", first)
        return values

    def _diverged(self, reason, step: int) -> TrainingDiverged:
        kept = ("the last good checkpoint is kept in " + self.path("checkpoint.npz")
                if os.path.exists(self.path("checkpoint.npz")) else "no checkpoint was written yet")
        return TrainingDiverged(f"training diverged at step {step}: {reason}; {kept}. "
                                "Try a smaller learning rate, or the loss's gentler settings "
                                "(a smaller s, a margin ramp; amnp margins lists them).", step)

    def _catch_interrupts(self):
        """Ctrl-C sets a flag that the loop checks between steps, so it never stops halfway
        through an update and the checkpoint it saves is consistent.  Returns the function
        that puts the previous handler back."""
        def handler(signum, frame):
            self._interrupted = True

        previous = signal.getsignal(signal.SIGINT)
        if previous == signal.SIG_IGN:  # a background job (nohup, `&`): Ctrl-C is not for us
            return lambda: None
        try:
            signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread: Ctrl-C cannot reach us anyway
            return lambda: None
        return lambda: signal.signal(signal.SIGINT, previous)

    def _log(self, values, elapsed) -> dict:
        """Append the window's means (``values`` from _read_window) to metrics.jsonl."""
        loss, accuracy, cosine = values.mean(axis=0)
        record = {
            "step": self.step,
            "epoch": self.step / self.steps_per_epoch,
            "loss": float(loss),
            "accuracy": float(accuracy),
            "mean_target_cosine": float(cosine),
            "lr": self.schedule(self.step - 1),
            "images_per_s": len(values) * self.config.batch_size / max(elapsed, 1e-9),
        }
        # the member's schedule values (m of a ramp, SphereFace's λ, a learned s)
        record.update({name: float(to_numpy(value)) for name, value in self.model.head.schedule().items()})
        with open(self.path("metrics.jsonl"), "a") as file:
            file.write(json.dumps(record) + "\n")
        return record


def format_record(record: dict, epoch: float) -> str:
    return (f"epoch {epoch:5.2f}  step {record['step']:6d}  loss {record['loss']:.4f}  "
            f"acc {record['accuracy']:.3f}  target cos {record['mean_target_cosine']:.3f}  "
            f"lr {record['lr']:.3g}  {record['images_per_s']:.0f} img/s")


def read_metrics(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as file:
        return [json.loads(line) for line in file if line.strip()]


def write_metrics(path: str, records: list[dict]) -> None:
    with open(path, "w") as file:
        file.writelines(json.dumps(r) + "\n" for r in records)


# ---------------------------------------------------------------------- evaluation

def embed(net, images_uint8, mirror: bool, batch_size: int = 256) -> np.ndarray:
    """Embeddings (N, D) on the host for uint8 images; with ``mirror`` the embedding of each
    image is summed with that of its mirror image (the AM-Softmax deploy net)."""
    chunks = []
    for start in range(0, len(images_uint8), batch_size):
        x = preprocess(asarray(images_uint8[start:start + batch_size]))
        e = net.forward(x)
        if mirror:
            e = e + net.forward(x[..., ::-1])
        chunks.append(to_numpy(e))
    return np.concatenate(chunks).astype(np.float64)


def held_out_metrics(net, images_uint8, labels, pairs, pair_same, pair_fold, mirror: bool, seed: int,
                     gallery=None, probes=None):
    """Every protocol of amnp.evaluation on held-out images: verification on the given
    pairs and folds and on all pairs of images, closed-set identification on
    ``gallery``/``probes`` (drawn from the labels with the seed when not given) and open-set
    DIR@FAR on a protocol drawn from the labels with the seed, each with a bootstrap
    interval over identities (amnp.statistics).  Returns (metrics dict, pair scores)."""
    embeddings = embed(net, images_uint8, mirror)
    if gallery is None:
        gallery, probes = make_gallery_probes(labels, np.random.default_rng([seed, 3]))
    gallery_open, genuine, impostors = make_open_set_protocol(labels, np.random.default_rng([seed, 4]))
    metrics, scores = evaluate_with_intervals(
        embeddings, labels, pairs, pair_same, pair_fold, gallery, probes,
        open_set=(gallery_open, np.concatenate([genuine, impostors])), seed=seed)
    metrics["mirror_fused"] = bool(mirror)
    return metrics, scores


def evaluate(net, dataset, out_dir: str, seed: int = 0) -> tuple[dict, np.ndarray]:
    """Held-out verification (10-fold), TAR@FAR, EER, closed-set identification and open-set
    DIR@FAR; writes eval.json and the ROC and pair-score figures.  Returns the metrics and
    the cosine score of each pair."""
    metrics, scores = held_out_metrics(
        net, dataset.test_images, dataset.test_labels, dataset.pairs, dataset.pair_same,
        dataset.pair_fold, dataset.mirror, seed, dataset.gallery, dataset.probes)
    with open(os.path.join(out_dir, "eval.json"), "w") as file:
        json.dump(metrics, file, indent=2)
    far, tar, _ = roc_curve(scores, dataset.pair_same)
    figure_dir = os.path.join(out_dir, "figures")
    figures.plot_roc(far, tar, os.path.join(figure_dir, "roc.png"), tar_at_far=metrics["tar_at_far"])
    figures.plot_pair_histograms(scores, dataset.pair_same, os.path.join(figure_dir, "pair_cosines.png"),
                                 threshold=float(np.mean(metrics["fold_thresholds"])))
    return metrics, scores
