"""The run directory on a real machine: one writer at a time (real concurrent processes, a
real kill -9), what killed writers leave, a damaged metrics.jsonl, hand-edited checkpoint
meta, and a run bound to the data it was trained on."""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from amnp import checkpoint, cli, rundir
from amnp.data import load_folder_dataset

from .checkout import checkout_env
from .test_inference_cli import write_tree
from .test_training import tiny_dataset

TINY = ["--iters", "4", "--batch-size", "8"]


def amnp_process(*arguments, code="from amnp import cli; import sys; sys.exit(cli.main(sys.argv[1:]))"):
    """A real second process running ``code`` with ``arguments`` (the amnp of this checkout)."""
    env = checkout_env(PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-c", code, *map(str, arguments)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_line(process, text, timeout=120):
    """Read the process's output until a line contains ``text``; the lines read."""
    deadline, lines = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        lines.append(line)
        if text in line:
            return lines
        if not line and process.poll() is not None:
            break
    raise AssertionError(f"no {text!r} from the process: {lines} {process.stderr.read()}")


def one_error_line(capsys) -> str:
    """The one ``amnp: error:`` line printed (beside the loaders' warnings), never a traceback."""
    lines = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("amnp: warning:")]
    assert len(lines) == 1 and lines[0].startswith("amnp: error: "), lines
    return lines[0]


@pytest.fixture
def faces(tmp_path):
    return write_tree(tmp_path / "faces", [f"person{i:02d}" for i in range(12)], 4)


# ---------------------------------------------------------------------- one writer

def test_a_second_writer_fails_at_once_naming_the_holder(faces, tmp_path, capsys):
    run = tmp_path / "run"
    holder = amnp_process("train", "--dataset", f"folder:{faces}", "--iters", "100000", "--batch-size", "8",
                          "--out", run)
    try:
        wait_for_line(holder, "training small")
        for arguments in (["train", "--dataset", f"folder:{faces}", *TINY, "--out", str(run)],
                          ["train", "--resume", str(run), "--stop-at", "2"],
                          ["eval", str(run)]):
            assert cli.main(arguments) == cli.EXIT_BAD_INPUT
            assert f"{run} is in use by process {holder.pid} (training)" in one_error_line(capsys)
        assert holder.poll() is None and not (run / "eval.json").exists()
        # reading a run needs no lock: the checkpoint is replaced whole
        assert cli.main(["embed", str(run), "--images", str(faces), "--out", str(tmp_path / "e.npz")]) == 0
    finally:
        holder.kill()
        holder.wait()


TOGETHER = """
import glob, os, sys, time
from amnp import cli
choose_backend = cli.choose_backend

def together(config):  # called before the run directory is touched: both processes get here first
    open(f"{sys.argv[1]}.{os.getpid()}", "w").close()
    deadline = time.monotonic() + 60
    while len(glob.glob(sys.argv[1] + ".*")) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    choose_backend(config)

cli.choose_backend = together
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.skipif(rundir.fcntl is None, reason="no fcntl here: directories are not locked")
def test_the_loser_of_a_close_race_waits_for_the_holder_to_write_its_pid(tmp_path):
    """The holder writes its pid just after taking the lock: a process that finds the lock
    taken but the file still empty waits for the pid instead of naming nobody."""
    run = tmp_path / "run"
    run.mkdir()
    with open(run / rundir.LOCK_FILE, "a+") as taken:
        rundir.fcntl.flock(taken.fileno(), rundir.fcntl.LOCK_EX | rundir.fcntl.LOCK_NB)
        late = threading.Timer(0.3, lambda: (taken.write("4242 training\n"), taken.flush()))
        late.start()
        try:
            with pytest.raises(rundir.RunInUse, match="in use by process 4242 \\(training\\)"):
                with rundir.hold(str(run), "training"):
                    pass
        finally:
            late.join()


def test_two_new_runs_in_one_directory_one_trains_the_other_fails(faces, tmp_path):
    run = tmp_path / "run"
    runs = [amnp_process(tmp_path / "ready", "train", "--dataset", f"folder:{faces}", "--iters", "10",
                         "--batch-size", "8", "--no-eval", "--seed", seed, "--out", run, code=TOGETHER)
            for seed in (1, 2)]
    results = [(process.wait(timeout=300), process.stdout.read(), process.stderr.read()) for process in runs]
    assert sorted(code for code, _, _ in results) == [0, cli.EXIT_BAD_INPUT], results
    (winner,) = [i for i, (code, _, _) in enumerate(results) if code == 0]
    loser_error = results[1 - winner][2]
    assert (f"is in use by process {runs[winner].pid} (training)" in loser_error
            or f"{run} already holds a run; continue it with --resume {run}" in loser_error), loser_error
    assert json.loads((run / "config.json").read_text())["seed"] == 1 + winner
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [10], "one run's log, not two interleaved"


KILLED_INSIDE_A_CHECKPOINT_WRITE = """
import sys, time
import numpy as np
from amnp import cli
write, calls = np.savez, []

