"""The training loop and its run directory.

A run directory holds:
    config.json      the TrainConfig, as given
    data.json        what the run was trained on, checked on resume and eval (amnp.rundir)
    metrics.jsonl    one JSON object per logged step
    checkpoint.npz   parameters, momentum, step (see amnp.checkpoint)
    eval.json        held-out verification and identification results
    figures/         curves, ROC, pair-score histograms, sample images
    .lock            held by the one process writing the run, with its pid (amnp.rundir.hold)

Every random choice is a pure function of (seed, step): the minibatch of step t
comes from the permutation of its epoch, drawn from a generator seeded with
(seed, epoch), and its mirror flips from one seeded with (seed, t).  So a run
resumed from a checkpoint sees exactly the batches the uninterrupted run would
have seen, and on NumPy ends with bit-for-bit the same parameters.

On several processes (``comm``, a communicator of amnp.distributed) the global batch of step
t is the single-process batch of step t, split into equal contiguous parts, one per rank;
the loss is the global batch's mean, so each rank's gradients are its share of the global
gradient and are summed over ranks (one all-reduce per step, which also carries the ranks'
stop votes), and every rank applies the same update.  The head is replicated, or sharded by
classes (``sharded_head``), which may sample its classes (``config.sample_rate`` < 1, Partial
FC's approximation; the draws are a function of (seed, rank, step)).  Rank 0 alone writes
the run directory; the checkpoint holds the sharded head gathered, so its layout does not
depend on the number of ranks.

Within a process, a rank's batch may be split again over threads (``threads``, amnp.parallel):
the same sum of shares, one level down, before the all-reduce.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import threading
import time
import warnings

import numpy as np
from tqdm import tqdm

from . import checkpoint, models, rundir
from .backend import asarray, get_array_module, get_backend, to_numpy
from .config import TrainConfig, steps_per_epoch
from .data.prefetch import Prefetcher
from .distributed import (Communicator, ShardedMarginHead, SingleProcess, all_reduce_gradients, build_sharded_head,
                          class_range)
from .heads import TrainingModel
from .init import stream_seed
from .inference import preprocess
from .optim import SGD, scaled_paper_schedule
from .parallel import ThreadReplicas, blas_threads, blas_threads_per_process
from .rundir import read_metrics, write_metrics
from .validation import NonFiniteError, class_labels, finite, value_checks


class TrainingDiverged(RuntimeError):
    """The loss or a parameter became NaN or Inf at ``step``; the message names it."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


# The signals that stop a run as Ctrl-C does: a scheduler's preemption or `kill` (SIGTERM)
# and a closed terminal (SIGHUP, which Windows does not have).
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class Interrupted(KeyboardInterrupt):
    """One of STOP_SIGNALS ended the work; ``signum`` says which.  A KeyboardInterrupt, so
    whatever ends a program on Ctrl-C ends it on SIGTERM and SIGHUP too.  ``every_rank``:
    all ranks of a distributed run agreed to stop (see Trainer.train), so none is left waiting."""

    def __init__(self, signum: int, every_rank: bool = False):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.every_rank = signum, every_rank


