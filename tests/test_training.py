"""The trainer and the CLI on a tiny synthetic dataset: files, resume, divergence, Ctrl-C, bad input."""
import json
import os

import numpy as np
import pytest

from amnp import checkpoint, cli
from amnp.backend import get_backend
from amnp.data import VerificationDataset
from amnp.config import TrainConfig
from amnp.training import Trainer, TrainingDiverged


def tiny_dataset(num_classes=6, per_class=8, test_ids=6, per_test=4, size=16, mirror=False, seed=0):
    """Noisy copies of random prototypes: enough structure to learn, small enough to be fast."""
    rng = np.random.default_rng(seed)
    prototypes = rng.integers(0, 256, (num_classes + test_ids, 1, size, size))

    def draw(ids):
        noisy = prototypes[ids] + rng.normal(0, 30, (len(ids), 1, size, size))
        return np.clip(noisy, 0, 255).astype(np.uint8)

    train_labels = np.repeat(np.arange(num_classes), per_class)
    test_labels = np.repeat(np.arange(test_ids), per_test)
    same = [(i * per_test, i * per_test + 1 + f % (per_test - 1)) for f in range(10) for i in range(2)]
    different = [(i * per_test, ((i + 1 + f % (test_ids - 1)) % test_ids) * per_test)
                 for f in range(10) for i in range(2)]
    pairs = np.array([p for f in range(10) for p in same[2 * f:2 * f + 2] + different[2 * f:2 * f + 2]])
    pair_same = np.tile([True, True, False, False], 10)
    gallery = np.arange(test_ids) * per_test
    return VerificationDataset(
        name="tiny", train_images=draw(train_labels), train_labels=train_labels,
        test_images=draw(num_classes + test_labels), test_labels=test_labels,
        pairs=pairs, pair_same=pair_same, pair_fold=np.repeat(np.arange(10), 4),
        gallery=gallery, probes=np.setdiff1d(np.arange(len(test_labels)), gallery),
        mirror=mirror, class_names=[f"c{i}" for i in range(num_classes)])


def config(**overrides):
    settings = dict(iters=12, batch_size=8, loss_options={"s": 8.0}, log_every=2, checkpoint_every=4, warmup=2)
    settings.update(overrides)
    return TrainConfig(**settings)


def test_a_trainer_trains_on_the_current_backend_and_never_changes_it(tmp_path):
    assert get_backend() == "numpy"
    with pytest.raises(ValueError, match="the run trains on cupy but the current backend is numpy"):
        Trainer(config(backend="cupy"), tiny_dataset(), str(tmp_path), progress=False)
    assert get_backend() == "numpy"


def test_resumed_run_ends_with_exactly_the_parameters_of_the_uninterrupted_run(tmp_path):
    dataset = tiny_dataset(mirror=True)
    straight = Trainer(config(), dataset, str(tmp_path / "a"), progress=False)
    os.makedirs(tmp_path / "a")
    assert straight.train() == "finished"

    os.makedirs(tmp_path / "b")
    first = Trainer(config(), dataset, str(tmp_path / "b"), progress=False)
    assert first.train(stop_at=5) == "stopped"
    second = Trainer(config(), dataset, str(tmp_path / "b"), progress=False)
    second.resume()
    assert second.step == 5
    assert second.train() == "finished"
    for name, value in straight.model.state_dict().items():
        np.testing.assert_array_equal(second.model.state_dict()[name], value, err_msg=name)
    steps = [r["step"] for r in map(json.loads, open(tmp_path / "b" / "metrics.jsonl"))]
    assert steps == [2, 4, 5, 6, 8, 10, 12]


def test_each_epoch_draws_its_order_once_and_batches_walk_it(tmp_path, monkeypatch):
    """The permutation of an epoch is drawn once, not at every step, and the batches are the
    consecutive slices of it that the (seed, epoch) rule defines."""
    trainer = Trainer(config(), tiny_dataset(), str(tmp_path), progress=False)
    drawn = []
    rng = np.random.default_rng
    monkeypatch.setattr(np.random, "default_rng", lambda seed=None: drawn.append(seed) or rng(seed))
    per_epoch, b = trainer.steps_per_epoch, trainer.config.batch_size
    batches = [trainer.batch_indices(step) for step in range(2 * per_epoch)]
    assert drawn.count([trainer.config.seed, 1, 0]) == 1 and drawn.count([trainer.config.seed, 1, 1]) == 1
    for epoch in range(2):
        order = rng([trainer.config.seed, 1, epoch]).permutation(trainer.num_train)
        for position in range(per_epoch):
            np.testing.assert_array_equal(batches[epoch * per_epoch + position],
                                          order[position * b:(position + 1) * b])