def savez(file, **arrays):  # the N-th checkpoint write stops before its rename, to be killed there
    write(file, **arrays)
    if "meta" in arrays:  # a checkpoint, not the dataset cache's index
        calls.append(file)
        if len(calls) == int(sys.argv[1]):
            file.flush()
            print("inside checkpoint write", flush=True)
            time.sleep(600)

np.savez = savez
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.parametrize("killed_in_write", [1, 2], ids=["step-0 checkpoint", "last checkpoint"])
def test_a_run_killed_inside_a_checkpoint_write_resumes_to_the_uninterrupted_result(
        faces, tmp_path, capsys, killed_in_write):
    """kill -9 while a checkpoint is half written: its temporary file and the lock stay behind;
    the next run in the directory removes the one and is not blocked by the other, and ends with
    the parameters of a run never interrupted.  Killed inside the step-0 checkpoint, the run has
    config.json and no checkpoint: each command says what works, and that works."""
    run, straight = tmp_path / "run", tmp_path / "straight"
    train = ["train", "--dataset", f"folder:{faces}", *TINY]
    killed = amnp_process(killed_in_write, *train, "--out", run, code=KILLED_INSIDE_A_CHECKPOINT_WRITE)
    wait_for_line(killed, "inside checkpoint write")
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert len(list(run.glob(".checkpoint-*.npz.tmp"))) == 1
    lock = (run / ".lock").read_text() if (run / ".lock").exists() else "no lock file"
    if killed_in_write == 1:
        assert not (run / "checkpoint.npz").exists()
        assert cli.main([*train, "--out", str(run)]) == cli.EXIT_BAD_INPUT
        assert f"already holds a run; continue it with --resume {run}" in one_error_line(capsys)
        assert cli.main(["eval", str(run)]) == cli.EXIT_BAD_INPUT
        assert f"`amnp train --resume {run}` trains it" in one_error_line(capsys)

    assert cli.main(["train", "--resume", str(run), "--no-eval"]) == 0
    assert "resuming" in capsys.readouterr().out
    assert not any(run.glob(".*.tmp"))
    assert cli.main([*train, "--out", str(straight), "--no-eval"]) == 0
    resumed, expected = (checkpoint.read(r / "checkpoint.npz") for r in (run, straight))
    assert resumed[2]["step"] == expected[2]["step"] == 4
    for name, value in expected[0].items():
        np.testing.assert_array_equal(resumed[0][name], value, err_msg=name)
    assert (run / "metrics.jsonl").read_text().count("\n") == 1
    assert lock.startswith(f"{killed.pid} training"), "the killed process held the lock"


def test_without_fcntl_the_directory_is_used_unlocked_with_a_warning(tmp_path, monkeypatch, capsys):
    from amnp import rundir

    monkeypatch.setattr(cli, "open_dataset", lambda config: tiny_dataset(seed=config.seed))
    monkeypatch.setattr(rundir, "fcntl", None)  # as on Windows
    run = tmp_path / "run"
    assert cli.main(["train", *TINY, "--no-eval", "--out", str(run)]) == 0
    assert (f"amnp: warning: cannot lock {run} on this platform (no fcntl): nothing stops a second "
            "amnp process from writing to it at the same time") in capsys.readouterr().err
    assert checkpoint.read(run / "checkpoint.npz")[2]["step"] == 4


# ---------------------------------------------------------------------- metrics.jsonl