def catch_stop_signals(handler):
    """Route each of STOP_SIGNALS to ``handler(signum)``; returns the function that puts the
    previous handlers back.  A signal that is ignored stays ignored: SIGINT in a background
    job (`&`), SIGHUP under nohup are not meant for us.  Outside the main thread, where
    Python delivers no signals, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {}
    for signum in STOP_SIGNALS:
        current = signal.getsignal(signum)
        if current is not None and current != signal.SIG_IGN:  # None: set outside Python, left alone
            previous[signum] = current
            signal.signal(signum, lambda number, frame: handler(number))

    def restore():
        for signum, old in previous.items():
            signal.signal(signum, old)

    return restore


class Trainer:
    """Builds the network, head, optimizer and schedule of a TrainConfig and runs the loop.

    One step: minibatch → net.forward → head.forward (loss) → head.backward →
    net.backward → optimizer.step(lr).  A new run begins with ``start`` (which writes
    config.json, data.json and the step-0 checkpoint into ``out_dir``), a resumed one with
    ``resume``; the caller holds the directory meanwhile (amnp.rundir.hold).

    ``comm``: the ranks to train on together (see the module docstring); every rank makes
    its Trainer with the same config and dataset and calls the same methods.
    ``config.batch_size`` is the global batch, which the number of ranks must divide.
    ``sharded_head``: each rank holds a contiguous slice of the classes of a margin head
    (amnp.distributed.ShardedMarginHead) instead of the whole head, and samples its classes
    at ``config.sample_rate`` (a rate < 1 needs a sharded head).  ``dtype``: of the
    parameters and the images (float32; float64 for exactness tests).  ``threads``: split
    each rank's batch over this many threads of the process (amnp.parallel; NumPy only, and
    not with a sharded head, whose collectives run once per rank).  Where several of the ranks'
    processes share a machine, the loop runs with its cores divided among them
    (``blas_threads``, from amnp.parallel.blas_threads_per_process; None: the BLAS library's own).
    """

    def __init__(self, config: TrainConfig, dataset, out_dir: str, progress: bool | None = None,
                 comm: Communicator | None = None, sharded_head: bool = False, dtype=np.float32,
                 threads: int = 1):
        if config.backend is None:  # a bad AMNP_BACKEND raises here, never falls back to numpy
            config = dataclasses.replace(config, backend=get_backend())
        config.validate()
        if config.backend != get_backend():
            raise ValueError(f"the run trains on {config.backend} but the current backend is {get_backend()}: "
                             f"choose it first (amnp.set_backend({config.backend!r}) or amnp.use_backend)")
        self.comm = SingleProcess() if comm is None else comm
        if config.batch_size % self.comm.size:
            raise ValueError(f"batch-size {config.batch_size} is the global batch, split evenly over the "
                             f"{self.comm.size} ranks, which do not divide it: choose a multiple of {self.comm.size}")
        self.writer = self.comm.rank == 0  # rank 0 alone writes the run directory and prints
        self.config, self.dataset, self.out_dir, self.dtype = config, dataset, out_dir, dtype
        self.progress = self.writer and (sys.stderr.isatty() if progress is None else progress)
        rng = np.random.default_rng(config.seed)
        net = models.build(config.model, dataset.image_shape, dtype=dtype, rng=rng)
        if sharded_head:
            head = build_sharded_head(config.loss, models.embedding_size(net), dataset.num_classes, self.comm,
                                      dtype=dtype, rng=rng, sample_rate=config.sample_rate,
                                      sample_rng=self.class_sampling_rng(0), **config.loss_options)
        elif config.sample_rate < 1:
            raise ValueError(f"sample-rate {config.sample_rate} samples the classes of a sharded head, and this "
                             "run's head is not sharded: train (or resume) it with --distributed --sharded-head")
        else:
            head = config.build_head(models.embedding_size(net), dataset.num_classes, rng=rng, dtype=dtype)
        self.model = TrainingModel(net, head)
        if sharded_head and threads != 1:
            raise ValueError(f"threads={threads}: a sharded head runs its collectives once per rank, "
                             "so its batch cannot be split over threads; use one thread per rank")
        self.replicas = ThreadReplicas(self.model, threads)
        self.blas_threads = blas_threads_per_process(self.comm.processes_on_node)  # None: the library's own
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
        # The batches come from the dataset's reader; one that reads from disk (a decoded
        # folder) is read ahead of the step that needs it (self._prefetcher, while train runs).
        self.images = dataset.batch_reader()
        self.train_labels = asarray(dataset.train_labels.astype(np.int64))
        self._prefetcher = None
        self._epoch_order = (None, None)  # (epoch, its permutation): see epoch_order
        self.stopped_by = None  # the stop signal that interrupted train, if one did
        self._stop_votes = 0.0  # the ranks that had a stop signal before the last step's all-reduce

    # ------------------------------------------------------------------ batches
    def epoch_order(self, epoch: int) -> np.ndarray:
        """The order of the training images in ``epoch``, a permutation drawn from (seed, epoch)
        once per epoch: drawing it takes 5 ms at 60k images and 24 ms at CASIA-WebFace's 494k,
        too much to repeat at every step.  The prefetch thread may ask for the next epoch a
        step or two early; the two threads then draw it again at worst, never another one."""
        cached_epoch, order = self._epoch_order
        if cached_epoch != epoch:
            order = np.random.default_rng(stream_seed(self.config.seed, "epoch order", epoch)).permutation(
                self.num_train)
            self._epoch_order = (epoch, order)  # one assignment: a reader sees a matching pair
        return order

    def batch_indices(self, step: int) -> np.ndarray:
        """The images of step ``step`` on the rank: its part of the global batch."""
        epoch, position = divmod(step, self.steps_per_epoch)
        order = self.epoch_order(epoch)
        b = self.config.batch_size
        return order[position * b:(position + 1) * b][self._local_rows()]

    def class_sampling_rng(self, step: int) -> np.random.Generator:
        """The generator of this rank's class sampling in step ``step`` (``config.sample_rate``
        < 1), drawn from (seed, rank, step) as the batches are from (seed, step): a resumed run
        samples the classes the uninterrupted run would have, on the same number of ranks."""
        return np.random.default_rng(stream_seed(self.config.seed, "class sampling", self.comm.rank, step))

    def _local_rows(self) -> slice:
        local = self.config.batch_size // self.comm.size
        return slice(self.comm.rank * local, (self.comm.rank + 1) * local)

    def batch(self, step: int):
        xp = get_array_module(self.train_labels)
        index = xp.asarray(self.batch_indices(step))
        images = xp.asarray(self._prefetcher.get(step) if self._prefetcher else self.read_batch(step))
        mirror = None
        if self.dataset.mirror:  # drawn for the global batch, so that each rank flips its rows as one process does
            flips = np.random.default_rng(stream_seed(self.config.seed, "mirror flips", step)).random(
                self.config.batch_size) < 0.5
            mirror = xp.asarray(flips[self._local_rows()])
        return preprocess(images, mirror).astype(self.dtype, copy=False), self.train_labels[index]

    def read_batch(self, step: int):
        """The uint8 images of step ``step`` on the rank, from the dataset's batch reader."""
        return self.images.read(self.batch_indices(step))

    # ------------------------------------------------------------------ files
    def path(self, name: str) -> str:
        return os.path.join(self.out_dir, name)

    def save_checkpoint(self) -> None:
        """Write the checkpoint, unless a parameter went NaN or Inf: that would overwrite the
        last good one with a useless one (TrainingDiverged instead).  On several ranks every
        rank calls it: a sharded head is gathered, every rank checks the whole state (so all
        raise together), and rank 0 writes."""
        params, velocity = self._gathered_state()
        for name, value in params.items():
            try:
                finite(value, "training", f"parameter {name}")
            except NonFiniteError as exc:
                raise self._diverged(exc, self.step) from None
        if self.writer:
            checkpoint.write(self.path("checkpoint.npz"), params, velocity,
                             {"step": self.step, "config": dataclasses.asdict(self.config),
                              "image_shape": list(self.dataset.image_shape), "mirror": self.dataset.mirror})

    def _sharded_names(self) -> list[str]:
        """The parameters that each rank holds a slice of (rows: classes)."""
        return ["head.classifier.weight"] if isinstance(self.model.head, ShardedMarginHead) else []

    def _class_counts(self) -> list[int]:
        num_classes = self.dataset.num_classes
        return [stop - start for start, stop in (class_range(num_classes, self.comm.size, rank)
                                                 for rank in range(self.comm.size))]

    def _gathered_state(self) -> tuple[dict, dict]:
        """(parameters, momentum) by name, as one process holds them: the sharded slices
        gathered from every rank."""
        params = {name: owner.params[key] for name, owner, key in self.model.named_parameters()}
        velocity = dict(self.optimizer.velocity)
        for name in self._sharded_names():
            for state in (params, velocity):
                if name in state:  # no momentum before the first step, on every rank alike
                    state[name] = self.comm.all_gather(state[name], self._class_counts())
        return params, velocity

    def _load_checkpoint(self) -> dict:
        """Load the run's checkpoint, each rank keeping its slice of a sharded head."""
        path = self.path("checkpoint.npz")
        params, velocity, meta = checkpoint.read(path)
        start, stop = class_range(self.dataset.num_classes, self.comm.size, self.comm.rank)
        for name in self._sharded_names():
            for state in (params, velocity):
                if name in state and state[name].ndim == 2:  # another shape: refused by assign, naming it
                    state[name] = state[name][start:stop]
        checkpoint.assign(path, self.model, self.optimizer, params, velocity)
        return meta

    def start(self) -> None:
        """Begin a new run in the run directory (which the caller holds, see
        amnp.rundir.hold): write config.json, data.json and a step-0 checkpoint, in that
        order and each whole or not at all, so that a run killed at any point can resume."""
        if self.writer:
            os.makedirs(self.out_dir, exist_ok=True)
            rundir.write_json(self.path("config.json"), dataclasses.asdict(self.config))
        self._first_checkpoint()

    def _first_checkpoint(self) -> None:
        if self.writer:
            rundir.write_data_record(self.out_dir, self.dataset, self.config.dataset)
        self.save_checkpoint()

    def resume(self) -> None:
        """Continue the run (the caller holds its directory) from its checkpoint, on the data
        it was trained on (amnp.rundir.check_data); logged steps after the checkpoint are
        dropped.  A run stopped before its first checkpoint was written had trained nothing:
        it starts at step 0."""
        records = read_metrics(self.path("metrics.jsonl"))
        # every rank reads the same files, so all of them take the same branch
        if os.path.exists(self.path("checkpoint.npz")):
            if self.writer:
                rundir.check_data(self.out_dir, self.dataset, self.config.dataset, resuming=True)
            self.step = self._load_checkpoint()["step"]
        else:
            if records and self.writer:  # not stopped before it: the checkpoint was lost
                warnings.warn(f"{self.path('checkpoint.npz')} is missing: the run starts again from "
                              "step 0, and trains again the steps metrics.jsonl logged", stacklevel=2)
            self._first_checkpoint()
        if self.writer:
            write_metrics(self.path("metrics.jsonl"), [r for r in records if r["step"] <= self.step])

    # ------------------------------------------------------------------ the loop
    def train_step(self, step: int):
        """One SGD step; returns this rank's parts of the global batch's (loss, margin-free
        accuracy, mean target cosine), device scalars that sum over the ranks to the global
        values (``_read_window`` sums them).  The rank's batch runs through the model's
        ``forward_backward`` in parts, one per thread (``self.replicas``), whose gradients sum
        to the rank's; the ranks' are summed by one all-reduce; every rank applies the same
        update.

        Nothing in a step reads a value back from the device, which on a GPU would stall it
        until it caught up: the labels were checked once in __init__, so the loss skips its
        value checks, and finiteness is checked once per window of steps (``_read_window``).
        On several ranks the stop votes are read after the step's all-reduce: one number,
        which on CuPy (NCCL) is read back from the device, so the host waits there each step
        for the step's all-reduce to finish before it queues the next step.
        """
        x, y = self.batch(step)
        global_batch = self.config.batch_size
        sharded = isinstance(self.model.head, ShardedMarginHead)
        if sharded and self.model.head.sample_rate < 1:
            self.model.head.sample_rng = self.class_sampling_rng(step)

        def part(model, x, y):
            head = model.head
            # a replicated head's loss is the part's mean: its share of the global mean is n_part / N
            share = 1.0 if sharded else len(y) / global_batch
            with value_checks(False):
                loss = model.forward_backward(x, y, step, share)
            if sharded:  # the same global values on every rank: counted once, on rank 0
                weight = 1.0 if self.comm.rank == 0 else 0.0
                return loss * weight, head.correct().mean() * weight, head.target_cosines().mean() * weight
            correct = (head.scores.argmax(axis=1) == y).sum() / global_batch
            return loss * share, correct, head.target_cosines().sum() / global_batch

        values = [sum(value) for value in zip(*self.replicas.run(part, x, y))]
        if self.comm.size > 1:
            self._all_reduce_gradients(self.model)
        self.optimizer.step(self.schedule(step))
        return tuple(values)

    def _all_reduce_gradients(self, model) -> None:
        """Sum the gradients over the ranks, in one buffer with the ranks' stop votes (a
        sharded head's gradients are complete on each rank already)."""
        owners = model.net if isinstance(model.head, ShardedMarginHead) else model
        gradients = [owner.grads[key] for _, owner, key in owners.named_parameters()]
        vote = get_array_module(gradients[0]).full(1, self.stopped_by is not None, dtype=gradients[0].dtype)
        all_reduce_gradients(self.comm, gradients + [vote])
        self._stop_votes = float(to_numpy(vote)[0])  # on a GPU: a read back from the device, each step

    def _stopping(self) -> bool:
        """Whether the loop stops before the next step: a stop signal here, or, on several
        ranks, on any rank before the last step's all-reduce, so that all stop at one step."""
        return self.stopped_by is not None if self.comm.size == 1 else self._stop_votes > 0

    def train(self, stop_at: int | None = None) -> str:
        """Train up to the last step (or ``stop_at``); returns "finished", "stopped" or
        "interrupted".  Raises TrainingDiverged on a non-finite loss or parameters, keeping
        the last good checkpoint untouched: the losses of the steps since the last log are
        read (one transfer) and checked before any checkpoint is written.

        A stop signal (Ctrl-C, SIGTERM, SIGHUP: STOP_SIGNALS) sets ``stopped_by`` to its
        number; the loop checks it between steps, so it never stops halfway through an
        update, saves a checkpoint of the last step trained and returns "interrupted".  On
        several ranks a signal on any rank stops every rank after the same step (the votes
        ride in the step's all-reduce); ``stopped_by`` is then the largest signal number
        among the ranks' on every rank."""
        end = self.total_steps if stop_at is None else min(stop_at, self.total_steps)
        self.stopped_by, self._stop_votes = None, 0.0
        restore_signal_handlers = catch_stop_signals(self._stop)
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not self.progress,
                   unit="step", dynamic_ncols=True, file=sys.stderr)
        if self.images.read_ahead:
            self._prefetcher = Prefetcher(self.read_batch, end)
        try:
            with blas_threads(self.blas_threads):  # the job's processes on this node share its cores
                self._train_until(end, bar)
        finally:
            if self._prefetcher is not None:
                self._prefetcher.close()
                self._prefetcher = None
            bar.close()
            restore_signal_handlers()
        if self.stopped_by is not None:
            return "interrupted"
        return "finished" if self.step >= self.total_steps else "stopped"

    def _train_until(self, end: int, bar) -> None:
        """The steps of ``train`` up to ``end`` or a stop signal, logging and checkpointing
        as due, then the last window's check and a checkpoint of the last step trained."""
        window = []
        window_start = time.perf_counter()
        while self.step < end and not self._stopping():
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
                if self.writer and not self.progress and self.step % self.steps_per_epoch < self.config.log_every:
                    print(format_record(record, self.step / self.steps_per_epoch), flush=True)
                window, window_start = [], time.perf_counter()
        self._read_window(window)
        self.save_checkpoint()
        if self.comm.size > 1 and self._stop_votes > 0:
            signums = self.comm.all_reduce(asarray(np.array([self.stopped_by or 0])), "max")
            self.stopped_by = int(to_numpy(signums)[0])

    def _read_window(self, window) -> np.ndarray:
        """The (loss, accuracy, target cosine) of each step since the last log, (steps, 3),
        summed over the ranks in one all-reduce, on the host in one transfer; raises
        TrainingDiverged naming the first non-finite loss (on every rank alike)."""
        if not window:
            return np.zeros((0, 3))
        xp = get_array_module(*window[0])
        values = to_numpy(self.comm.all_reduce(xp.stack([xp.stack([xp.asarray(v, dtype=xp.float64) for v in step])
                                                         for step in window])))
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

    def _stop(self, signum: int) -> None:
        """The handler of the stop signals while train runs (see train)."""
        self.stopped_by = signum

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
        if not self.writer:
            return record
        with open(self.path("metrics.jsonl"), "a") as file:
            file.write(json.dumps(record) + "\n")
        return record


def sgd_step(model: TrainingModel, optimizer: SGD, x, labels, lr: float, step: int):
    """One step of SGD on the batch (x, labels): ``model.forward_backward``, then one update
    at ``lr``.  Returns the loss, a 0-d array on the device."""
    loss = model.forward_backward(x, labels, step)
    optimizer.step(lr)
    return loss


def format_record(record: dict, epoch: float) -> str:
    return (f"epoch {epoch:5.2f}  step {record['step']:6d}  loss {record['loss']:.4f}  "
            f"acc {record['accuracy']:.3f}  target cos {record['mean_target_cosine']:.3f}  "
            f"lr {record['lr']:.3g}  {record['images_per_s']:.0f} img/s")
