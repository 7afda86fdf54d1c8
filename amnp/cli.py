"""The ``amnp`` command: ``amnp train`` and ``amnp eval DIR``.

Every expected failure (bad options, missing data, a checkpoint that does not
fit, a diverging run) ends with one line ``amnp: error: ...`` and a non-zero
exit code, never a traceback, and never overwrites a previous run.

Exit codes: 0 done, 1 bad input, 3 training diverged, 130 interrupted (Ctrl-C,
after saving a checkpoint).  AMNP_DEBUG=1 shows the traceback behind an error.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np

from . import checkpoint, data, figures
from .backend import get_backend, set_backend
from .heads import LOSSES
from .training import TrainConfig, Trainer, TrainingDiverged, evaluate, parse_dataset_spec, read_metrics

EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_INTERRUPTED = 1, 3, 130


class UsageError(Exception):
    pass


def open_dataset(spec: str, seed: int):
    """glyphs | folder:PATH | mnist:PATH -> a VerificationDataset."""
    kind, path = parse_dataset_spec(spec)
    if kind == "glyphs":
        return data.load_glyphs(seed=seed, progress=sys.stderr.isatty())
    if kind == "folder":
        return data.load_folder_dataset(path, seed=seed)
    return data.load_mnist_dataset(path, seed=seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="amnp", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    defaults = TrainConfig()

    train = commands.add_parser(
        "train", help="train an embedding network with AM-Softmax (defaults: glyphs, small preset, CPU)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    train.add_argument("--dataset", default=defaults.dataset, help="glyphs, folder:PATH or mnist:PATH")
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
    train.add_argument("--seed", type=int, default=defaults.seed)
    train.add_argument("--out", default=None, help="run directory (default runs/<dataset>-<loss>-<time>)")
    train.add_argument("--resume", metavar="DIR", default=None,
                       help="continue the run in DIR with its saved settings (only --backend, "
                            "--stop-at and --no-eval still apply)")
    train.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                       help="stop at this step with a checkpoint (continue later with --resume)")
    train.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation at the end")

    evaluate_cmd = commands.add_parser("eval", help="re-evaluate a saved run")
    evaluate_cmd.add_argument("run_dir", metavar="DIR")
    evaluate_cmd.add_argument("--backend", default=None,
                              help="numpy (CPU) or cupy (GPU) (default: AMNP_BACKEND, else numpy)")

    margins_cmd = commands.add_parser(
        "margins", help="list the losses of the margin family and draw their target logits ψ(θ)")
    margins_cmd.add_argument("--out", default="target_logits.png", help="PNG file for the figure")
    return parser


def margins_command(args) -> int:
    for spec in LOSSES.values():
        defaults = ", ".join(f"{o.name}={o.default}" for o in spec.options) or "no options"
        print(f"{spec.name:<11} target logit {spec.target_logit}\n{'':<11} {defaults}")
    print(f"target-logit figure: {figures.plot_target_logits(args.out)}")
    return 0


def add_loss_options(parser) -> None:
    """One flag per option name of the loss registry (amnp.heads.LOSSES); a flag shared by
    several losses says what it means for each.  Flags left out stay out of the namespace,
    so only the options given reach the loss, and one it does not take is an error."""
    uses = {}
    for spec in LOSSES.values():
        for option in spec.options:
            uses.setdefault(option.cli_flag, []).append((spec.name, option))
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


MARGINS_FLAG = "--margins"


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
    config = TrainConfig(dataset=args.dataset, model=args.model, loss=args.loss,
                         loss_options=loss_options_from_args(args),
                         batch_size=args.batch_size, lr=args.lr,
                         backend=args.backend, seed=args.seed)
    if args.iters is not None:
        config.iters, config.epochs = args.iters, None
    elif args.epochs is not None:
        config.epochs = args.epochs
    config.validate()
    return config


def read_config(run_dir: str) -> TrainConfig:
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        raise UsageError(f"{run_dir} is not a run directory (no config.json)")
    try:
        with open(path) as file:
            config = TrainConfig.from_dict(json.load(file))
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{path} is not a valid run configuration ({exc})") from None
    config.validate()
    return config


def choose_backend(config: TrainConfig) -> None:
    """Without --backend (or a resumed run's), AMNP_BACKEND if set, else numpy; a bad name
    or a missing CuPy is an error here, before any data is loaded."""
    if config.backend is None:
        config.backend = get_backend()
    set_backend(config.backend)


def new_run_dir(config: TrainConfig, out: str | None) -> str:
    if out is None:
        name = config.dataset.split(":")[0]
        out = os.path.join("runs", f"{name}-{config.loss}-{time.strftime('%Y%m%d-%H%M%S')}")
    if os.path.exists(os.path.join(out, "checkpoint.npz")) or os.path.exists(os.path.join(out, "config.json")):
        raise UsageError(f"{out} already holds a run; continue it with --resume {out} or choose another --out")
    return out


def summary(metrics: dict) -> str:
    tar = metrics["tar_at_far"]
    return (f"held-out verification accuracy {100 * metrics['verification_accuracy']:.2f}% "
            f"± {100 * metrics['verification_accuracy_std']:.2f} (10 folds, {metrics['num_pairs']} pairs); "
            f"TAR@FAR=1e-2 {100 * tar['1e-2']:.2f}%, TAR@FAR=1e-3 {100 * tar['1e-3']:.2f}%; "
            f"EER {100 * metrics['eer']:.2f}%; identification top-1 {100 * metrics['identification_top1']:.2f}%")


def sample_indices(labels, identities=8, per_identity=8):
    """Indices of the first images of a few identities spread over the label range: one row
    of the sample grid per identity shows the variation the network has to ignore."""
    classes = np.unique(labels)
    chosen = classes[np.linspace(0, len(classes) - 1, min(identities, len(classes))).astype(int)]
    return np.concatenate([np.flatnonzero(labels == c)[:per_identity] for c in chosen])


def report(run_dir: str, net, dataset) -> dict:
    """Evaluate, write eval.json and every figure, print the summary."""
    metrics = evaluate(net, dataset, run_dir)
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


def train_command(args) -> int:
    if args.resume is not None:
        config = read_config(args.resume)
        if args.backend is not None:
            config.backend = args.backend
            config.validate()
        run_dir = args.resume
    else:
        config = config_from_args(args)
        run_dir = new_run_dir(config, args.out)
    choose_backend(config)
    dataset = open_dataset(config.dataset, config.seed)
    trainer = Trainer(config, dataset, run_dir)
    if args.resume is not None:
        trainer.resume()
        print(f"resuming {run_dir} at step {trainer.step} of {trainer.total_steps}")
    else:
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, "config.json"), "w") as file:
            json.dump(dataclasses.asdict(config), file, indent=2)
        trainer.save_checkpoint()  # step 0: a run killed before its first checkpoint can still resume
    options = ", ".join(f"{name}={value}" for name, value in config.loss_options.items())
    print(f"training {config.model} with {config.loss} ({options or 'no options'}) on {dataset.name}: "
          f"{len(dataset.train_labels)} images of {dataset.num_classes} identities, "
          f"{trainer.total_steps} steps of {config.batch_size} on {config.backend}; run directory {run_dir}")
    first_step, started = trainer.step, time.perf_counter()
    status = trainer.train(stop_at=args.stop_at)
    seconds = time.perf_counter() - started
    images = (trainer.step - first_step) * config.batch_size
    print(f"{status} at step {trainer.step} after {seconds:.0f} s "
          f"({images / max(seconds, 1e-9):.0f} images/s over this run)")
    if status != "finished":
        print(f"checkpoint saved; continue with: amnp train --resume {run_dir}")
        return EXIT_INTERRUPTED if status == "interrupted" else 0
    if not args.no_eval:
        report(run_dir, trainer.model.net, dataset)
    return 0


def eval_command(args) -> int:
    config = read_config(args.run_dir)
    config.backend = args.backend
    choose_backend(config)
    dataset = open_dataset(config.dataset, config.seed)
    trainer = Trainer(config, dataset, args.run_dir, progress=False)
    meta = checkpoint.load(os.path.join(args.run_dir, "checkpoint.npz"), trainer.model)
    print(f"evaluating {args.run_dir} at step {meta['step']}")
    report(args.run_dir, trainer.model.net, dataset)
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        commands = {"train": train_command, "eval": eval_command, "margins": margins_command}
        return commands[args.command](args)
    except TrainingDiverged as exc:
        print(f"amnp: error: {exc}", file=sys.stderr)
        return EXIT_DIVERGED
    except (UsageError, checkpoint.CheckpointError, ValueError, TypeError, RuntimeError, OSError) as exc:
        if os.environ.get("AMNP_DEBUG"):  # developers want the traceback
            raise
        print(f"amnp: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (loading data, evaluating)
        print("amnp: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