@pytest.mark.parametrize("label", [-1, 6])
def test_a_training_label_outside_the_classes_is_refused_before_any_step(tmp_path, label):
    """The steps skip the range check (it would read the labels back every step): the trainer
    checks every training label once, when it is made."""
    dataset = tiny_dataset()
    dataset.train_labels[-1] = label
    with pytest.raises(ValueError, match=rf"the training set: labels must lie in \[0, 5\] for 6 classes, "
                                         rf"got values from {min(label, 0)} to {max(label, 5)}"):
        Trainer(config(), dataset, str(tmp_path), progress=False)


def test_divergence_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    trainer = Trainer(config(), tiny_dataset(), str(tmp_path), progress=False)
    forward = trainer.model.head.forward

    def poisoned(embeddings, labels, **options):
        loss = forward(embeddings, labels, **options)
        return loss * np.nan if trainer.step == 6 else loss

    monkeypatch.setattr(trainer.model.head, "forward", poisoned)
    with pytest.raises(TrainingDiverged, match="diverged at step 6: the loss is nan; the last good checkpoint"):
        trainer.train()
    _, _, meta = checkpoint.read(tmp_path / "checkpoint.npz")
    assert meta["step"] == 4


def test_non_finite_parameters_never_overwrite_the_last_good_checkpoint(tmp_path, monkeypatch):
    trainer = Trainer(config(), tiny_dataset(), str(tmp_path), progress=False)
    step = trainer.optimizer.step

    def poisoned_update(lr):
        step(lr)
        if trainer.step == 7:  # the loss of step 7 was finite, its update is not; a checkpoint is due
            trainer.model.head.classifier.params["weight"][0, 0] = np.inf

    monkeypatch.setattr(trainer.optimizer, "step", poisoned_update)
    with pytest.raises(TrainingDiverged, match="diverged at step 8: .*parameter head.classifier.weight"):
        trainer.train()
    assert checkpoint.read(tmp_path / "checkpoint.npz")[2]["step"] == 4


@pytest.fixture
def tiny_cli(monkeypatch):
    monkeypatch.setattr(cli, "open_dataset", lambda config: tiny_dataset(seed=config.seed))


