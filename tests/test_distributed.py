"""amnp.distributed: the communicators, exact data parallelism and the class-sharded head.

The maths is checked twice with the same code (tests/distributed_cases.py): on simulated ranks
(threads of this process) and on real processes under ``mpiexec -n 1/2/3``, each rank
comparing its part with the single-process result to 1e-10 (the head) and 1e-12 (the summed
gradients) in float64, with uneven local batches and uneven class shards.
"""
import importlib.util
import re
import shutil
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import amnp
from amnp.distributed import (
    SimulatedWorld,
    SingleProcess,
    all_reduce_gradients,
    build_sharded_head,
    class_range,
    communicator_for,
    run_simulated,
)
from amnp import init as param_init
from amnp.config import build_head
from amnp.heads import TrainingModel
from amnp.optim import SGD
from amnp.validation import value_checks

from .checkout import checkout_env
from . import distributed_cases as cases
from .host_guard import GuardedArray, guard, guard_parameters, transfers

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- the collectives

@pytest.mark.parametrize("sizes", [(3, 3, 3), (2, 0, 4), (1, 2)], ids=["even", "uneven3", "uneven2"])
def test_simulated_collectives_match_their_definitions(sizes):
    world = len(sizes)
    rng = np.random.default_rng(0)
    pieces = [rng.standard_normal((n, 2)) for n in sizes]
    full = [rng.standard_normal((sum(sizes), 2)) for _ in sizes]
    vectors = [rng.standard_normal(4) for _ in sizes]

    def collectives(comm):
        r = comm.rank
        summed = comm.all_reduce(vectors[r].copy())
        maxed = comm.all_reduce(vectors[r].copy(), "max")
        broadcast = comm.broadcast(vectors[r].copy(), root=world - 1)
        return (summed, maxed, broadcast, comm.all_gather(pieces[r], sizes),
                comm.reduce_scatter(full[r], sizes), comm.all_gather_sizes(sizes[r]),
                comm.broadcast_object({"from": r}, root=1))

    starts = np.cumsum((0,) + sizes)
    for rank, (summed, maxed, broadcast, gathered, scattered, counts, obj) in enumerate(
            run_simulated(world, collectives)):
        np.testing.assert_allclose(summed, np.sum(vectors, axis=0), rtol=1e-15)
        np.testing.assert_array_equal(maxed, np.max(vectors, axis=0))
        np.testing.assert_array_equal(broadcast, vectors[-1])
        np.testing.assert_array_equal(gathered, np.concatenate(pieces))
        np.testing.assert_allclose(scattered, np.sum(full, axis=0)[starts[rank]:starts[rank + 1]], rtol=1e-15)
        assert counts == list(sizes) and obj == {"from": 1}


def test_simulated_ranks_get_bit_identical_sums():
    """Every rank reduces in rank order, so replicated parameters never drift apart."""
    rng = np.random.default_rng(1)
    values = [rng.standard_normal(1000) * 10.0 ** rng.integers(-8, 8, 1000) for _ in range(3)]
    results = run_simulated(3, lambda comm: comm.all_reduce(values[comm.rank].copy()))
    assert all(np.array_equal(results[0], other) for other in results[1:])


def test_single_process_collectives_leave_arrays_as_they_are():
    comm, x = SingleProcess(), np.arange(6.0).reshape(3, 2)
    assert comm.all_reduce(x) is x and comm.all_gather(x, [3]) is x and comm.reduce_scatter(x, [3]) is x
    np.testing.assert_array_equal(x, np.arange(6.0).reshape(3, 2))
    assert comm.all_gather_sizes(3) == [3] and comm.broadcast_object("id") == "id"


@pytest.mark.parametrize("call, message", [
    (lambda comm: comm.all_reduce(np.ones(3), "mean"), "op must be one of sum, max, got 'mean'"),
    (lambda comm: comm.all_reduce(np.ones((3, 2)).T), "must be C-contiguous"),
    (lambda comm: comm.all_reduce([1.0, 2.0]), "needs an array, got list"),
    (lambda comm: comm.all_gather(np.ones((2, 1)), [2]), r"one row count >= 0 per rank \(2\), got \[2\]"),
    (lambda comm: comm.all_gather(np.ones((2, 1)), [3, 1]), r"expects 3 rows for sizes \[3, 1\], got shape \(2, 1\)"),
    (lambda comm: comm.reduce_scatter(np.ones((2, 1)), [2, 1]), r"expects 3 rows"),
    (lambda comm: comm.broadcast(np.ones(2), root=2), r"root must be a rank in \[0, 1\], got 2"),
], ids=["op", "contiguous", "not-an-array", "sizes-per-rank", "gather-rows", "scatter-rows", "root"])
def test_bad_collective_arguments_are_refused_before_anything_is_sent(call, message):
    def rank(comm):
        if comm.rank == 0:
            with pytest.raises((ValueError, TypeError), match=message):
                call(comm)
        comm.barrier()  # had rank 0 sent anything, rank 1 would be left waiting here

    run_simulated(2, rank, timeout=10)


