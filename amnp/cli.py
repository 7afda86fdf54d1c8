"""The ``amnp`` command: ``amnp train``, ``amnp eval DIR``, ``amnp embed DIR``, ``amnp verify DIR``.

Every expected failure (bad options, missing data, a checkpoint that does not
fit, a diverging run, running out of host or device memory) ends with one line
``amnp: error: ...`` and a non-zero exit code, never a traceback, and never
overwrites a previous run.

A run directory has one writer at a time: ``amnp train`` (new or ``--resume``)
and ``amnp eval DIR`` on a directory that another process is writing fail at once
(exit 1), naming that process; ``embed``, ``verify`` and ``eval --pairs`` only
read the run and need no lock.  ``--resume`` and ``eval DIR`` refuse a dataset
that changed since the run was trained where the change matters (amnp.rundir).

Exit codes: 0 done; 1 bad input (or out of memory: the line names the model, the
batch size and what to lower); 3 training diverged; 128 + the signal's number when
a stop signal ended the command, as shells report a process killed by it: 130
Ctrl-C (SIGINT), 143 SIGTERM (``kill``, a scheduler's preemption), 129 SIGHUP (the
terminal closed).  Training stops between steps and saves a checkpoint of the last
step trained first (continue with ``amnp train --resume DIR``; ``amnp compare``
with the same --out); any other command just ends.  A signal the command was
started with ignored (SIGINT in a background job, SIGHUP under nohup) stays
ignored.  AMNP_DEBUG=1 shows the traceback behind an error.

``amnp train --distributed`` runs under ``mpiexec -n P python -m mpi4py -m amnp train
--distributed ...``: P ranks train one run (amnp.training), rank 0 alone printing and
writing the run directory; ``--sharded-head`` splits the margin head's classes over the
ranks, and ``--sample-rate R`` < 1 samples them (Partial FC, an approximation); with
``--backend cupy`` each rank trains on its own GPU through NCCL.  An error that every rank
meets is printed once, by rank 0; an error on one rank alone is printed by that rank
("amnp: error: rank R of P: ...") and ends the whole job (MPI_Abort) with the exit code
above.  A stop signal on any rank stops every rank after the same step, with one checkpoint,
and every rank exits 128 + its number.
"""
from __future__ import annotations

import argparse
import dataclasses
import contextlib
import json
import math
import os
import re
import signal
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from . import checkpoint, data, figures, rundir
from .allocator import keep_freed_memory
from .backend import get_backend, set_backend
from .compare import DEFAULT_ENTRIES, DEFAULT_EPOCHS, DEFAULT_SEEDS, compare, parse_entry, parse_seeds
from .config import LOSSES, OptionError, TrainConfig, read_config
from .distributed import SingleProcess, communicator_for
from .inference import EMBED_BATCH, evaluate, features, held_out_metrics
from .run import load_run
from .rundir import read_metrics
from .statistics import all_pairs_with_intervals, percent_with_interval
from .training import Interrupted, Trainer, TrainingDiverged, catch_stop_signals
from .validation import NonFiniteError

EXIT_BAD_INPUT, EXIT_DIVERGED = 1, 3
EXIT_INTERRUPTED = 128 + signal.SIGINT  # Ctrl-C; any stop signal ends with 128 + its number

# the options of `amnp train --resume DIR`; every other setting is the run's own
RESUME_OPTIONS = ("--resume", "--backend", "--threads", "--stop-at", "--no-eval", "--distributed",
                  "--sharded-head")
STILL_APPLY_ON_RESUME = ", ".join(RESUME_OPTIONS[1:-1]) + " and " + RESUME_OPTIONS[-1]


class UsageError(Exception):
    pass


def open_dataset(config: TrainConfig):
    """The VerificationDataset of a validated config: glyphs, folder:PATH or mnist:PATH.  A
    folder is decoded once into the dataset cache and trained on from there, so it need not
    fit in memory."""
    kind, path = config.dataset_spec
    if kind == "glyphs":
        return data.load_glyphs(seed=config.seed, progress=sys.stderr.isatty())
    if kind == "folder":
        return data.load_folder_dataset(path, seed=config.seed, image_size=config.image_size,
                                        grayscale=config.grayscale, cache_dir=data.default_cache_dir() / "folders",
                                        progress=sys.stderr.isatty())
    return data.load_mnist_dataset(path, seed=config.seed)


def parse_image_size(text: str | None):
    """"H,W" -> [H, W] (None stays None)."""
    if text is None:
        return None
    try:
        height, width = (int(part) for part in text.split(","))
    except ValueError:
        raise UsageError(f"--image-size takes two integers H,W (e.g. 112,96), got {text!r}") from None
    if height < 1 or width < 1:
        raise UsageError(f"--image-size must be positive, got {text!r}")
    return [height, width]