def test_cli_train_writes_the_run_directory_and_eval_rereads_it(tmp_path, tiny_cli, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--iters", "8", "--batch-size", "8", "--s", "8", "--conditional-margin",
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["loss_options"]["conditional_margin"] is True
    assert "held-out verification accuracy" in printed
    for name in ["config.json", "metrics.jsonl", "checkpoint.npz", "eval.json", "figures/roc.png",
                 "figures/pair_cosines.png", "figures/training_curves.png", "figures/samples.png"]:
        assert (out / name).is_file(), name
    metrics = json.loads((out / "eval.json").read_text())
    for key in ["verification_accuracy", "verification_accuracy_std", "tar_at_far", "eer", "identification_top1"]:
        assert key in metrics
    assert cli.main(["eval", str(out)]) == 0
    assert json.loads((out / "eval.json").read_text())["verification_accuracy"] == metrics["verification_accuracy"]


@pytest.mark.parametrize("arguments, message", [
    (["--m", "-0.1"], "m (--m) of loss 'am-softmax' must be >= 0"),
    (["--s", "0"], "s (--s) of loss 'am-softmax' must be > 0"),
    (["--s", "nan"], "s (--s) of loss 'am-softmax' must be a finite number"),
    (["--batch-size", "0"], "batch-size must be a positive integer"),
    (["--model", "resnet"], "unknown model 'resnet'"),
    (["--loss", "cosface"], "unknown loss 'cosface'"),
    (["--loss", "softmax", "--m", "0.3"], "loss 'softmax' does not take 'm'; it takes no options"),
    (["--loss", "arcface", "--conditional-margin"], "loss 'arcface' does not take 'conditional_margin'"),
    (["--loss", "normface", "--margins", "1,0,0.3"], "loss 'normface' does not take 'm1', 'm2', 'm3'"),
    (["--loss", "am-softmax", "--learn-scale"], "loss 'am-softmax' does not take 'learn_scale'"),
    (["--loss", "sphereface", "--s", "30"], "loss 'sphereface' does not take 's'"),
    (["--loss", "arcface", "--m", "3.5"], "m (--m) of loss 'arcface' must lie in [0, π)"),
    (["--loss", "arcface", "--m", "-0.1"], "m (--m) of loss 'arcface' must lie in [0, π)"),
    (["--loss", "sphereface", "--m", "2.5"], "m (--m) of loss 'sphereface' must be an integer from 1 to 10"),
    (["--loss", "sphereface", "--m", "0"], "m (--m) of loss 'sphereface' must be an integer from 1 to 10"),
    (["--loss", "sphereface", "--m", "1e12"], "m (--m) of loss 'sphereface' must be an integer from 1 to 10"),
    (["--loss", "normface", "--learn-scale", "--s", "0.5"], "is where a learned scale starts, and it is kept at 1"),
    (["--loss", "combined", "--margins", "1,0.3"], "--margins takes three numbers M1,M2,M3"),
    (["--loss", "combined", "--margins", "1,a,0.3"], "--margins takes three numbers M1,M2,M3"),
    (["--loss", "combined", "--margins", "0,0.3,0.2"], "m1 (--margins) of loss 'combined' must be > 0"),
    (["--loss", "combined", "--s", "-1"], "s (--s) of loss 'combined' must be > 0"),
    (["--no-feature-normalization", "--s", "30"], "s (--s) does not apply to am-softmax without feature"),
    (["--iters", "0"], "iters must be a positive integer"),
    (["--backend", "tpu"], "unknown backend 'tpu'"),
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["--dataset", "folder:"], "unknown dataset 'folder:'"),
    (["--batch-size", "100"], "batch-size 100 is larger than the 48 training images"),
    (["--epochs", "inf"], "epochs must be a finite number > 0"),
    (["--lr", "inf"], "learning rate must be a finite number > 0"),
    (["--margin-ramp", "-0.1"], "margin_ramp (--margin-ramp) of loss 'am-softmax' must be >= 0"),
])
def test_cli_bad_options(tmp_path, tiny_cli, capsys, arguments, message):
    arguments = ["--batch-size", "8", *arguments]  # the last --batch-size wins
    assert cli.main(["train", "--out", str(tmp_path / "run"), *arguments]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_cli_missing_dataset_path(tmp_path, capsys):
    code = cli.main(["train", "--dataset", f"folder:{tmp_path / 'nowhere'}", "--out", str(tmp_path / "run")])
    assert code == cli.EXIT_BAD_INPUT
    assert "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_cli_never_overwrites_a_previous_run(tmp_path, tiny_cli, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--iters", "2", "--batch-size", "8", "--out", str(out), "--no-eval"]) == 0
    saved = (out / "checkpoint.npz").read_bytes()
    assert cli.main(["train", "--iters", "2", "--batch-size", "8", "--out", str(out)]) == cli.EXIT_BAD_INPUT
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "checkpoint.npz").read_bytes() == saved


