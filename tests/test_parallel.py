"""amnp.parallel: a batch split over the threads of one process gives the one-thread step
(float64, to rounding), resumes bit for bit, follows the model's parameters, keeps the BLAS
library on one thread per part and puts its count back, and refuses what it cannot split.
Processes that share a machine divide its cores between their BLAS libraries, unless the
environment sets a count (under a real ``mpiexec``: tests/test_distributed_training.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from amnp import checkpoint, models
from amnp.config import build_head
from amnp.distributed import SingleProcess, run_simulated
from amnp.heads import TrainingModel
from amnp.inference import embed
from amnp.parallel import (BLAS_THREAD_VARIABLES, BatchThreads, ThreadReplicas, available_cores, blas_threads,
                           blas_threads_per_process, one_blas_thread)
from amnp.training import Trainer

from .checkout import CHECKOUT, checkout_env
from .distributed_cases import relative_error
from .host_guard import guard, guard_parameters
from .test_training import config, tiny_dataset


def trained(tmp_path, name, threads, comm=None, steps=6, **overrides):
    """(parameters, logged losses) of a float64 run of ``steps`` steps on ``threads`` threads."""
    out = str(tmp_path / name)
    trainer = Trainer(config(iters=steps, batch_size=12, log_every=1, **overrides),
                      tiny_dataset(num_classes=7, mirror=True), out, progress=False, comm=comm, dtype=np.float64,
                      threads=threads)
    trainer.start()
    assert trainer.train() == "finished"
    losses = [json.loads(line)["loss"] for line in open(os.path.join(out, "metrics.jsonl"))] if trainer.writer else None
    return trainer.model.state_dict(), losses


@pytest.mark.parametrize("loss, options", [("am-softmax", {"s": 8.0}), ("softmax", {}),
                                           ("normface", {"learn_scale": True, "s": 4.0})])
@pytest.mark.parametrize("threads", [2, 5])  # 5: parts of 2, 2, 2, 3, 3 images
def test_a_run_on_threads_matches_one_thread_to_1e_12(tmp_path, threads, loss, options):
    one, one_losses = trained(tmp_path, "one", 1, loss=loss, loss_options=options)
    split, split_losses = trained(tmp_path, "split", threads, loss=loss, loss_options=options)
    assert split.keys() == one.keys()
    for name, value in one.items():
        assert relative_error(split[name], value) < 1e-12, name
    assert relative_error(split_losses, one_losses) < 1e-12


def test_ranks_that_each_split_their_batch_over_threads_match_one_process(tmp_path):
    one, one_losses = trained(tmp_path, "one", 1)
    # 2 simulated ranks × 2 threads: both levels of the sum, and one_blas_thread's blocks overlapping
    results = run_simulated(2, lambda comm: trained(tmp_path, f"rank{comm.rank}", 2, comm=comm))
    for state, _ in results:
        for name, value in one.items():
            assert relative_error(state[name], value) < 1e-12, name
    assert relative_error(results[0][1], one_losses) < 1e-12


def test_the_trainer_runs_each_part_of_its_batch_in_a_thread_of_its_own(tmp_path, monkeypatch):
    """The one-thread comparisons above would also pass if ``threads`` were ignored."""
    seen = []
    forward_backward = TrainingModel.forward_backward

    def recording(model, x, labels, step, share=1.0):
        seen.append((step, threading.get_ident(), len(labels)))
        return forward_backward(model, x, labels, step, share)

    monkeypatch.setattr(TrainingModel, "forward_backward", recording)
    trainer = Trainer(config(iters=2, batch_size=12), tiny_dataset(num_classes=7), str(tmp_path), progress=False,
                      threads=3)
    trainer.start()
    assert trainer.train() == "finished"
    for step in (0, 1):  # three parts, the first in the loop's thread, the others in the pool's
        parts = [(thread, rows) for at, thread, rows in seen if at == step]
        assert sorted(rows for _, rows in parts) == [4, 4, 4]
        threads = {thread for thread, _ in parts}
        assert threading.get_ident() in threads and len(threads) >= 2


def test_a_run_on_threads_resumes_bit_for_bit(tmp_path):
    dataset = tiny_dataset(mirror=True)
    straight = Trainer(config(), dataset, str(tmp_path / "a"), progress=False, threads=2)
    straight.start()
    assert straight.train() == "finished"
    first = Trainer(config(), dataset, str(tmp_path / "b"), progress=False, threads=2)
    first.start()
    assert first.train(stop_at=5) == "stopped"
    second = Trainer(config(), dataset, str(tmp_path / "b"), progress=False, threads=2)
    second.resume()  # loads new arrays into the model's params: the replicas must follow
    assert second.step == 5 and second.train() == "finished"
    expected = straight.model.state_dict()
    for name, value in second.model.state_dict().items():
        assert np.array_equal(value, expected[name]), name


def small_model(dtype=np.float64):
    net = models.build("small", (1, 16, 16), dtype=dtype, rng=0)
    return TrainingModel(net, build_head("am-softmax", models.embedding_size(net), 5, dtype=dtype, rng=1))


def batch(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 16, 16)), rng.integers(0, 5, n)


def split_step(replicas, x, y):
    """The batch's mean loss in a step on ``replicas`` and the model's gradients."""
    def part(model, x_part, y_part):
        share = len(y_part) / len(y)
        return model.forward_backward(x_part, y_part, 0, share) * share

    parts = replicas.run(part, x, y)
    model = replicas.model
    return sum(parts), {name: owner.grads[key].copy() for name, owner, key in model.named_parameters()}


def test_the_replicas_use_the_weights_loaded_into_the_model_after_they_were_made():
    x, y = batch()
    replicas = ThreadReplicas(small_model(), 3)
    split_step(replicas, x, y)
    new_weights = small_model().state_dict()
    new_weights = {name: value * 0.5 for name, value in new_weights.items()}
    replicas.model.load_state_dict(new_weights)  # new arrays in the model's params
    loss, gradients = split_step(replicas, x, y)

    reference = small_model()
    reference.load_state_dict(new_weights)
    expected_loss, expected = split_step(ThreadReplicas(reference, 1), x, y)
    assert relative_error(loss, expected_loss) < 1e-12
    for name, value in expected.items():
        assert relative_error(gradients[name], value) < 1e-12, name


@pytest.mark.parametrize("threads, batch_size", [(2, 256), (3, 5), (4, 2)])  # (4, 2): parts of one row
def test_embedding_on_threads_gives_the_one_thread_embeddings(threads, batch_size):
    net = small_model(np.float32).net
    images = np.random.default_rng(0).integers(0, 256, (11, 1, 16, 16)).astype(np.uint8)
    expected = embed(net, images, mirror=True, batch_size=batch_size)
    found = embed(net, images, mirror=True, batch_size=batch_size, threads=threads)
    np.testing.assert_allclose(found, expected, rtol=1e-5, atol=1e-6)


def test_the_embedding_pass_runs_each_part_of_a_batch_in_a_thread_of_its_own():
    net = small_model(np.float32).net
    seen, forward = [], net.forward

    def recording(x):
        seen.append((threading.get_ident(), len(x)))
        return forward(x)

    net.forward = recording
    embed(net, np.zeros((7, 1, 16, 16), np.uint8), mirror=False, threads=3)
    # three parts, the first in this thread and the others in the pool's (which may reuse one
    # of its threads for both, when the first of them has finished)
    assert sorted(rows for _, rows in seen) == [2, 2, 3]
    threads = {thread for thread, _ in seen}
    assert threading.get_ident() in threads and len(threads) >= 2


def test_splitting_arrays_that_are_not_numpy_is_refused():
    with pytest.raises(ValueError, match="on cupy the GPU runs the whole batch: use one thread"):
        BatchThreads(2).map(lambda r, x: x, guard(np.zeros((4, 3))))


def blas_counts():
    return [library["num_threads"] for library in threadpool_info() if library["user_api"] == "blas"]


def skip_where_blas_runs_one_thread():
    if set(blas_counts()) == {1}:
        pytest.skip("the BLAS library runs one thread already: a count of 1 would look the same unset")


def test_each_part_multiplies_on_one_blas_thread_and_the_count_is_put_back_after():
    skip_where_blas_runs_one_thread()
    before = blas_counts()
    seen = []

    def part(model, x, y):
        seen.append(blas_counts())
        return model.forward_backward(x, y, 0)

    ThreadReplicas(small_model(), 2).run(part, *batch())
    assert seen == [[1] * len(before)] * 2
    assert blas_counts() == before


def test_one_blas_thread_blocks_in_two_threads_take_turns_and_leave_the_count_as_it_was():
    before = blas_counts()
    seen = []

    def second():
        with one_blas_thread():
            seen.append(blas_counts())

    worker = threading.Thread(target=second)
    with one_blas_thread():
        worker.start()
        worker.join(timeout=0.5)
        assert worker.is_alive() and not seen  # waiting for its turn
    worker.join()
    assert seen == [[1] * len(before)] and blas_counts() == before


@pytest.fixture
def no_blas_count_set(monkeypatch):
    for name in BLAS_THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("processes, cores, each", [(2, 2, 1), (2, 16, 8), (3, 8, 2), (4, 2, 1), (5, 1, 1)])
def test_processes_on_one_machine_divide_its_cores(no_blas_count_set, processes, cores, each):
    assert blas_threads_per_process(processes, cores) == each


def test_one_process_keeps_the_blas_librarys_own_count(no_blas_count_set):
    assert blas_threads_per_process(1, 16) is None


@pytest.mark.parametrize("variable", BLAS_THREAD_VARIABLES)
def test_a_count_set_in_the_environment_stands(no_blas_count_set, monkeypatch, variable):
    monkeypatch.setenv(variable, "3")
    assert blas_threads_per_process(2, 16) is None


def test_the_cores_by_default_are_those_this_process_may_run_on(no_blas_count_set, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)), raising=False)
    assert available_cores() == 6 and blas_threads_per_process(2) == 3


def test_an_empty_count_in_the_environment_counts_as_unset(no_blas_count_set, monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "")
    assert blas_threads_per_process(2, 16) == 8


def test_a_process_count_below_1_is_refused():
    with pytest.raises(ValueError, match="sharing the cores: processes must be a positive integer, got 0"):
        blas_threads_per_process(0, 2)


def test_blas_threads_sets_the_count_within_the_block_and_puts_it_back():
    skip_where_blas_runs_one_thread()
    before = blas_counts()
    with blas_threads(1):
        assert blas_counts() == [1] * len(before)
    assert blas_counts() == before
    with blas_threads(None):
        assert blas_counts() == before


class SharingTheMachine(SingleProcess):
    processes_on_node = 2


def shared_machine_trainer(tmp_path, **overrides):
    """A trainer whose process shares this machine with one other; skips where dividing the
    cores leaves the BLAS library's own count (one core, or a library on one thread)."""
    trainer = Trainer(config(**overrides), tiny_dataset(), str(tmp_path), comm=SharingTheMachine())
    assert trainer.blas_threads == max(1, available_cores() // 2)
    if set(blas_counts()) == {trainer.blas_threads}:
        pytest.skip(f"the BLAS library runs {trainer.blas_threads} thread(s) already: nothing to divide here")
    return trainer


def test_a_trainer_whose_process_shares_the_machine_trains_on_its_share_of_the_cores(no_blas_count_set, tmp_path):
    """The loop runs within the chosen count (seen inside each step) and puts it back after."""
    trainer = shared_machine_trainer(tmp_path, iters=2)
    seen, step = [], trainer.train_step
    trainer.train_step = lambda index: (seen.append(blas_counts()), step(index))[1]
    before = blas_counts()
    trainer.start()
    assert trainer.train() == "finished"
    assert seen == [[trainer.blas_threads] * len(before)] * 2 and blas_counts() == before


def test_the_count_is_put_back_when_training_fails(no_blas_count_set, tmp_path):
    trainer = shared_machine_trainer(tmp_path, iters=4)

    def failing_step(index):
        raise RuntimeError(f"injected failure at step {index}")

    trainer.train_step = failing_step
    before = blas_counts()
    trainer.start()
    with pytest.raises(RuntimeError, match="injected failure at step 0"):
        trainer.train()
    assert blas_counts() == before


def test_simulated_ranks_are_threads_of_one_process_and_keep_the_librarys_count(no_blas_count_set):
    assert run_simulated(3, lambda comm: comm.processes_on_node) == [1, 1, 1]


def test_an_error_in_one_part_is_raised_once_every_part_has_finished_and_the_replicas_still_work():
    """The calling thread's part fails at once; the other part is still running then, and has
    finished when the error comes out."""
    finished, failed = [], threading.Event()

    def part(model, x, y):
        if model is replicas.model:
            failed.set()
            raise ValueError("labels out of range in this part")
        failed.wait(timeout=10)
        time.sleep(0.2)  # still running well after the first part raised
        finished.append(len(y))
        return model.forward_backward(x, y, 0)

    replicas = ThreadReplicas(small_model(), 2)
    with pytest.raises(ValueError, match="labels out of range in this part"):
        replicas.run(part, *batch())
    assert finished == [3]
    x, y = batch()
    loss, _ = split_step(replicas, x, y)
    assert np.isfinite(loss)


@pytest.mark.parametrize("threads", [0, -1, 1.5, True])
def test_a_thread_count_that_is_not_a_positive_integer_is_refused(threads):
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        ThreadReplicas(small_model(), threads)


def test_a_batch_smaller_than_the_threads_runs_one_row_per_thread():
    x, y = batch(2)
    loss, gradients = split_step(ThreadReplicas(small_model(), 3), x, y)
    expected_loss, expected = split_step(ThreadReplicas(small_model(), 1), x, y)
    assert relative_error(loss, expected_loss) < 1e-12
    for name, value in expected.items():
        assert relative_error(gradients[name], value) < 1e-12, name


def test_threads_with_a_sharded_head_are_refused(tmp_path):
    with pytest.raises(ValueError, match="a sharded head runs its collectives once per rank"):
        Trainer(config(), tiny_dataset(), str(tmp_path), progress=False, comm=SingleProcess(), sharded_head=True,
                threads=2)


def test_threads_on_arrays_that_are_not_numpy_are_refused():
    model = small_model(np.float32)
    guard_parameters(model)  # device-like arrays, as CuPy's
    with pytest.raises(ValueError, match="on cupy the GPU runs the whole batch: use one thread"):
        ThreadReplicas(model, 2)
    ThreadReplicas(model, 1)  # one thread: the plain step, on any array module


def amnp_train(*arguments):
    return subprocess.run([sys.executable, "-m", "amnp", "train", "--iters", "4", "--no-eval", *arguments],
                          cwd=CHECKOUT, env=checkout_env(), capture_output=True, text=True, timeout=300)


def test_the_command_trains_on_threads_says_so_and_resumes_on_another_count(tmp_path):
    out = tmp_path / "run"
    result = amnp_train("--threads", "2", "--stop-at", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "on numpy, 2 threads" in result.stdout
    resumed = subprocess.run([sys.executable, "-m", "amnp", "train", "--resume", str(out), "--threads", "1",
                              "--no-eval"], cwd=CHECKOUT, env=checkout_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "finished at step 4" in resumed.stdout and "2 threads" not in resumed.stdout
    assert checkpoint.read(str(out / "checkpoint.npz"))[2]["step"] == 4


def test_the_command_refuses_a_thread_count_below_1_in_one_line(tmp_path):
    result = amnp_train("--threads", "0", "--out", str(tmp_path / "run"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "amnp: error: splitting the batch: threads must be a positive integer, got 0"]
    assert not (tmp_path / "run").exists()