def add_image_options(command, what: str) -> None:
    """The options that say how to read images for a run's network."""
    command.add_argument("--grayscale", action="store_true",
                         help=f"read {what} as 1 channel (for a network trained on grayscale images)")
    command.add_argument("--image-size", metavar="H,W", default=None,
                         help=f"resize {what} to H,W (bilinear, as training does)")
    command.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=None,
                         help="fuse each image's features with its mirror's (default: as the run's "
                              "dataset: faces yes, glyphs and digits no)")
    command.add_argument("--backend", default=None,
                         help="numpy (CPU) or cupy (GPU) (default: AMNP_BACKEND, else numpy)")
    add_threads_option(command, "the images of each batch", "")


def add_threads_option(command, what: str, also: str) -> None:
    command.add_argument("--threads", type=int, default=1, metavar="P",
                         help=f"split {what} over P threads of this process, each with one BLAS thread "
                              f"(numpy backend; P = the cores is fastest{also}) (default 1: one thread, and the "
                              "BLAS library's own threads)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="amnp", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    defaults = TrainConfig()

    train = commands.add_parser(
        "train", help="train an embedding network with AM-Softmax (defaults: glyphs, small preset, CPU)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    train.add_argument("--dataset", default=defaults.dataset, help="glyphs, folder:PATH or mnist:PATH")
    train.add_argument("--image-size", metavar="H,W", default=None,
                       help="folder datasets: resize every image to H,W (needed when sizes differ)")
    train.add_argument("--grayscale", action="store_true", help="folder datasets: read images as 1 channel")
    train.add_argument("--model", default=defaults.model, help="small, sphereface4/10/20/36/64")
    train.add_argument("--loss", default=defaults.loss, help=", ".join(LOSSES))
    add_loss_options(train)
    length = train.add_mutually_exclusive_group()
    length.add_argument("--iters", type=int, default=None, help="number of SGD steps")
    length.add_argument("--epochs", type=float, default=None, help=f"passes over the data (default {defaults.epochs})")
    train.add_argument("--batch-size", type=int, default=defaults.batch_size)
    train.add_argument("--lr", type=float, default=defaults.lr, help="base learning rate (paper schedule, scaled)")
    train.add_argument("--backend", default=None,
                       help="numpy (CPU) or cupy (GPU) (default: the resumed run's, else AMNP_BACKEND, else numpy)")
    add_threads_option(train, "each batch, and the evaluation's",
                       "; the results differ from one thread's by float rounding only")
    train.add_argument("--seed", type=int, default=defaults.seed)
    train.add_argument("--out", default=None, help="run directory (default runs/<dataset>-<loss>-<time>)")
    train.add_argument("--resume", metavar="DIR", default=None,
                       help=f"continue the run in DIR with its saved settings (only {STILL_APPLY_ON_RESUME} "
                            "still apply)")
    train.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                       help="stop at this step with a checkpoint (continue later with --resume)")
    train.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation at the end")
    train.add_argument("--distributed", action="store_true",
                       help="train on the ranks of the MPI job: mpiexec -n P python -m mpi4py -m amnp train "
                            "--distributed ...; --batch-size is the global batch (needs mpi4py: pip install "
                            "\"amnp[dist]\")")
    train.add_argument("--sharded-head", action="store_true",
                       help="with --distributed: each rank holds a slice of the margin head's classes")
    train.add_argument("--sample-rate", type=float, default=None, metavar="R",
                       help="with --sharded-head: Partial FC's class sampling, an approximation: each step's "
                            "softmax runs over the batch's classes and random others, R of each rank's "
                            f"classes, 0 < R <= 1 (default {defaults.sample_rate:g}: every class)")

    evaluate_cmd = commands.add_parser(
        "eval", help="re-evaluate a saved run on its held-out identities, or on an LFW-layout tree",
        allow_abbrev=False)
    evaluate_cmd.add_argument("run_dir", metavar="DIR")
    evaluate_cmd.add_argument("--pairs", metavar="PAIRS_TXT", default=None,
                              help="LFW-style pairs.txt (its folds); needs --images")
    evaluate_cmd.add_argument("--images", metavar="ROOT", default=None,
                              help="LFW-layout image tree ROOT/<name>/<name>_0001.jpg; needs --pairs")
    evaluate_cmd.add_argument("--all-pairs", action="store_true",
                              help="with --images ROOT (an identity-folder tree, no --pairs): TAR@FAR and "
                                   "EER over every pair of its images, with bootstrap intervals")
    evaluate_cmd.add_argument("--out", metavar="FILE", default=None,
                              help="with --pairs or --all-pairs: the JSON to write (default "
                                   "DIR/eval-<name of ROOT>.json, DIR/eval-all-pairs-<name of ROOT>.json)")
    add_image_options(evaluate_cmd, "the images")

    embed_cmd = commands.add_parser("embed", help="L2-normalised features of every image of a tree")
    embed_cmd.add_argument("run_dir", metavar="DIR")
    embed_cmd.add_argument("--images", metavar="ROOT", required=True,
                           help="image tree ROOT/<identity>/<image>.png|.jpg")
    embed_cmd.add_argument("--out", metavar="FILE", default=None,
                           help="the .npz to write (default DIR/embeddings-<name of ROOT>.npz)")
    add_image_options(embed_cmd, "the images")

    verify_cmd = commands.add_parser(
        "verify", help="are two images the same identity? (cosine and the run's threshold)")
    verify_cmd.add_argument("run_dir", metavar="DIR")
    verify_cmd.add_argument("image_a", metavar="IMAGE_A")
    verify_cmd.add_argument("image_b", metavar="IMAGE_B")
    add_image_options(verify_cmd, "both images")

    compare_cmd = commands.add_parser(
        "compare", help="the paper's experiment: train the same network with each loss, one table")
    compare_cmd.add_argument("--out", default=os.path.join("runs", "compare"),
                             help="directory of the comparison; run again with it to continue")
    compare_cmd.add_argument("--losses", default=",".join(DEFAULT_ENTRIES), metavar="LIST",
                             help="comma-separated entries LOSS[:OPTION=VALUE...], e.g. am-softmax:m=0.3")
    compare_length = compare_cmd.add_mutually_exclusive_group()
    compare_length.add_argument("--epochs", type=float, default=None,
                                help=f"passes over the data for each run (default {DEFAULT_EPOCHS:g})")
    compare_length.add_argument("--iters", type=int, default=None, help="number of SGD steps of each run")
    compare_cmd.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    compare_cmd.add_argument("--seeds", "--seed", default=",".join(map(str, DEFAULT_SEEDS)), metavar="LIST",
                             help="comma-separated seeds; each trains every loss on its own data, "
                                  "initialisation and batches")
    compare_cmd.add_argument("--reference", default=None, metavar="ENTRY",
                             help="the loss the others are compared with, seed by seed "
                                  "(default am-softmax if compared, else the first)")
    compare_cmd.add_argument("--backend", default=None,
                             help="numpy (CPU) or cupy (GPU) (default: AMNP_BACKEND, else numpy)")

    margins_cmd = commands.add_parser(
        "margins", help="list the losses of the margin family and draw their target logits ψ(θ)")
    margins_cmd.add_argument("--out", default="target_logits.png", help="PNG file for the figure")
    return parser


def compare_command(args) -> int:
    entries = [parse_entry(text) for text in args.losses.split(",") if text.strip()]
    if not entries:
        raise UsageError("--losses names no loss")
    if len({entry.name for entry in entries}) < len(entries):
        raise UsageError(f"--losses names an entry twice: {args.losses}")
    seeds = parse_seeds(args.seeds)
    base = TrainConfig(epochs=DEFAULT_EPOCHS if args.epochs is None else args.epochs, iters=args.iters,
                       batch_size=args.batch_size, seed=seeds[0], backend=args.backend)
    if args.iters is not None:
        base.epochs = None
    base.validate()
    choose_backend(base)
    print(f"comparing {len(entries)} losses at {len(seeds)} seed(s) on {base.dataset} in {args.out}")
    try:
        table = compare(entries, base, lambda seed: open_dataset(dataclasses.replace(base, seed=seed)),
                        args.out, seeds=seeds, reference=args.reference)
    except KeyboardInterrupt:
        print(f"interrupted; finished runs are kept, continue with: amnp compare --out {args.out} "
              "(and the same options)")
        raise
    print(table)
    print(f"results in {args.out}: comparison.md, comparison.json, figures/, one run directory per loss")
    return 0


def margins_command(args) -> int:
    for spec in LOSSES.values():
        defaults = ", ".join(f"{o.name}={o.default}" for o in spec.options) or "no options"
        print(f"{spec.name:<11} target logit {spec.target_logit}\n{'':<11} {defaults}")
    print(f"target-logit figure: {figures.plot_target_logits(args.out)}")
    return 0


# The flags of the loss options that are not "--" + the name with dashes.
LOSS_OPTION_FLAGS = {"normalize_features": "--no-feature-normalization",
                     "m1": "--margins", "m2": "--margins", "m3": "--margins"}
MARGINS_FLAG = "--margins"


def loss_option_flag(name: str) -> str:
    """The flag of the loss option ``name`` (amnp.config.LOSSES)."""
    return LOSS_OPTION_FLAGS.get(name, "--" + name.replace("_", "-"))


def add_loss_options(parser) -> None:
    """One flag per option name of the loss registry (amnp.config.LOSSES); a flag shared by
    several losses says what it means for each.  Flags left out stay out of the namespace,
    so only the options given reach the loss, and one it does not take is an error."""
    uses = {}
    for spec in LOSSES.values():
        for option in spec.options:
            uses.setdefault(loss_option_flag(option.name), []).append((spec.name, option))
    for cli_flag, members in uses.items():
        meanings = {}
        for loss, o in members:
            default = "" if isinstance(o.default, bool) else f", default {o.default}"
            meanings.setdefault(f"{o.help}{default}", []).append(loss)
        described = "; ".join(f"{', '.join(losses)}: {meaning}" for meaning, losses in meanings.items())
        option = members[0][1]
        if cli_flag == MARGINS_FLAG:
            defaults = ",".join(f"{o.default:g}" for _, o in members)
            parser.add_argument(cli_flag, metavar="M1,M2,M3", default=argparse.SUPPRESS,
                                help=f"combined: ψ = cos(m1·θ + m2) − m3, default {defaults}")
        elif isinstance(option.default, bool):
            parser.add_argument(cli_flag, dest=option.name, default=argparse.SUPPRESS,
                                action="store_false" if option.default else "store_true", help=described)
        else:
            parser.add_argument(cli_flag, dest=option.name, type=float, default=argparse.SUPPRESS,
                                help=described)


def loss_options_from_args(args) -> dict:
    """The loss options given on the command line; --margins M1,M2,M3 gives m1, m2, m3."""
    names = {option.name for spec in LOSSES.values() for option in spec.options}
    given = {name: value for name, value in vars(args).items() if name in names}
    if hasattr(args, "margins"):
        parts = args.margins.split(",")
        try:
            m1, m2, m3 = (float(part) for part in parts)
        except ValueError:
            raise UsageError(f"--margins takes three numbers M1,M2,M3, got {args.margins!r}") from None
        given.update(m1=m1, m2=m2, m3=m3)
    return given


def config_from_args(args) -> TrainConfig:
    config = TrainConfig(dataset=args.dataset, image_size=parse_image_size(args.image_size),
                         grayscale=args.grayscale, model=args.model, loss=args.loss,
                         loss_options=loss_options_from_args(args),
                         batch_size=args.batch_size, lr=args.lr,
                         backend=args.backend, seed=args.seed)
    if args.sample_rate is not None:
        config.sample_rate = args.sample_rate
    if args.iters is not None:
        config.iters, config.epochs = args.iters, None
    elif args.epochs is not None:
        config.epochs = args.epochs
    try:
        config.validate()
    except OptionError as exc:  # named by its flag, which is what the user wrote
        raise UsageError(exc.naming(lambda name: f"{name} ({loss_option_flag(name)})")) from None
    return config


def choose_backend(config: TrainConfig) -> None:
    """Without --backend (or a resumed run's), AMNP_BACKEND if set, else numpy; a bad name
    or a missing CuPy is an error here, before any data is loaded."""
    if config.backend is None:
        config.backend = get_backend()
    set_backend(config.backend)


def new_run_dir(config: TrainConfig, out: str | None) -> str:
    """--out, else runs/<dataset>-<loss>-<time>."""
    if out is None:
        name = config.dataset.split(":")[0]
        out = os.path.join("runs", f"{name}-{config.loss}-{time.strftime('%Y%m%d-%H%M%S')}")
    return out


def refuse_existing_run(out: str) -> None:
    """Never overwrite a run (checked while holding ``out``: another process may be starting one)."""
    if os.path.exists(os.path.join(out, "checkpoint.npz")) or os.path.exists(os.path.join(out, "config.json")):
        raise UsageError(f"{out} already holds a run; continue it with --resume {out} or choose another --out")


def summary(metrics: dict) -> str:
    """One line; the protocol's real size is in it (folds, pairs, and whether folds share
    identities), so a small protocol never reads like LFW's; each number is followed by
    its 95% bootstrap interval over identities."""
    tar, ci = metrics["tar_at_far"], metrics["intervals"]
    folds = f"{metrics['num_folds']} folds" + (" sharing identities" if metrics["folds_share_identities"] else "")
    line = (f"held-out verification accuracy {percent_with_interval(metrics['verification_accuracy'], ci['verification_accuracy'])} "
            f"± {100 * metrics['verification_accuracy_std']:.2f} ({folds}, {metrics['num_pairs']} pairs); "
            f"TAR@FAR=1e-2 {percent_with_interval(tar['1e-2'], ci['tar_at_far']['1e-2'])}, "
            f"TAR@FAR=1e-3 {percent_with_interval(tar['1e-3'], ci['tar_at_far']['1e-3'])}; "
            f"EER {percent_with_interval(metrics['eer'], ci['eer'])}; "
            f"identification top-1 {percent_with_interval(metrics['identification_top1'], ci['identification_top1'])}")
    impostors, allowed = metrics["open_set_impostor_probes"], metrics["dir_impostors_allowed"]["1e-2"]
    resolution = (f"{allowed} of {impostors} impostor probes may pass" if allowed else
                  f"only {impostors} impostor probes, so this is FAR=0")
    line += f"; DIR@FAR=1e-2 {percent_with_interval(metrics['dir_at_far']['1e-2'], ci['dir_at_far']['1e-2'])} ({resolution})"
    return line + "; " + all_pairs_summary(metrics["all_pairs"])


def all_pairs_summary(all_pairs: dict) -> str:
    """All-pairs TAR@FAR and EER with intervals; a FAR that lets no impostor pass is
    named as unresolved."""
    tar, ci, allowed = all_pairs["tar_at_far"], all_pairs["intervals"], all_pairs["impostors_allowed"]
    resolved = [far for far in tar if allowed[far] > 0]
    unresolved = [far for far in tar if allowed[far] == 0]
    text = (f"all {all_pairs['num_genuine_pairs']} genuine and {all_pairs['num_impostor_pairs']} impostor pairs of "
            f"{all_pairs['num_images']} images: "
            + ", ".join(f"TAR@FAR={far} {percent_with_interval(tar[far], ci['tar_at_far'][far])}" for far in resolved)
            + (", " if resolved else "") + f"EER {percent_with_interval(all_pairs['eer'], ci['eer'])}")
    if unresolved:
        text += (f" (FAR={', '.join(unresolved)} not resolved: "
                 f"{all_pairs['num_impostor_pairs']} impostor pairs)")
    return text + " [95% intervals: bootstrap over identities]"


def sample_indices(labels, identities=8, per_identity=8):
    """Indices of the first images of a few identities spread over the label range: one row
    of the sample grid per identity shows the variation the network has to ignore."""
    classes = np.unique(labels)
    chosen = classes[np.linspace(0, len(classes) - 1, min(identities, len(classes))).astype(int)]
    return np.concatenate([np.flatnonzero(labels == c)[:per_identity] for c in chosen])


def report(run_dir: str, net, dataset, seed: int, threads: int) -> dict:
    """Evaluate (embedding on ``threads`` threads), write eval.json and every figure, print
    the summary."""
    metrics, _ = evaluate(net, dataset, run_dir, seed, threads)
    figure_dir = os.path.join(run_dir, "figures")
    records = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
    if records:
        figures.plot_training_curves(records, os.path.join(figure_dir, "training_curves.png"))
    shown = sample_indices(dataset.train_labels)
    figures.plot_sample_grid(dataset.train_images[shown], dataset.train_labels[shown],
                             os.path.join(figure_dir, "samples.png"), class_names=dataset.class_names)
    print(summary(metrics))
    print(f"results in {run_dir}: eval.json, metrics.jsonl, checkpoint.npz, figures/")
    return metrics


def options_written(argv, allowed) -> list[str]:
    """The options written in ``argv`` other than ``allowed``, sorted, whatever their values:
    one given with its default value was still asked for.  (The parsers take no
    abbreviations and parsed ``argv`` already, so every option appears under its own name.)"""
    return sorted({token.split("=", 1)[0] for token in argv if token.startswith("--")} - set(allowed))


def train_command(args) -> int:
    args.comm = communicator(args)
    if args.resume is not None:
        ignored = options_written(args.argv, RESUME_OPTIONS)
        if ignored:
            raise UsageError(
                f"--resume continues {args.resume} with its saved settings, so {', '.join(ignored)} "
                f"cannot apply; on resume only {STILL_APPLY_ON_RESUME} do")
        config = read_config(args.resume)
        if args.backend is not None:
            config.backend = args.backend
            config.validate()
        run_dir = args.resume
    else:
        config = config_from_args(args)
        run_dir = new_run_dir(config, args.out)
    choose_backend(config)
    comm = communicator_for(config.backend, args.comm)  # on cupy, NCCL over the MPI job
    run_dir = comm.broadcast_object(run_dir)  # rank 0's: a default name holds the time
    writer = comm.rank == 0
    # rank 0 alone holds the directory, before anything is read or written there
    with rundir.hold(run_dir, "training") if writer else contextlib.nullcontext():
        if args.resume is None and writer:
            refuse_existing_run(run_dir)
        dataset = open_dataset_in_turn(comm, config)
        trainer = Trainer(config, dataset, run_dir, comm=comm, sharded_head=args.sharded_head, threads=args.threads)
        if args.resume is not None:
            trainer.resume()
            if writer:
                print(f"resuming {run_dir} at step {trainer.step} of {trainer.total_steps}")
        else:
            trainer.start()
        return train_held(args, trainer, dataset)


def communicator(args):
    """The processes that train: the MPI job's with --distributed, else this one (the host
    communicator: amnp.distributed.communicator_for chooses the one that moves the arrays)."""
    if args.sample_rate is not None and not args.sharded_head:
        raise UsageError("--sample-rate samples the classes of a sharded head: it needs --distributed --sharded-head")
    if not args.distributed:
        if args.sharded_head:
            raise UsageError("--sharded-head splits the head's classes over the ranks of --distributed")
        return SingleProcess()
    from .distributed.mpi import MPICommunicator  # imports mpi4py, which only --distributed needs
    return MPICommunicator()


def open_dataset_in_turn(comm, config: TrainConfig):
    """open_dataset on every rank, rank 0 first: a folder is decoded into the dataset cache
    once, by rank 0, and the other ranks read it from there."""
    if comm.rank == 0:
        dataset = open_dataset(config)
    comm.barrier()
    return dataset if comm.rank == 0 else open_dataset(config)


def train_held(args, trainer: Trainer, dataset) -> int:
    """Train the started or resumed run of ``trainer``, whose directory the caller holds,
    and evaluate it at the end."""
    config, run_dir, comm = trainer.config, trainer.out_dir, trainer.comm
    say = print if trainer.writer else lambda *args, **kwargs: None
    options = ", ".join(f"{name}={value}" for name, value in config.loss_options.items())
    sampling = f", sampling {config.sample_rate:g} of its classes" if config.sample_rate < 1 else ""
    threads = f", {trainer.replicas.threads} threads" if trainer.replicas.threads > 1 else ""
    cores = (f", {trainer.blas_threads} BLAS thread{'s' if trainer.blas_threads > 1 else ''} each"
             if trainer.blas_threads else "")
    ranks = (f" on {comm.size} ranks{' with the head sharded' + sampling if args.sharded_head else ''}{cores}"
             if args.distributed else "")
    say(f"training {config.model} with {config.loss} ({options or 'no options'}) on {dataset.name}: "
        f"{len(dataset.train_labels)} images of {dataset.num_classes} identities, "
        f"{trainer.total_steps} steps of {config.batch_size} on {config.backend}{threads}{ranks}; "
        f"run directory {run_dir}")
    first_step, started = trainer.step, time.perf_counter()
    status = trainer.train(stop_at=args.stop_at)
    seconds = time.perf_counter() - started
    images = (trainer.step - first_step) * config.batch_size
    say(f"{status} at step {trainer.step} after {seconds:.0f} s "
        f"({images / max(seconds, 1e-9):.0f} images/s over this run)")
    if status != "finished":
        say(f"checkpoint saved; continue with: amnp train --resume {run_dir}", flush=True)
        if status == "interrupted":
            raise Interrupted(trainer.stopped_by, every_rank=comm.size > 1)
        return 0
    if not args.no_eval and trainer.writer:
        report(run_dir, trainer.model.net, dataset, config.seed, trainer.replicas.threads)
    return 0


def check_input(shape, run, run_dir: str, where: str) -> None:
    """Images of ``shape`` (C, H, W) must be what the run's network takes; otherwise one
    error that names the option that fixes it."""
    (channels, height, width), (want_c, want_h, want_w) = tuple(shape), run.image_shape
    fixes = []
    if (height, width) != (want_h, want_w):
        fixes.append(f"pass --image-size {want_h},{want_w}")
    if channels != want_c:
        fixes.append("pass --grayscale" if want_c == 1 else "leave out --grayscale")
    if fixes:
        raise UsageError(f"{where} gives {channels}x{height}x{width} (CxHxW) images but the network "
                         f"of {run_dir} takes {want_c}x{want_h}x{want_w}; {' and '.join(fixes)}")


def image_options(args, run):
    """(image_size, grayscale, mirror) from the options; mirror defaults to the run's."""
    return (parse_image_size(args.image_size), args.grayscale,
            run.mirror if args.mirror is None else args.mirror)


def open_run(args):
    """The run's network on the chosen backend (no trainer, no optimizer, no training data);
    a NaN or Inf parameter (a damaged checkpoint) is refused: its features would be meaningless."""
    set_backend(args.backend or get_backend())
    return load_run(args.run_dir)


def run_features(run_dir: str, net, images_uint8, mirror: bool, threads: int) -> np.ndarray:
    """amnp.inference.features, its error naming the run."""
    try:
        return features(net, images_uint8, mirror, threads)
    except NonFiniteError as exc:
        raise UsageError(f"the network of {run_dir} {exc}") from None


def eval_command(args) -> int:
    if args.all_pairs:
        return eval_all_pairs(args)
    if (args.pairs is None) != (args.images is None):
        raise UsageError("--pairs PAIRS_TXT and --images ROOT go together: the pairs name images under ROOT")
    if args.pairs is None:
        given = options_written(args.argv, ("--backend", "--threads", "--pairs", "--images"))
        if given:
            raise UsageError(f"{', '.join(given)} apply only with --pairs and --images; without them "
                             f"eval re-evaluates the run on its own held-out identities")
        return eval_held_out(args)
    run = open_run(args)
    image_size, grayscale, mirror = image_options(args, run)
    out = args.out or os.path.join(args.run_dir, f"eval-{Path(args.images).resolve().name}.json")
    pairs = data.load_lfw_pairs(args.pairs, args.images, image_size=image_size, grayscale=grayscale)
    check_input(pairs.test_images.shape[1:], run, args.run_dir, f"--images {args.images}")
    print(f"evaluating {args.run_dir} at step {run.step} on {args.pairs}: "
          f"{len(pairs.test_images)} images of {len(pairs.identity_names)} identities"
          f"{', mirror-fused' if mirror else ''}")
    metrics, _ = held_out_metrics(run.net, pairs.test_images, pairs.test_labels, pairs.pairs,
                                  pairs.pair_same, pairs.pair_fold, mirror, run.config.seed, threads=args.threads)
    rundir.write_json(out, metrics)
    print(summary(metrics))
    print(f"results in {out}")
    return 0


def eval_all_pairs(args) -> int:
    """Every pair of images of an identity-folder tree, scored with the run's network."""
    if args.images is None or args.pairs is not None:
        raise UsageError("--all-pairs takes --images ROOT (ROOT/<identity>/<image>) and no --pairs: "
                         "every pair of its images is scored")
    run = open_run(args)
    image_size, grayscale, mirror = image_options(args, run)
    out = args.out or os.path.join(args.run_dir, f"eval-all-pairs-{Path(args.images).resolve().name}.json")
    folder = data.load_image_folder(args.images, image_size=image_size, grayscale=grayscale)
    check_input(folder.images.shape[1:], run, args.run_dir, f"--images {args.images}")
    print(f"evaluating {args.run_dir} at step {run.step} on every pair of {len(folder.labels)} images of "
          f"{len(folder.class_names)} identities under {args.images}{', mirror-fused' if mirror else ''}")
    metrics = all_pairs_with_intervals(run_features(args.run_dir, run.net, folder.images, mirror, args.threads),
                                       folder.labels, run.config.seed)
    metrics["mirror_fused"] = bool(mirror)
    rundir.write_json(out, metrics)
    print(all_pairs_summary(metrics))
    print(f"results in {out}")
    return 0


def eval_held_out(args) -> int:
    """Re-evaluate on the run's own held-out identities: the dataset is reopened because
    the held-out split is drawn from all its identities; figures are redrawn."""
    run = open_run(args)
    config = run.config
    with rundir.hold(args.run_dir, "evaluating"):  # eval.json and figures/ are the trainer's files too
        dataset = open_dataset(config)
        rundir.check_data(args.run_dir, dataset, config.dataset, resuming=False)
        print(f"evaluating {args.run_dir} at step {run.step}")
        report(args.run_dir, run.net, dataset, config.seed, args.threads)
    return 0


def embed_command(args) -> int:
    run = open_run(args)
    image_size, grayscale, mirror = image_options(args, run)
    out = args.out or os.path.join(args.run_dir, f"embeddings-{Path(args.images).resolve().name}.npz")
    folder = data.load_image_folder(args.images, image_size=image_size, grayscale=grayscale)
    check_input(folder.images.shape[1:], run, args.run_dir, f"--images {args.images}")
    found = run_features(args.run_dir, run.net, folder.images, mirror, args.threads).astype(np.float32)
    with open(out, "wb") as file:  # a file object: np.savez would add ".npz" to a path without it
        np.savez(file, features=found, paths=np.array(folder.paths), labels=folder.labels,
                 identities=np.array(folder.class_names))
    print(f"{len(found)} images of {len(folder.class_names)} identities -> {out}: features "
          f"{found.shape[0]}x{found.shape[1]} (L2-normalised{', mirror-fused' if mirror else ''}), "
          "paths, labels, identities")
    return 0


def stored_threshold(run_dir: str) -> tuple[dict, float]:
    """(eval.json of the run, its decision threshold), or one error that says what is wrong
    with the file and that `amnp eval` rewrites it."""
    eval_json = os.path.join(run_dir, "eval.json")
    rewrite = f"run `amnp eval {run_dir}` to rewrite it"
    if not os.path.isfile(eval_json):
        raise UsageError(f"{eval_json} holds no decision threshold; run `amnp eval {run_dir}` first")
    with open(eval_json) as file:
        try:
            stored = json.load(file)
        except ValueError as exc:
            raise UsageError(f"{eval_json} is not valid JSON ({exc}); {rewrite}") from None
    if not isinstance(stored, dict) or "threshold" not in stored:
        raise UsageError(f"{eval_json} holds no decision threshold; {rewrite}")
    threshold = stored["threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise UsageError(f"{eval_json}: the threshold {threshold!r} is not a finite number; {rewrite}")
    return stored, float(threshold)


def verify_command(args) -> int:
    stored, threshold = stored_threshold(args.run_dir)
    eval_json = os.path.join(args.run_dir, "eval.json")
    run = open_run(args)
    image_size, grayscale, mirror = image_options(args, run)
    if mirror != stored.get("mirror_fused", run.mirror):
        raise UsageError(f"the threshold in {eval_json} was chosen on features "
                         f"{'with' if stored.get('mirror_fused') else 'without'} mirror fusion; "
                         f"drop --{'no-' if not mirror else ''}mirror")
    images = []
    for path in (args.image_a, args.image_b):
        try:
            image = data.read_image(path, grayscale=grayscale, image_size=image_size)
        except (OSError, ValueError, SyntaxError) as exc:
            raise UsageError(f"cannot read image {path} ({exc})") from None
        check_input(image.shape, run, args.run_dir, path)
        images.append(image)
    found = run_features(args.run_dir, run.net, np.stack(images), mirror, args.threads)
    cosine = float(found[0] @ found[1])
    decision = "same identity" if cosine >= threshold else "different identities"
    print(f"cosine {cosine:.4f}, threshold {threshold:.4f} (chosen on the held-out pairs of "
          f"{args.run_dir}): {decision}")
    return 0


COMMANDS = {"train": train_command, "eval": eval_command, "embed": embed_command, "verify": verify_command,
            "compare": compare_command, "margins": margins_command}


def plain_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings (skipped unreadable images, a reduced pairs protocol) as one plain line."""
    print(f"amnp: warning: {message}", file=sys.stderr)


# cudaErrorMemoryAllocation "out of memory", CUDA_ERROR_OUT_OF_MEMORY, CUBLAS_STATUS_ALLOC_FAILED,
# CURAND_STATUS_ALLOCATION_FAILED, ...: how CUDA and its libraries say an allocation failed.
DEVICE_ALLOCATION_FAILED = re.compile(r"out[ _]of[ _]memory|alloc(ation)?_failed|MemoryAllocation", re.I)


def exhausted_memory(exc: BaseException) -> str | None:
    """"host" or "device" when ``exc`` says that memory ran out, else None.  NumPy raises
    MemoryError; CuPy raises its OutOfMemoryError (a MemoryError) from the memory pool and
    a CUDA or cuBLAS error for an allocation that fails inside a library call.  CuPy's
    exceptions are told by their module, so CuPy is never imported to recognise them."""
    on_device = (type(exc).__module__ or "").startswith(("cupy", "cupy_backends"))
    if isinstance(exc, MemoryError):
        return "device" if on_device else "host"
    if on_device and DEVICE_ALLOCATION_FAILED.search(str(exc)):
        return "device"
    return None


def out_of_memory(args, where: str, exc: BaseException) -> str:
    """The error line for running out of ``where`` memory: what the command was doing (the
    model and batch size) and what to lower."""
    if args.command in ("eval", "embed", "verify"):
        what = f"embedding images with {read_config(args.run_dir).model} in batches of {EMBED_BATCH}"
        lower = "free memory" + (", or use --backend numpy" if where == "device" else "")
    elif args.command == "train" and args.resume is not None:
        config = read_config(args.resume)
        what = f"training {config.model} at batch size {config.batch_size}"
        lower = ("a resumed run keeps its batch size, so free memory"
                 + (" or resume with --backend numpy" if where == "device" else ""))
    elif args.command in ("train", "compare"):
        model = args.model if args.command == "train" else TrainConfig.model
        doing = "training" if args.command == "train" else "comparing losses with"
        size = f" on {args.image_size.replace(',', 'x')} images" if getattr(args, "image_size", None) else ""
        what = f"{doing} {model} at batch size {args.batch_size}{size}"
        folder = getattr(args, "dataset", "").startswith("folder:")
        lower = "lower --batch-size" + (" or --image-size" if folder else "")
        if args.out is not None and os.path.isdir(args.out):  # it holds runs of the settings that ran out
            lower += f", with another --out than {args.out}"
    else:
        what, lower = f"in amnp {args.command}", "free memory"
    return f"out of {where} memory {what} ({exc}); {lower}"


def raise_interrupted(signum: int):
    """A stop signal outside the training loop (loading data, evaluating) ends the command."""
    raise Interrupted(signum)


# How long a rank other than 0 waits before printing its error and ending the job: an error
# that every rank meets (a bad option) ends the job through rank 0 first, printed once.
RANK_ERROR_GRACE_S = 1.0
RANK_OUTPUT_DRAIN_S = 0.5


def fail(args, code: int, line: str, every_rank: bool = False) -> int:
    """Print ``line`` to stderr and return ``code``; on a rank of several, end the whole job
    unless ``every_rank`` met the same end at the same point (then rank 0 alone prints)."""
    comm = getattr(args, "comm", None)
    if comm is None or comm.size == 1:
        print(line, file=sys.stderr)
        return code
    if every_rank:
        if comm.rank == 0:
            print(line, file=sys.stderr)
        return code
    if comm.rank != 0:
        time.sleep(RANK_ERROR_GRACE_S)
        line = line.replace("amnp: error: ", f"amnp: error: rank {comm.rank} of {comm.size}: ", 1)
    print(line, file=sys.stderr, flush=True)
    time.sleep(RANK_OUTPUT_DRAIN_S)  # mpiexec relays the line through its proxy, which the abort ends
    comm.abort(code)
    return code  # not reached: the job has ended


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # which options were written, for the commands that refuse some
    keep_freed_memory()  # the arrays of one step are made again the next: reuse their memory
    restore_signal_handlers = catch_stop_signals(raise_interrupted)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = plain_warning
            return COMMANDS[args.command](args)
    except TrainingDiverged as exc:  # read from the all-reduced losses: every rank raises it
        return fail(args, EXIT_DIVERGED, f"amnp: error: {exc}", every_rank=True)
    except (UsageError, checkpoint.CheckpointError, ValueError, TypeError, RuntimeError, OSError,
            MemoryError) as exc:
        if os.environ.get("AMNP_DEBUG"):  # developers want the traceback
            raise
        where = exhausted_memory(exc)
        return fail(args, EXIT_BAD_INPUT, f"amnp: error: {out_of_memory(args, where, exc) if where else exc}")
    except KeyboardInterrupt as exc:  # Interrupted, or Ctrl-C where SIGINT has no Python handler
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        return fail(args, 128 + signum, f"amnp: interrupted by {signal.Signals(signum).name}",
                    every_rank=getattr(exc, "every_rank", False))
    finally:
        restore_signal_handlers()