def test_a_failing_rank_ends_the_simulated_world_with_its_own_error():
    def rank(comm):
        if comm.rank == 1:
            raise KeyError("rank 1 failed")
        comm.barrier()  # the others would wait for rank 1 for ever

    with pytest.raises(KeyError, match="rank 1 failed"):
        run_simulated(3, rank, timeout=60)
    assert not [t for t in threading.enumerate() if t.name.startswith("rank ")]


def test_a_rank_that_skips_a_collective_times_out_instead_of_hanging():
    def rank(comm):
        if comm.rank == 0:
            comm.barrier()

    with pytest.raises(threading.BrokenBarrierError):
        run_simulated(2, rank, timeout=0.5)


def test_simulated_world_size_is_checked():
    with pytest.raises(ValueError, match="size must be a positive integer, got 0"):
        SimulatedWorld(0)


def test_importing_amnp_and_its_distributed_package_imports_neither_mpi4py_nor_cupy():
    code = ("import sys, amnp, amnp.distributed, amnp.distributed.mpi, amnp.distributed.nccl; "
            "print(sorted(m for m in ('mpi4py', 'cupy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            cwd=ROOT, env=checkout_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# ---------------------------------------------------------------- the sharded head

@pytest.mark.parametrize("block_rows", [2, None], ids=["blocks-of-2-rows", "one-block"])
@pytest.mark.parametrize("size", [2, 3])
def test_each_rank_draws_exactly_its_rows_of_the_one_process_head(monkeypatch, size, block_rows):
    """Every member of the margin family, 7 classes over 2 (4 + 3) and 3 (3 + 2 + 2) ranks; blocks
    of 2 rows cross the shards' edges.  The generator ends where the whole draw leaves it."""
    if block_rows:
        monkeypatch.setattr(param_init, "ROW_BLOCK_VALUES", block_rows * cases.EMBEDDING)
    for loss, options in cases.HEADS:
        rng = np.random.default_rng(5)
        whole = build_head(loss, cases.EMBEDDING, cases.CLASSES, rng=rng, **options)
        after = rng.random()

        def draw(comm):
            rng = np.random.default_rng(5)
            head = build_sharded_head(loss, cases.EMBEDDING, cases.CLASSES, comm, rng=rng, **options)
            return head.classifier.params["weight"], rng.random()

        for rank, (weight, next_value) in enumerate(run_simulated(size, draw)):
            start, stop = class_range(cases.CLASSES, size, rank)
            assert weight.dtype == np.float32 and np.array_equal(weight, whole.classifier.params["weight"][start:stop])
            assert next_value == after, (loss, options)


@pytest.mark.parametrize("scheme", ["xavier", 0.01], ids=["xavier", "gaussian"])
def test_drawing_some_rows_of_a_weight_gives_exactly_those_rows_of_the_whole_draw(monkeypatch, scheme):
    monkeypatch.setattr(param_init, "ROW_BLOCK_VALUES", 4 * 6)  # blocks of 4 rows of 3 × 2
    whole = param_init.weight((11, 3, 2), 6, scheme, np.float64, np.random.default_rng(2), "test")
    for start in range(12):
        for stop in range(start, 12):
            rows = param_init.weight((11, 3, 2), 6, scheme, np.float64, np.random.default_rng(2), "test",
                                     rows=(start, stop))
            assert rows.shape == (stop - start, 3, 2) and np.array_equal(rows, whole[start:stop])
    with pytest.raises(ValueError, match=r"test: rows \[3, 12\) are not rows of a weight of shape \(11, 3, 2\)"):
        param_init.weight((11, 3, 2), 6, scheme, np.float64, np.random.default_rng(2), "test", rows=(3, 12))


def test_a_rank_holds_no_more_than_a_block_and_its_rows_while_drawing_its_shard(monkeypatch):
    """4,000 classes × 64 over 4 ranks, blocks of 100 rows: rank 1 keeps 1,000 rows (250 KiB
    in float32) and draws 50 KiB at a time, where the whole draw would hold 2 MiB of float64
    values and 1 MiB of float32 at once."""
    monkeypatch.setattr(param_init, "ROW_BLOCK_VALUES", 100 * 64)
    rank_1_of_4 = SimulatedWorld(4).communicators()[1]  # drawing its shard needs no collective
    build_sharded_head("am-softmax", 64, 8, rank_1_of_4, rng=0)  # what a first call imports is not the draw's
    tracemalloc.start()
    try:
        head = build_sharded_head("am-softmax", 64, 4000, rank_1_of_4, rng=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    shard, block = 1000 * 64 * 4, 100 * 64 * 8
    assert head.classifier.params["weight"].nbytes == shard
    assert peak < shard + block + 32 * 1024, peak  # and the one-class head, the generators, ...


def test_class_range_splits_contiguously_and_unevenly():
    assert [class_range(7, 3, r) for r in range(3)] == [(0, 3), (3, 5), (5, 7)]
    assert [class_range(8, 2, r) for r in range(2)] == [(0, 4), (4, 8)]
    with pytest.raises(ValueError, match="2 classes cannot be split over 3 ranks"):
        class_range(2, 3, 0)


@pytest.mark.parametrize("size", [1, 2, 3])
@pytest.mark.parametrize("loss, options", cases.HEADS,
                         ids=[f"{loss}{''.join('-' + k for k in options)}" for loss, options in cases.HEADS])
def test_sharded_head_equals_the_single_process_head(size, loss, options):
    for errors in run_simulated(size, lambda comm: cases.sharded_head_errors(comm, loss, options)):
        assert max(errors.values()) < cases.TOLERANCE, errors


@pytest.mark.parametrize("size", [1, 2, 3])
def test_collectives_with_uneven_rows_on_simulated_ranks(size):
    run_simulated(size, cases.check_collectives)


@pytest.mark.parametrize("size", [2, 3])
def test_split_batch_gradients_summed_equal_the_whole_batch_gradients(size):
    assert max(run_simulated(size, cases.data_parallel_error)) < 1e-12


@pytest.mark.parametrize("size", [2, 3])
def test_a_network_with_a_sharded_head_trains_as_the_single_process_one(size):
    for errors in run_simulated(size, cases.training_errors):
        assert max(errors.values()) < 1e-9, errors


def test_averaging_the_network_gradients_is_the_gradient_scale_trap():
    """The negative control: with the head's loss a global mean, averaging the network's
    gradients over ranks (the usual data-parallel habit) trains a different network."""
    for errors in run_simulated(2, lambda comm: cases.training_errors(comm, average=True)):
        assert errors["net.0.weight"] > 1e-3, errors
        assert errors["head.classifier.weight"] > 1e-6, errors  # the network's change reaches the head


@pytest.mark.parametrize("size", [1, 2, 3])
@pytest.mark.parametrize("rate", [0.6, 0.1], ids=["random-classes-added", "positives-only"])
def test_class_sampling_equals_the_dense_head_restricted_to_the_sampled_classes(size, rate):
    for errors in run_simulated(size, lambda comm: cases.partial_fc_errors(comm, rate)):
        assert max(errors.values()) < cases.TOLERANCE, errors


def test_class_sampling_needs_a_rate_in_0_1_and_a_generator():
    with pytest.raises(ValueError, match=r"sample_rate must lie in \(0, 1\], got 0"):
        build_sharded_head("am-softmax", 4, 3, SingleProcess(), sample_rate=0)
    with pytest.raises(TypeError, match="needs sample_rng, a numpy.random.Generator"):
        build_sharded_head("am-softmax", 4, 3, SingleProcess(), sample_rate=0.5, sample_rng=1)


def test_only_margin_heads_are_sharded():
    with pytest.raises(TypeError, match="only the margin family .* got SoftmaxHead"):
        build_sharded_head("softmax", 4, 3, SingleProcess(), dtype=np.float64, rng=0)


def test_sharded_head_refuses_wrong_embeddings_and_labels():
    head = build_sharded_head("am-softmax", 4, 3, SingleProcess(), dtype=np.float64, rng=0)
    with pytest.raises(ValueError, match="embeddings have 5 features but the weight expects 4"):
        head.forward(np.ones((2, 5)), np.zeros(2, np.int64))
    with pytest.raises(TypeError, match="embeddings float32, weight float64"):
        head.forward(np.ones((2, 4), np.float32), np.zeros(2, np.int64))
    with pytest.raises(TypeError, match="labels must be integers, got dtype float64"):
        head.forward(np.ones((2, 4)), np.zeros(2))
    with pytest.raises(ValueError, match=r"one label per sample, shape \(2,\), got shape \(3,\)"):
        head.forward(np.ones((2, 4)), np.zeros(3, np.int64))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\] for 3 classes"):
        head.forward(np.ones((2, 4)), np.array([0, 3]))


def test_a_label_that_no_rank_owns_makes_its_loss_nan_not_a_wrong_number():
    """In a training step, where the range is not checked (it would read the labels back)."""
    def rank(comm):
        head = build_sharded_head("am-softmax", 4, 5, comm, dtype=np.float64, rng=0)
        labels = np.array([1, 5]) if comm.rank == 0 else np.array([4])
        with value_checks(False):
            return float(head.forward(np.ones((len(labels), 4)), labels))

    assert all(np.isnan(loss) for loss in run_simulated(2, rank))


def test_a_data_parallel_step_with_a_sharded_head_reads_nothing_back_from_the_device():
    """What the NCCL communicator runs on a GPU, on the CPU: the step on guarded arrays (which
    raise on any implicit device-to-host copy) through the simulated communicator, which has
    the NCCL communicator's interface and takes the same uneven-size paths."""
    x, labels = cases.images()

    def step(comm):
        net = cases.network()
        head = build_sharded_head("am-softmax", cases.EMBEDDING, cases.CLASSES, comm, dtype=np.float64, rng=3)
        model = TrainingModel(net, head)
        guard_parameters(model)
        mine = cases.local_rows(comm)
        local_x, local_labels = guard(x[mine]), guard(labels[mine])
        optimizer = SGD(model)
        with transfers() as count, value_checks(False):  # as the trainer: labels checked when they entered
            for _ in range(2):
                loss = head.forward(net.forward(local_x), local_labels)
                net.backward(head.backward())
                all_reduce_gradients(comm, [owner.grads[key] for _, owner, key in net.named_parameters()])
                optimizer.step(0.1)
        return count.downloads, loss, model

    results = run_simulated(3, step)
    # the counter is shared by the threads: each rank's count is every rank's downloads
    assert [downloads for downloads, _, _ in results] == [0, 0, 0]
    for _, loss, model in results:
        assert isinstance(loss, GuardedArray)
        for _, owner, key in model.named_parameters():
            assert isinstance(owner.params[key], GuardedArray)


def test_all_reduce_gradients_refuses_mixed_dtypes():
    with pytest.raises(TypeError, match="share one dtype .* float32, float64"):
        all_reduce_gradients(SingleProcess(), [np.ones(2), np.ones(2, np.float32)])


# ---------------------------------------------------------------- real processes under MPI

def mpi_missing() -> str:
    if importlib.util.find_spec("mpi4py") is None:
        return 'mpi4py is not installed: pip install "amnp[dist]"'
    if shutil.which("mpiexec") is None:
        return "mpiexec is not on the PATH (MPICH comes with amnp[dist])"
    return ""


def mpiexec(ranks: int, *arguments: str) -> subprocess.CompletedProcess:
    reason = mpi_missing()
    if reason:
        pytest.skip(f"MPI test skipped: {reason}")
    env = checkout_env(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    return subprocess.run(["mpiexec", "-n", str(ranks), sys.executable, "-m", "mpi4py", *arguments],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_under_mpiexec_the_sharded_head_data_parallel_gradients_and_training_match_one_process(ranks):
    names = ("collectives", "mpi_errors", "sharded_head", "data_parallel", "training", "partial_fc")
    result = mpiexec(ranks, "tests/distributed_cases.py", *names)
    assert result.returncode == 0, result.stdout + result.stderr
    # the ranks' lines may interleave on the shared pipe
    reported = re.findall(r"rank (\d+) of (\d+): (\w+) ok", result.stdout)
    assert sorted(reported) == sorted((str(r), str(ranks), name) for r in range(ranks) for name in names)


def test_under_mpiexec_a_failing_check_fails_the_job():
    """The MPI runs above can fail: the averaged gradients' trap, asserted as if it were right."""
    result = mpiexec(2, "tests/distributed_cases.py", "trap_as_if_right")
    assert result.returncode != 0
    assert "AssertionError" in result.stdout + result.stderr


# ---------------------------------------------------------------- choosing the communicator

def test_one_process_and_simulated_ranks_move_any_arrays_so_they_are_kept_on_either_backend():
    one = SingleProcess()
    assert communicator_for("numpy", one) is one and communicator_for("cupy", one) is one
    assert run_simulated(2, lambda comm: communicator_for("cupy", comm) is comm) == [True, True]
    with pytest.raises(ValueError, match="unknown backend 'tpu'; expected one of numpy, cupy"):
        communicator_for("tpu", one)


def test_an_mpi_job_moves_numpy_arrays_through_mpi_and_cupy_arrays_through_nccl():
    """A real MPICommunicator (one process, no mpiexec): kept on numpy; on cupy the NCCL
    communicator is made over it, which here, without a GPU, says what is missing."""
    reason = mpi_missing()
    if reason:
        pytest.skip(f"MPI test skipped: {reason}")
    code = ("from amnp.distributed import communicator_for\n"
            "from amnp.distributed.mpi import MPICommunicator\n"
            "mpi = MPICommunicator()\n"
            "assert communicator_for('numpy', mpi) is mpi\n"
            "try:\n"
            "    print(type(communicator_for('cupy', mpi)).__name__)\n"
            "except RuntimeError as exc:\n"
            "    print(exc)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT,
                            env=checkout_env())
    assert result.returncode == 0, result.stderr
    from amnp.backend import cupy_available

    available, reason = cupy_available()
    assert result.stdout.strip() == ("NCCLCommunicator" if available else reason)


# ---------------------------------------------------------------- the GPU

@pytest.mark.gpu
def test_one_rank_nccl_communicator_on_the_gpu(cupy_module):
    from amnp.distributed.nccl import NCCLCommunicator

    cp = cupy_module
    for stream in (None, cp.cuda.Stream(non_blocking=True)):  # the current stream, and its own
        comm = NCCLCommunicator(SingleProcess(), stream=stream)
        assert (comm.rank, comm.size, comm.local_rank, comm.processes_on_node) == (0, 1, 0, 1)
        # the public collectives skip NCCL on one rank: call its primitives themselves
        x = cp.arange(6.0).reshape(3, 2)
        for op in ("sum", "max"):
            comm._all_reduce(x, op)
        comm._broadcast(x, 0)
        gathered, scattered = cp.empty_like(x), cp.empty_like(x)
        comm._all_gather(x, gathered)
        comm._reduce_scatter(x, scattered)
        labels = cp.arange(3)
        comm._all_reduce(labels, "sum")
        comm.barrier()
        for result in (x, gathered, scattered):
            np.testing.assert_array_equal(amnp.to_numpy(result), np.arange(6.0).reshape(3, 2))
        np.testing.assert_array_equal(amnp.to_numpy(labels), np.arange(3))
    with pytest.raises(TypeError, match="needs a CuPy array, got ndarray"):
        comm.all_reduce(np.ones(2))
    # the same data-parallel step as on the CPU, on the device, through the NCCL communicator
    with amnp.use_backend("cupy"):
        net = cases.network()
        head = build_sharded_head("arcface", cases.EMBEDDING, cases.CLASSES, comm, dtype=np.float64, rng=3)
        x_host, labels = cases.images()
        loss = head.forward(net.forward(cp.asarray(x_host)), cp.asarray(labels))
        d = head.backward()
    reference = build_head("arcface", cases.EMBEDDING, cases.CLASSES, dtype=np.float64, rng=3)
    cpu_net = cases.network()
    expected = reference.forward(cpu_net.forward(x_host), labels)
    assert cases.relative_error(amnp.to_numpy(loss), expected) < 1e-10
    assert cases.relative_error(amnp.to_numpy(d), reference.backward()) < 1e-10


def test_the_nccl_communicator_without_a_gpu_says_what_is_missing():
    from amnp.backend import cupy_available
    from amnp.distributed.nccl import NCCLCommunicator

    available, reason = cupy_available()
    if available:
        pytest.skip("CuPy and a GPU are here: the GPU test covers the NCCL communicator")
    with pytest.raises(RuntimeError) as error:
        NCCLCommunicator(SingleProcess())
    assert str(error.value) == reason