def test_cli_resume_refuses_a_checkpoint_from_another_model(tmp_path, tiny_cli, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--iters", "4", "--batch-size", "8", "--out", str(out), "--stop-at", "2"]) == 0
    saved = (out / "checkpoint.npz").read_bytes()
    settings = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(dict(settings, loss="softmax", loss_options={})))
    assert cli.main(["train", "--resume", str(out)]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "does not fit this model" in err and "head.classifier.bias" in err
    assert (out / "checkpoint.npz").read_bytes() == saved


def test_cli_truncated_checkpoint(tmp_path, tiny_cli, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--iters", "2", "--batch-size", "8", "--out", str(out), "--no-eval"]) == 0
    data = (out / "checkpoint.npz").read_bytes()
    (out / "checkpoint.npz").write_bytes(data[:100])
    assert cli.main(["eval", str(out)]) == cli.EXIT_BAD_INPUT
    assert "truncated or corrupt" in capsys.readouterr().err
    assert cli.main(["eval", str(tmp_path / "nothing")]) == cli.EXIT_BAD_INPUT
    assert "not a run directory" in capsys.readouterr().err


def test_cli_trains_on_an_image_folder_tree(tmp_path, capsys):
    """The real-data path end to end: root/<identity>/<image>.png, RGB, mirrored batches."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "faces"
    for identity in range(20):
        prototype = rng.integers(0, 256, (16, 16, 3))
        (root / f"person{identity:02d}").mkdir(parents=True)
        for k in range(4):
            noisy = np.clip(prototype + rng.normal(0, 20, prototype.shape), 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(root / f"person{identity:02d}" / f"{k}.png")
    out = tmp_path / "run"
    code = cli.main(["train", "--dataset", f"folder:{root}", "--iters", "4", "--batch-size", "8",
                     "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"] == f"folder:{root}"
    assert json.loads((out / "eval.json").read_text())["mirror_fused"] is True


def test_a_run_killed_before_its_first_checkpoint_can_resume(tmp_path, tiny_cli, monkeypatch, capsys):
    out = tmp_path / "run"

    def killed(self, stop_at=None):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "train", killed)
        assert cli.main(["train", "--iters", "4", "--batch-size", "8", "--out", str(out)]) == cli.EXIT_INTERRUPTED
    assert checkpoint.read(out / "checkpoint.npz")[2]["step"] == 0
    assert cli.main(["train", "--resume", str(out), "--no-eval"]) == 0
    assert checkpoint.read(out / "checkpoint.npz")[2]["step"] == 4


def test_resume_can_move_a_run_to_another_backend(tmp_path, tiny_cli):
    out = tmp_path / "run"
    assert cli.main(["train", "--iters", "4", "--batch-size", "8", "--out", str(out), "--stop-at", "2"]) == 0
    settings = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(dict(settings, backend="cupy")))  # as if trained on a GPU
    assert cli.main(["train", "--resume", str(out), "--backend", "numpy", "--no-eval"]) == 0
    assert checkpoint.read(out / "checkpoint.npz")[2]["step"] == 4


@pytest.mark.parametrize("arguments, logged", [
    (["--loss", "softmax"], set()),
    (["--loss", "normface", "--learn-scale", "--s", "10"], {"s"}),
    (["--loss", "am-softmax", "--margin-ramp", "0.05"], {"m"}),
    (["--loss", "am-softmax", "--no-feature-normalization"], {"m"}),
    (["--loss", "sphereface", "--m", "3"], {"lam"}),
    (["--loss", "arcface", "--m", "0.4"], set()),
    (["--loss", "combined", "--margins", "1,0.2,0.1"], set()),
])
def test_cli_trains_every_member_and_logs_its_schedule(tmp_path, tiny_cli, arguments, logged):
    out = tmp_path / "run"
    assert cli.main(["train", "--iters", "4", "--batch-size", "8", "--no-eval", "--out", str(out),
                     *arguments]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    schedule_keys = set(records[-1]) - {"step", "epoch", "loss", "accuracy", "mean_target_cosine", "lr",
                                        "images_per_s"}
    assert schedule_keys == logged
    assert all(-1 <= r["mean_target_cosine"] <= 1 for r in records)
    config = json.loads((out / "config.json").read_text())
    assert config["loss"] == arguments[1]
    if "--margin-ramp" in arguments:
        assert records[-1]["m"] == pytest.approx(0.05 * 3)  # m(t) = min(m, γ t) at the last step, t = 3


def test_config_written_before_losses_had_options_still_loads():
    old = dict(dataset="glyphs", model="small", loss="am-softmax", m=0.3, s=20.0, margin_ramp=None,
               conditional_margin=True)
    config = TrainConfig.from_dict(old)
    config.validate()
    assert config.loss_options["m"] == 0.3 and config.loss_options["conditional_margin"] is True
    softmax = TrainConfig.from_dict(dict(old, loss="softmax"))
    softmax.validate()
    assert softmax.loss_options == {}


def test_every_random_stream_of_a_run_is_its_own_even_with_trailing_zeros():
    """NumPy's SeedSequence ignores trailing zeros: [s, tag, 0, 0] is the stream [s, tag], so
    each stream's tag must tell it apart by itself (class sampling at rank 0, step 0 was
    once the bootstrap's stream)."""
    from amnp.init import STREAM_TAGS, stream_seed

    draws = {}
    for stream in STREAM_TAGS:
        for more in ((), (0,), (0, 0)):
            draws[stream, more] = tuple(np.random.default_rng(stream_seed(5, stream, *more)).integers(0, 2**62, 4))
    owners = {}
    for (stream, _), draw in draws.items():
        owners.setdefault(draw, set()).add(stream)
    assert all(len(streams) == 1 for streams in owners.values()), owners


@pytest.mark.parametrize("image_size", [[0, 5], [12], [12.5, 8]])
def test_an_image_size_that_is_not_two_positive_integers_is_refused(image_size):
    with pytest.raises(ValueError, match=r"image-size must be two positive integers H,W"):
        TrainConfig(dataset="folder:faces", image_size=image_size).validate()
