"""``amnp train --distributed`` with real processes under ``mpiexec`` (issue 16, items 2-4).

The exactness runs the Trainer itself in float64 (tests/distributed_cases.py "trainer"); the
command's promises run the real command line on the tests' tiny dataset
(tests/distributed_cli.py).  Each ``mpiexec`` runs under a timeout, so a job that hangs fails
the test; without mpi4py or mpiexec the tests skip with the reason.  Class sampling's options
are also checked in this process: on simulated ranks, and the refusals that come before any
rank is started.
"""
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from amnp import cli
from amnp.config import TrainConfig
from amnp.distributed import class_range, run_simulated
from amnp.parallel import BLAS_THREAD_VARIABLES
from amnp.training import Trainer

from .checkout import checkout_env
from .test_distributed import ROOT, mpi_missing, mpiexec
from .test_signals import logged_steps
from .test_training import config, tiny_dataset

TRAIN = ("tests/distributed_cli.py", "train")
GLOBAL_BATCH = ("--batch-size", "12")


def amnp_ranks(ranks, *arguments, env=None, timeout=120, evaluate=False, mpi4py_runner=True):
    reason = mpi_missing()
    if reason:
        pytest.skip(f"MPI test skipped: {reason}")
    environment = checkout_env(**{"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", **(env or {})})
    runner = ["-m", "mpi4py"] if mpi4py_runner else []
    return subprocess.run(["mpiexec", "-n", str(ranks), sys.executable, *runner, *TRAIN, "--distributed",
                           *([] if "--resume" in arguments else GLOBAL_BATCH), *arguments,
                           *([] if evaluate else ["--no-eval"])], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=timeout)


def one_process(*arguments):
    environment = checkout_env(OPENBLAS_NUM_THREADS="1")
    return subprocess.run([sys.executable, *TRAIN, *GLOBAL_BATCH, "--no-eval", *arguments], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=120)


def saved(run_dir):
    with np.load(os.path.join(run_dir, "checkpoint.npz"), allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files if key != "meta"}, json.loads(str(archive["meta"]))


@pytest.mark.parametrize("ranks", [2, 3])
def test_the_trainer_on_ranks_matches_one_process_to_1e_12_with_bit_identical_ranks(ranks):
    """float64, replicated and sharded head: every parameter, the logged losses and the
    checkpoint against the one-process Trainer; the replicated parameters equal on all ranks."""
    result = mpiexec(ranks, "tests/distributed_cases.py", "trainer")
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(re.findall(r"rank \d+ of \d+: trainer ok", result.stdout)) == ranks


def test_the_command_on_2_ranks_trains_as_one_process_and_resumes_on_any_number_of_ranks(tmp_path):
    whole, single, part = tmp_path / "whole", tmp_path / "single", tmp_path / "part"
    result = amnp_ranks(2, "--iters", "8", "--out", str(whole))
    assert result.returncode == 0, result.stderr
    # rank 0 alone prints and writes: one line each, one record per logged step
    assert result.stdout.count("training small with am-softmax") == 1 and "on 2 ranks" in result.stdout
    assert result.stdout.count("finished at step 8") == 1
    assert logged_steps(whole) == [8]
    assert one_process("--iters", "8", "--out", str(single)).returncode == 0
    ranks_state, meta = saved(whole)
    one_state, _ = saved(single)
    assert meta["step"] == 8 and ranks_state.keys() == one_state.keys()
    for name, value in one_state.items():  # float32: the sums' order differs, not more
        np.testing.assert_allclose(ranks_state[name], value, rtol=1e-4, atol=1e-6, err_msg=name)

    # stopped at step 4 and resumed on the same 2 ranks: bit-exact
    assert amnp_ranks(2, "--iters", "8", "--stop-at", "4", "--out", str(part)).returncode == 0
    assert saved(part)[1]["step"] == 4
    resumed = amnp_ranks(2, "--resume", str(part))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    for name, value in ranks_state.items():
        assert np.array_equal(saved(part)[0][name], value), name

    # the checkpoint's layout does not depend on P: resumed on 3 ranks with the head sharded
    other = tmp_path / "other"
    assert amnp_ranks(2, "--iters", "8", "--stop-at", "4", "--out", str(other)).returncode == 0
    resumed = amnp_ranks(3, "--resume", str(other), "--sharded-head")
    assert resumed.returncode == 0, resumed.stderr
    for name, value in ranks_state.items():
        np.testing.assert_allclose(saved(other)[0][name], value, rtol=1e-4, atol=1e-6, err_msg=name)


