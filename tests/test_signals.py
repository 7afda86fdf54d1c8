"""Stop signals sent to a real `amnp` process: Ctrl-C (SIGINT), a scheduler's preemption or
`kill` (SIGTERM) and a closed terminal (SIGHUP) each end training with a checkpoint of the
last step trained and the exit code 128 + the signal's number; the run resumes to
bit-for-bit the parameters of an uninterrupted run.  Outside the training loop a signal
ends the command with the same code and one line, no traceback."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from amnp import checkpoint
from amnp.rundir import read_metrics
from amnp.training import Trainer

from .checkout import checkout_env
from .test_training import config, tiny_dataset

# A run that no machine finishes before the signal, sent after its first log (step 20), arrives;
# it is compared with an uninterrupted run up to a step (--stop-at) past the interruption.
STEPS = 100_000
TRAIN = ["train", "--iters", str(STEPS), "--batch-size", "4", "--no-eval"]
STEPS_AFTER_RESUMING = 10


def with_default_stop_signals():
    """The child starts as from an interactive shell: a test runner started as a background
    job (CI) has SIGINT ignored, and its children would inherit that."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


@pytest.fixture
def amnp_process():
    """start(arguments, cwd): `amnp ARGUMENTS` as a child process.  One still running when the
    test ends (an assertion failed before its signal) is killed, so that none trains on for
    STEPS steps behind the suite."""
    started = []

    def start(arguments, cwd):
        started.append(subprocess.Popen(
            [sys.executable, "-m", "amnp", *arguments], cwd=cwd, text=True, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, preexec_fn=with_default_stop_signals,
            env=checkout_env(PYTHONUNBUFFERED="1", OPENBLAS_NUM_THREADS="1")))
        return started[-1]

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.communicate()


def logged_steps(run_dir):
    """The steps logged so far ([] before the first log), read as amnp reads its journal."""
    return [record["step"] for record in read_metrics(os.path.join(run_dir, "metrics.jsonl"))]


def wait_until(condition, process, what, timeout=120):
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"amnp ended before {what}: {process.communicate()}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.02)


def amnp_run(arguments):
    done = subprocess.run([sys.executable, "-m", "amnp", *arguments], capture_output=True, text=True,
                          env=checkout_env(OPENBLAS_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)],
                         ids=["SIGTERM", "SIGHUP", "SIGINT"])
def test_a_stop_signal_saves_the_last_step_and_the_run_resumes_bit_identical(tmp_path, signum, code,
                                                                             amnp_process):
    out = tmp_path / "run"
    process = amnp_process([*TRAIN, "--out", str(out)], tmp_path)
    wait_until(lambda: logged_steps(out), process, "logged step")
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr
    assert stderr.strip().splitlines()[-1] == f"amnp: interrupted by {signal.Signals(signum).name}"
    assert "Traceback" not in stderr
    trained = int(stdout.split("interrupted at step ")[1].split()[0])
    saved = checkpoint.read(out / "checkpoint.npz")[2]["step"]
    assert saved == trained and logged_steps(out)[-1] <= trained < STEPS
    assert f"continue with: amnp train --resume {out}" in stdout

    stop = trained + STEPS_AFTER_RESUMING
    resumed = amnp_run(["train", "--resume", str(out), "--no-eval", "--stop-at", str(stop)])
    assert f"resuming {out} at step {trained} of {STEPS}" in resumed.stdout
    params, velocity, meta = checkpoint.read(out / "checkpoint.npz")
    amnp_run([*TRAIN, "--stop-at", str(stop), "--out", str(tmp_path / "straight")])
    straight_params, straight_velocity, straight_meta = checkpoint.read(tmp_path / "straight" / "checkpoint.npz")
    assert meta["step"] == straight_meta["step"] == stop
    for mine, theirs in ((params, straight_params), (velocity, straight_velocity)):
        assert mine.keys() == theirs.keys()
        for name in theirs:
            np.testing.assert_array_equal(mine[name], theirs[name], err_msg=name)


def test_sigterm_outside_the_training_loop_ends_the_command_with_one_line(tmp_path, amnp_process):
    """Training finished; the held-out evaluation (seconds on the glyphs) is under way."""
    process = amnp_process(["train", "--iters", "2", "--batch-size", "4", "--out", str(tmp_path / "run")], tmp_path)
    lines = []
    wait_until(lambda: lines.append(process.stdout.readline()) or "finished at step 2" in lines[-1],
               process, "end of training")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143
    assert stderr.strip() == "amnp: interrupted by SIGTERM"


def signalled_at(trainer, step, signum):
    """Make ``trainer`` send ``signum`` to this process as step ``step`` begins."""
    train_step = trainer.train_step

    def step_sending(t):
        if t == step:
            os.kill(os.getpid(), signum)
        return train_step(t)

    trainer.train_step = step_sending


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=["SIGTERM", "SIGHUP", "SIGINT"])
def test_the_trainer_stops_between_steps_on_each_stop_signal(tmp_path, stop_signals_as_from_a_shell, signum):
    trainer = Trainer(config(), tiny_dataset(), str(tmp_path), progress=False)
    signalled_at(trainer, 2, signum)
    handler_before = signal.getsignal(signum)
    assert trainer.train() == "interrupted" and trainer.stopped_by == signum
    assert checkpoint.read(tmp_path / "checkpoint.npz")[2]["step"] == 3
    assert signal.getsignal(signum) is handler_before, "the previous handler is back"
    assert trainer.train() == "finished", "a new call trains on"


def test_an_ignored_signal_stays_ignored(tmp_path, stop_signals_as_from_a_shell):
    """`nohup amnp train ... &`: SIGHUP and SIGINT are ignored, and training goes on."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    trainer = Trainer(config(), tiny_dataset(), str(tmp_path), progress=False)
    signalled_at(trainer, 2, signal.SIGHUP)
    signalled_at(trainer, 3, signal.SIGINT)
    assert trainer.train() == "finished" and trainer.stopped_by is None
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN and signal.getsignal(signal.SIGINT) == signal.SIG_IGN