@pytest.fixture
def stopped_run(tmp_path, monkeypatch):
    """A tiny run stopped at step 2 of 4 (one record in metrics.jsonl)."""
    monkeypatch.setattr(cli, "open_dataset", lambda config: tiny_dataset(seed=config.seed))
    run = tmp_path / "run"
    assert cli.main(["train", *TINY, "--stop-at", "2", "--out", str(run)]) == 0
    return run


def test_a_torn_last_line_of_metrics_is_dropped_with_a_warning(stopped_run, capsys):
    metrics = stopped_run / "metrics.jsonl"
    with open(metrics, "a") as file:
        file.write('{"step": 3, "loss": 0.5')  # its writer was killed here
    capsys.readouterr()
    assert cli.main(["eval", str(stopped_run)]) == 0
    assert f"amnp: warning: {metrics}: dropped line 2, which was cut short" in capsys.readouterr().err
    assert cli.main(["train", "--resume", str(stopped_run), "--no-eval"]) == 0
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [2, 4]


@pytest.mark.parametrize("damaged, line", [('{"step": 2, "loss"\n{"step": 3}\n', 1),
                                           ('{"step": 2}\n["not", "a record"]\n', 2)])
def test_other_damage_to_metrics_names_the_file_and_line(stopped_run, capsys, damaged, line):
    metrics = stopped_run / "metrics.jsonl"
    metrics.write_text(damaged)
    capsys.readouterr()
    for arguments in (["eval", str(stopped_run)], ["train", "--resume", str(stopped_run)]):
        assert cli.main(arguments) == cli.EXIT_BAD_INPUT
        assert f"{metrics} line {line} is not a" in one_error_line(capsys)
    assert metrics.read_text() == damaged


# ---------------------------------------------------------------------- checkpoint meta

@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    base = tmp_path_factory.mktemp("meta")
    faces = write_tree(base / "faces", [f"person{i:02d}" for i in range(12)], 4)
    assert cli.main(["train", "--dataset", f"folder:{faces}", *TINY, "--out", str(base / "run")]) == 0
    return base / "run", faces


@pytest.mark.parametrize("edit, problem", [
    (lambda meta: dict(meta, step="abc"), "invalid meta: step must be a non-negative integer, got 'abc'"),
    (lambda meta: {k: v for k, v in meta.items() if k != "step"}, "invalid meta: no step"),
    (lambda meta: dict(meta, config=[1, 2]), "invalid meta: config must be an object"),
    (lambda meta: dict(meta, image_shape=[3, 16]), "invalid meta: image_shape must be three positive"),
    (lambda meta: dict(meta, mirror="yes"), "invalid meta: mirror must be true or false"),
    (lambda meta: "{not json", "a meta that is not JSON"),
    (lambda meta: [meta], "a meta that is not a JSON object"),
])
def test_hand_edited_checkpoint_meta_is_one_error_line_everywhere(evaluated, tmp_path, capsys, edit, problem):
    trained, faces = evaluated
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    with np.load(run / "checkpoint.npz", allow_pickle=False) as archive:
        contents = {key: archive[key] for key in archive.files}
    edited = edit(json.loads(str(contents["meta"])))
    contents["meta"] = np.array(edited if isinstance(edited, str) else json.dumps(edited))
    np.savez(run / "checkpoint.npz", **contents)
    image = next(faces.glob("*/1.png"))
    for arguments in (["eval", run], ["verify", run, image, image], ["embed", run, "--images", faces],
                      ["train", "--resume", run]):
        assert cli.main(list(map(str, arguments))) == cli.EXIT_BAD_INPUT
        assert f"amnp: error: checkpoint {run / 'checkpoint.npz'} has {problem}" in one_error_line(capsys)


# ---------------------------------------------------------------------- the data record

def train_on(faces, run, *more):
    assert cli.main(["train", "--dataset", f"folder:{faces}", *TINY, "--out", str(run), *more]) == 0