def test_the_command_with_a_sharded_head_trains_and_evaluates(tmp_path):
    out = tmp_path / "sharded"
    result = amnp_ranks(2, "--iters", "6", "--sharded-head", "--out", str(out), evaluate=True)
    assert result.returncode == 0, result.stderr
    assert "with the head sharded" in result.stdout and result.stdout.count("held-out verification accuracy") == 1
    assert os.path.isfile(out / "eval.json") and os.path.isfile(out / "figures" / "training_curves.png")
    state, _ = saved(out)
    assert state["param/head.classifier.weight"].shape == (7, 128)  # gathered: every class


def test_two_ranks_on_one_machine_divide_its_cores_between_their_blas_libraries(tmp_path):
    """Without a count in the environment, each rank multiplies on ⌊cores / 2⌋ threads (at least
    1), not on every core as two libraries left alone would; the command line says so."""
    unset = {name: "" for name in BLAS_THREAD_VARIABLES}
    result = amnp_ranks(2, "--iters", "2", "--out", str(tmp_path / "run"), env=dict(unset, AMNP_TEST_BLAS=str(tmp_path)))
    assert result.returncode == 0, result.stderr
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    for rank in ranks:
        assert rank["chosen"] == max(1, rank["cores"] // 2)
        assert rank["counts"] and set(rank["counts"]) == {rank["chosen"]}
    assert f"on 2 ranks, {ranks[0]['chosen']} BLAS thread" in result.stdout
    if set(ranks[0]["own"]) == {ranks[0]["chosen"]}:  # then the steps above would look the same without it
        pytest.skip(f"the ranks' BLAS libraries run {ranks[0]['chosen']} thread(s) on their own here")


def test_a_blas_thread_count_set_in_the_environment_is_left_to_the_ranks(tmp_path):
    result = amnp_ranks(2, "--iters", "2", "--out", str(tmp_path / "run"), env={"AMNP_TEST_BLAS": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    for rank in range(2):  # amnp_ranks sets OPENBLAS_NUM_THREADS=1
        recorded = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert recorded["chosen"] is None and set(recorded["counts"]) == {1}
    assert "BLAS thread" not in result.stdout


def test_a_global_batch_that_the_ranks_do_not_divide_is_refused_once(tmp_path):
    result = amnp_ranks(3, "--iters", "4", "--batch-size", "8", "--out", str(tmp_path / "run"))  # the last one wins
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("amnp:")]
    assert lines == ["amnp: error: batch-size 8 is the global batch, split evenly over the 3 ranks, which do "
                     "not divide it: choose a multiple of 3"]


@pytest.mark.parametrize("mpi4py_runner", [True, False], ids=["python -m mpi4py", "python"])
def test_a_rank_that_raises_ends_the_whole_job_within_seconds(tmp_path, mpi4py_runner):
    """Also without ``-m mpi4py`` (whose runner aborts the job on a non-zero exit): amnp ends
    the job itself (MPI_Abort), where a rank's plain exit would leave the other waiting."""
    started = time.monotonic()
    result = amnp_ranks(2, "--iters", "1000", "--out", str(tmp_path / "run"), env={"AMNP_TEST_RAISE": "1:3"},
                        timeout=60, mpi4py_runner=mpi4py_runner)
    assert result.returncode == 1, result.stderr
    assert "amnp: error: rank 1 of 2: injected failure on rank 1 at step 3" in result.stderr
    assert time.monotonic() - started < 30


def test_a_non_finite_loss_on_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    run_dir = tmp_path / "run"
    result = amnp_ranks(2, "--iters", "1000", "--out", str(run_dir), env={"AMNP_TEST_NAN": "1:5"}, timeout=60)
    assert result.returncode == 3, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("amnp:")]
    assert len(lines) == 1 and lines[0].startswith("amnp: error: training diverged at step 5: the loss is nan")
    assert saved(run_dir)[1]["step"] == 0  # the last good checkpoint, untouched


@pytest.mark.parametrize("target", ["rank 1", "mpiexec"])
def test_sigterm_on_any_rank_saves_once_and_stops_every_rank(tmp_path, target):
    reason = mpi_missing()
    if reason:
        pytest.skip(f"MPI test skipped: {reason}")
    run_dir, pids = tmp_path / "run", tmp_path / "pids"
    pids.mkdir()
    environment = checkout_env(OPENBLAS_NUM_THREADS="1", AMNP_TEST_PIDS=str(pids))
    job = subprocess.Popen(["mpiexec", "-n", "2", sys.executable, "-m", "mpi4py", *TRAIN, "--distributed",
                            "--no-eval", *GLOBAL_BATCH, "--iters", "100000", "--out", str(run_dir)], cwd=ROOT, env=environment,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (run_dir / "metrics.jsonl").exists():  # training has begun on every rank
            assert time.monotonic() < deadline and job.poll() is None, job.communicate()
            time.sleep(0.1)
        victim = int((pids / "rank1.pid").read_text()) if target == "rank 1" else job.pid
        os.kill(victim, signal.SIGTERM)
        stdout, stderr = job.communicate(timeout=60)
    finally:
        job.kill()
    assert job.returncode == 128 + signal.SIGTERM, stdout + stderr
    assert stdout.count("checkpoint saved; continue with") == 1
    assert [line for line in stderr.splitlines() if line.startswith("amnp:")] == ["amnp: interrupted by SIGTERM"]
    step = saved(run_dir)[1]["step"]
    assert step >= 20 and logged_steps(run_dir) == sorted(set(logged_steps(run_dir)))
    resumed = amnp_ranks(2, "--resume", str(run_dir), "--stop-at", str(step + 2))
    assert resumed.returncode == 0, resumed.stderr
    assert saved(run_dir)[1]["step"] == step + 2


# ---------------------------------------------------------------- class sampling (--sample-rate)

def test_the_command_samples_classes_on_2_ranks_records_the_rate_and_resumes_bit_exactly(tmp_path):
    """A batch of 4 names at most 4 of the 20 classes, so at rate 0.5 each rank's softmax fills
    up with random classes (5 of its 10): drawn from (seed, rank, step), so the resumed run
    draws what the uninterrupted one drew."""
    sampled = ("--sharded-head", "--sample-rate", "0.5", "--batch-size", "4")
    classes = {"AMNP_TEST_CLASSES": "20"}
    whole, part = tmp_path / "whole", tmp_path / "part"
    result = amnp_ranks(2, *sampled, "--iters", "4", "--out", str(whole), env=classes)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("on 2 ranks with the head sharded, sampling 0.5 of its classes") == 1
    assert json.loads((whole / "config.json").read_text())["sample_rate"] == 0.5
    state, meta = saved(whole)
    assert meta["config"]["sample_rate"] == 0.5
    assert state["param/head.classifier.weight"].shape == (20, 128)  # gathered: every class

    assert amnp_ranks(2, *sampled, "--iters", "4", "--stop-at", "2", "--out", str(part), env=classes).returncode == 0
    resumed = amnp_ranks(2, "--resume", str(part), "--sharded-head", env=classes)
    assert resumed.returncode == 0, resumed.stderr
    for name, value in state.items():
        assert np.array_equal(saved(part)[0][name], value), name


def sampled_trainer_state(comm, out, sample_rate) -> dict:
    """The parameters after 4 float64 steps of batch 4 on ``comm`` (None: one process, the head
    replicated and not sampled), a sharded head's as this rank's rows."""
    settings = config(iters=4, batch_size=4) if sample_rate is None else config(iters=4, batch_size=4,
                                                                                  sample_rate=sample_rate)
    trainer = Trainer(settings, tiny_dataset(num_classes=7), str(out), progress=False, comm=comm,
                      sharded_head=comm is not None, dtype=np.float64)
    trainer.start()
    assert trainer.train() == "finished"
    return trainer.model.state_dict()


@pytest.mark.parametrize("rate, same", [(1.0, True), (0.99, True), (0.5, False)])
def test_class_sampling_that_keeps_every_class_trains_as_the_unsampled_head(tmp_path, rate, same):
    """Rate 1 is no sampling; rate 0.99 keeps ceil(0.99 · 4) = 4 and ceil(0.99 · 3) = 3 classes
    of the two ranks' 4 + 3, the sampling path with nothing left out: both end where one
    process with the whole head does.  Rate 0.5 leaves classes out, and ends elsewhere."""
    unsampled = sampled_trainer_state(None, tmp_path / "one", None)

    def errors(comm):
        state = sampled_trainer_state(comm, tmp_path / "ranks", rate)
        rows = slice(*class_range(7, comm.size, comm.rank))
        expected = dict(unsampled, **{"head.classifier.weight": unsampled["head.classifier.weight"][rows]})
        return max(float(np.abs(value - expected[name]).max() / np.abs(expected[name]).max())
                   for name, value in state.items())

    for error in run_simulated(2, errors):
        assert (error < 1e-12) if same else (error > 1e-4), error


@pytest.mark.parametrize("arguments", [["--sample-rate", "0.5"], ["--distributed", "--sample-rate", "0.5"],
                                       ["--distributed", "--sample-rate", "1"]],
                         ids=["alone", "without-sharded-head", "rate-1-without-sharded-head"])
def test_sample_rate_without_a_sharded_head_is_refused_before_any_rank_starts(tmp_path, capsys, monkeypatch,
                                                                             arguments):
    monkeypatch.setattr(cli, "open_dataset", lambda config: tiny_dataset(seed=config.seed))  # were it reached
    assert cli.main(["train", "--out", str(tmp_path / "run"), "--iters", "1", "--batch-size", "8", "--no-eval",
                     *arguments]) == cli.EXIT_BAD_INPUT
    assert capsys.readouterr().err == ("amnp: error: --sample-rate samples the classes of a sharded head: "
                                       "it needs --distributed --sharded-head\n")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("rate", [0, -0.5, 1.5, float("nan"), True, "0.5"])
def test_a_sample_rate_outside_0_1_is_refused_naming_the_option(rate):
    with pytest.raises(ValueError, match=r"^sample-rate must lie in \(0, 1\] \(1: every class, no sampling\), got "):
        TrainConfig(sample_rate=rate).validate()


def test_the_command_refuses_a_sample_rate_outside_0_1_in_one_line(tmp_path):
    """Under ``--distributed`` the option is checked after MPI starts; here one process, no mpiexec."""
    reason = mpi_missing()
    if reason:
        pytest.skip(f"MPI test skipped: {reason}")
    result = subprocess.run([sys.executable, *TRAIN, "--distributed", "--sharded-head", "--sample-rate", "1.5",
                             "--out", str(tmp_path / "run")], cwd=ROOT, env=checkout_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr == "amnp: error: sample-rate must lie in (0, 1] (1: every class, no sampling), got 1.5\n"
    assert not (tmp_path / "run").exists()


def test_a_sampling_run_resumed_without_a_sharded_head_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"^sample-rate 0.5 samples the classes of a sharded head, and this "
                                         r"run's head is not sharded: train \(or resume\) it with --distributed "
                                         r"--sharded-head$"):
        Trainer(config(sample_rate=0.5), tiny_dataset(), str(tmp_path), progress=False)


def test_a_config_json_written_before_class_sampling_loads_as_rate_1():
    old = {key: value for key, value in dataclasses.asdict(TrainConfig()).items() if key != "sample_rate"}
    loaded = TrainConfig.from_dict(old)
    loaded.validate()
    assert loaded.sample_rate == 1.0


# ---------------------------------------------------------------- GPUs (--backend cupy: NCCL)

def test_the_command_on_cupy_without_cupy_or_a_gpu_says_so_once(tmp_path):
    from amnp.backend import cupy_available

    available, reason = cupy_available()
    if available:
        pytest.skip("CuPy and a GPU are here: the GPU test trains on them")
    result = amnp_ranks(2, "--backend", "cupy", "--iters", "2", "--out", str(tmp_path / "run"))
    assert result.returncode == 1
    assert [line for line in result.stderr.splitlines() if line.startswith("amnp:")] == [f"amnp: error: {reason}"]
    assert not (tmp_path / "run").exists()


def nccl_missing() -> str:
    try:
        from cupy.cuda import nccl
    except ImportError as exc:
        return f"CuPy has no NCCL ({exc})"
    return "" if getattr(nccl, "available", True) else "this CuPy cannot load NCCL"


@pytest.mark.gpu
def test_the_command_trains_on_gpus_through_nccl(cupy_module, tmp_path):
    """One rank per GPU through the NCCL communicator: the 1-rank job, and where the machine
    has 2 GPUs the 2-rank job with the head sharded, which must train as the 1-rank one does
    (float32 on GPUs: the sums' order differs, not more)."""
    reason = nccl_missing()
    if reason:
        pytest.skip(f"GPU test skipped: {reason}")
    one = amnp_ranks(1, "--backend", "cupy", "--iters", "4", "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    assert "steps of 12 on cupy on 1 ranks" in one.stdout and "finished at step 4" in one.stdout
    one_state, _ = saved(tmp_path / "one")
    assert all(np.isfinite(value).all() for value in one_state.values())
    if cupy_module.cuda.runtime.getDeviceCount() < 2:
        return  # the 2-rank job needs a GPU per rank
    two = amnp_ranks(2, "--backend", "cupy", "--sharded-head", "--iters", "4", "--out", str(tmp_path / "two"))
    assert two.returncode == 0, two.stderr
    two_state, _ = saved(tmp_path / "two")
    assert two_state["param/head.classifier.weight"].shape == (7, 128)
    for name, value in one_state.items():
        np.testing.assert_allclose(two_state[name], value, rtol=1e-3, atol=1e-5, err_msg=name)


def test_a_sharded_head_without_distributed_is_refused_in_one_line(tmp_path, capsys):
    assert cli.main(["train", "--out", str(tmp_path / "run"), "--iters", "1", "--no-eval",
                     "--sharded-head"]) == cli.EXIT_BAD_INPUT
    assert capsys.readouterr().err == ("amnp: error: --sharded-head splits the head's classes over the ranks "
                                       "of --distributed\n")
    assert not (tmp_path / "run").exists()