def test_eval_refuses_identities_added_after_training(faces, tmp_path, capsys):
    run = tmp_path / "run"
    train_on(faces, run)
    evaluated = (run / "eval.json").read_text()
    write_tree(faces, ["person12", "person13", "person14"], 4, seed=5)
    capsys.readouterr()
    assert cli.main(["eval", str(run)]) == cli.EXIT_BAD_INPUT
    err = one_error_line(capsys)
    assert (f"the dataset folder:{faces} changed since {run} was trained: 3 identities (person12, person13, "
            "person14) added; evaluating would hold out other identities than the run did, ") in err
    assert "including 1 identity (" in err and ") it trained on" in err
    assert (run / "eval.json").read_text() == evaluated
    # what does not depend on the training data keeps working
    assert cli.main(["embed", str(run), "--images", str(faces)]) == 0
    image = str(faces / "person00" / "1.png")
    assert cli.main(["verify", str(run), image, image]) == 0


@pytest.mark.parametrize("change, what", [
    (lambda folder: shutil.copy(folder / "1.png", folder / "9.png"),
     "other numbers of images for 1 identity ({name}: 4 → 5)"),
    (lambda folder: folder.rename(folder.with_name(folder.name + "b")),
     "1 identity ({name}b) added, 1 identity ({name}) removed"),
    (lambda folder: (folder / "1.png").rename(folder / "0.png"),
     "the training images differ (files renamed or replaced, or other pixels)"),
], ids=["image added", "identity renamed", "image renamed"])
def test_resume_refuses_other_training_data(faces, tmp_path, capsys, change, what):
    run = tmp_path / "run"
    train_on(faces, run, "--stop-at", "2")
    saved = (run / "checkpoint.npz").read_bytes()
    name = load_folder_dataset(faces).class_names[0]  # a training identity (seed 0, the run's)
    change(faces / name)
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run)]) == cli.EXIT_BAD_INPUT
    err = one_error_line(capsys)
    assert (f"changed since {run} was trained: {what.format(name=name)}; resuming would train on "
            "other images or labels") in err
    assert (run / "checkpoint.npz").read_bytes() == saved


def test_eval_goes_on_where_only_the_training_identities_changed(faces, tmp_path, capsys):
    run = tmp_path / "run"
    train_on(faces, run)
    before = json.loads((run / "eval.json").read_text())
    name = load_folder_dataset(faces).class_names[0]  # a training identity (seed 0, the run's)
    shutil.copy(faces / name / "1.png", faces / name / "9.png")  # held-out split and pairs unchanged
    capsys.readouterr()
    assert cli.main(["eval", str(run)]) == 0
    assert "changed" not in capsys.readouterr().err
    assert json.loads((run / "eval.json").read_text())["verification_accuracy"] == before["verification_accuracy"]


def test_in_memory_datasets_are_bound_by_labels_and_pixels(stopped_run, monkeypatch, capsys):
    def relabelled(config):
        dataset = tiny_dataset(seed=config.seed)
        dataset.train_labels[[0, -1]] = dataset.train_labels[[-1, 0]]
        return dataset

    def repainted(config):
        dataset = tiny_dataset(seed=config.seed)
        dataset.train_images[0, 0, 0, 0] ^= 1
        return dataset

    for loader, what in ((relabelled, "the labels or the held-out pairs differ"),
                         (repainted, "the training images differ")):
        monkeypatch.setattr(cli, "open_dataset", loader)
        capsys.readouterr()
        assert cli.main(["train", "--resume", str(stopped_run)]) == cli.EXIT_BAD_INPUT
        assert f"the dataset glyphs changed since {stopped_run} was trained: {what}" in one_error_line(capsys)


def test_a_run_without_a_data_record_works_as_before_with_a_warning(stopped_run, capsys):
    (stopped_run / "data.json").unlink(missing_ok=True)  # as a run trained by an older amnp
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(stopped_run)]) == 0
    assert f"amnp: warning: {stopped_run} has no record of the data it was trained on" in capsys.readouterr().err
    assert cli.main(["eval", str(stopped_run)]) == 0


def test_a_lost_checkpoint_trains_the_run_again_from_step_0_with_a_warning(stopped_run, capsys):
    (stopped_run / "checkpoint.npz").unlink()
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(stopped_run), "--no-eval"]) == 0
    out, err = capsys.readouterr()
    assert f"resuming {stopped_run} at step 0 of 4" in out
    assert f"amnp: warning: {stopped_run / 'checkpoint.npz'} is missing: the run starts again from step 0" in err
    assert [json.loads(line)["step"] for line in (stopped_run / "metrics.jsonl").read_text().splitlines()] == [4]
