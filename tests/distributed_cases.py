"""Checks of amnp.distributed that run on any communicator: in one process on simulated ranks
(tests/test_distributed.py) and as real processes under MPI:

    mpiexec -n 3 python -m mpi4py tests/distributed_cases.py sharded_head data_parallel training partial_fc

Every rank computes the single-process reference itself, from the same seeds, and compares
its own part of the distributed result with it; a mismatch raises AssertionError (under
``-m mpi4py`` that aborts the whole job with a non-zero exit).
"""
from __future__ import annotations

import os
import sys

import numpy as np

from amnp import functional as F
from amnp import models
from amnp.distributed import all_reduce_gradients, build_sharded_head, class_range
from amnp.config import build_head
from amnp.heads import TrainingModel
from amnp.optim import SGD

EMBEDDING, CLASSES = 5, 7          # 7 classes: shards of 7 / 4+3 / 3+2+2
ROWS_PER_RANK = {1: (12,), 2: (7, 5), 3: (4, 3, 5)}  # uneven local batches
TOLERANCE = 1e-10

# every member of the margin family, with the options that change how its scale works
HEADS = [
    ("normface", {}),
    ("normface", {"learn_scale": True, "s": 4.0}),
    ("am-softmax", {}),
    ("am-softmax", {"conditional_margin": True}),
    ("am-softmax", {"normalize_features": False}),  # scale = ‖f‖, margin ramp
    ("sphereface", {}),                              # scale = ‖f‖, λ schedule
    ("arcface", {}),
    ("combined", {}),
]
STEP = 3000  # past the warm-ups, so every ψ is far from the identity


def local_rows(comm) -> slice:
    sizes = ROWS_PER_RANK[comm.size]
    start = sum(sizes[:comm.rank])
    return slice(start, start + sizes[comm.rank])


def relative_error(actual, expected) -> float:
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-300))


def batch(seed=0):
    rng = np.random.default_rng(seed)
    n = sum(ROWS_PER_RANK[1])
    return rng.standard_normal((n, EMBEDDING)) * 2, rng.integers(0, CLASSES, n)


def sharded_head_errors(comm, loss, options) -> dict:
    """Relative errors of the sharded head against the single-process MarginHead on one batch."""
    embeddings, labels = batch()
    reference = build_head(loss, EMBEDDING, CLASSES, dtype=np.float64, rng=0, **options)
    reference.set_step(STEP)
    expected_loss = reference.forward(embeddings, labels)
    expected_d = reference.backward()

    head = build_sharded_head(loss, EMBEDDING, CLASSES, comm, dtype=np.float64, rng=0, **options)
    head.set_step(STEP)
    mine = local_rows(comm)
    start, stop = class_range(CLASSES, comm.size, comm.rank)
    errors = {
        "loss": relative_error(head.forward(embeddings[mine], labels[mine]), expected_loss),
        "embeddings": relative_error(head.backward(), expected_d[mine]),
        "weight": relative_error(head.classifier.grads["weight"],
                                 reference.classifier.grads["weight"][start:stop]),
    }
    if "scale" in reference.params:
        errors["scale"] = relative_error(head.grads["scale"], reference.grads["scale"])
    return errors


def check_sharded_head(comm):
    for loss, options in HEADS:
        errors = sharded_head_errors(comm, loss, options)
        assert max(errors.values()) < TOLERANCE, (loss, options, comm.size, errors)


def partial_fc_errors(comm, sample_rate=0.6, classes=20) -> dict:
    """Relative errors of the sharded head with class sampling against the single-process
    MarginHead restricted to the classes the ranks sampled (positives always among them).
    The labels are multiples of 3, so at rate 0.6 every rank fills up with random classes,
    and at rate 0.1 the positives alone outnumber the rate's share."""
    embeddings, _ = batch()
    labels = np.random.default_rng(4).integers(0, classes, len(embeddings)) // 3 * 3
    head = build_sharded_head("arcface", EMBEDDING, classes, comm, dtype=np.float64, rng=0,
                              sample_rate=sample_rate, sample_rng=np.random.default_rng(10 + comm.rank))
    mine = local_rows(comm)
    loss = head.forward(embeddings[mine], labels[mine])
    d = head.backward()
    sampled = head.sampled_classes
    kept = comm.all_gather(sampled, comm.all_gather_sizes(len(sampled)))  # ascending, by rank

    full = build_head("arcface", EMBEDDING, classes, dtype=np.float64, rng=0)
    reference = build_head("arcface", EMBEDDING, len(kept), dtype=np.float64, rng=0)
    reference.classifier.params["weight"] = full.classifier.params["weight"][kept]
    expected_loss = reference.forward(embeddings, np.searchsorted(kept, labels))
    expected_d = reference.backward()
    start, stop = class_range(classes, comm.size, comm.rank)
    weight_grad = head.classifier.grads["weight"]
    unsampled = np.setdiff1d(np.arange(start, stop), sampled) - start
    assert np.isin(labels, kept).all() and len(kept) < classes
    return {
        "loss": relative_error(loss, expected_loss),
        "embeddings": relative_error(d, expected_d[mine]),
        "weight": relative_error(weight_grad[sampled - start], reference.classifier.grads["weight"][
            np.searchsorted(kept, sampled)]),
        "unsampled weight": float(np.abs(weight_grad[unsampled]).max(initial=0.0)),
    }


def check_partial_fc(comm):
    for rate in (0.6, 0.1):
        errors = partial_fc_errors(comm, rate)
        assert max(errors.values()) < TOLERANCE, (comm.size, rate, errors)


def network():
    return models.sphereface(4, widths=(2, 2, 3, 3), in_channels=1, input_size=(8, 8),
                             embedding_size=EMBEDDING, dtype=np.float64, rng=0)


def images(seed=1):
    rng = np.random.default_rng(seed)
    n = sum(ROWS_PER_RANK[1])
    return rng.standard_normal((n, 1, 8, 8)), rng.integers(0, CLASSES, n)


def network_gradients(net, x, labels, n_global):
    """The gradients of the global batch's mean softmax cross-entropy (of the embeddings as
    logits) over the rows ``x``: the local mean's gradient times n_local / n_global."""
    embeddings = net.forward(x)
    _, cache = F.softmax_cross_entropy_forward(embeddings, labels % EMBEDDING)
    net.backward(F.softmax_cross_entropy_backward(len(x) / n_global, cache))
    return [owner.grads[key] for _, owner, key in net.named_parameters()]


def data_parallel_error(comm) -> float:
    """The largest relative error, over the parameters, of the split batch's all-reduced
    gradients against the whole batch's."""
    x, labels = images()
    expected = [g.copy() for g in network_gradients(network(), x, labels, len(x))]
    mine = local_rows(comm)
    gradients = network_gradients(network(), x[mine], labels[mine], len(x))
    all_reduce_gradients(comm, gradients)
    return max(relative_error(g, e) for g, e in zip(gradients, expected))


def check_data_parallel(comm):
    error = data_parallel_error(comm)
    assert error < 1e-12, (comm.size, error)


def train(comm=None, steps=4, average=False, loss="am-softmax", options=None):
    """A few SGD steps of the tiny network with a margin head: single-process when comm is None,
    else data parallel with a sharded head.  ``average=True`` is the gradient-scale trap (the
    network's gradients averaged over ranks instead of summed), for the negative control.
    Returns (the losses, {parameter name: value}); a sharded head's weight is this rank's rows."""
    options = options or {}
    x, labels = images(seed=2)
    net = network()
    if comm is None:
        head = build_head(loss, EMBEDDING, CLASSES, dtype=np.float64, rng=3, **options)
        mine = slice(None)
    else:
        head = build_sharded_head(loss, EMBEDDING, CLASSES, comm, dtype=np.float64, rng=3, **options)
        mine = local_rows(comm)
    model = TrainingModel(net, head)
    optimizer = SGD(model, momentum=0.9, weight_decay=5e-4)
    losses = []
    for step in range(steps):
        head.set_step(step)
        losses.append(float(head.forward(net.forward(x[mine]), labels[mine])))
        net.backward(head.backward())
        if comm is not None:
            gradients = [owner.grads[key] for _, owner, key in net.named_parameters()]
            all_reduce_gradients(comm, gradients)
            if average:
                for g in gradients:
                    g /= comm.size
        optimizer.step(0.1)
    return losses, model.state_dict()


def training_errors(comm, average=False) -> dict:
    """Relative errors of the data-parallel, sharded run against the single-process run."""
    expected_losses, expected = train(None)
    losses, state = train(comm, average=average)
    expected["head.classifier.weight"] = expected["head.classifier.weight"][
        slice(*class_range(CLASSES, comm.size, comm.rank))]
    errors = {name: relative_error(value, expected[name]) for name, value in state.items()}
    errors["losses"] = relative_error(losses, expected_losses)
    return errors


def check_training(comm):
    errors = training_errors(comm)
    assert max(errors.values()) < 1e-9, (comm.size, errors)
    if comm.size > 1:  # the negative control: averaging the network's gradients is wrong
        trapped = training_errors(comm, average=True)
        assert trapped["net.0.weight"] > 1e-3, (comm.size, trapped)


def check_trap_as_if_right(comm):
    """A check that must fail (for the test that a failing check fails the MPI job)."""
    errors = training_errors(comm, average=True)
    assert max(errors.values()) < 1e-9, (comm.size, errors)


def trainer_errors(comm, sharded_head: bool, steps: int = 6) -> dict:
    """amnp.training.Trainer in float64 on ``comm`` against the one-process Trainer: the
    relative error of every parameter (a sharded head's: this rank's rows), of the logged
    losses and, on rank 0, of the checkpoint, whose sharded head is gathered.  Also whether
    this rank's replicated parameters are bit-identical to rank 0's ("identical")."""
    import json
    import shutil
    import tempfile

    from amnp import checkpoint
    from amnp.training import Trainer
    from tests.test_training import config, tiny_dataset

    settings = config(iters=steps, batch_size=12, log_every=1)
    runs = {}
    for name, on in (("one", None), ("ranks", comm)):
        out = tempfile.mkdtemp(prefix="amnp-trainer-")
        try:
            trainer = Trainer(settings, tiny_dataset(num_classes=7, mirror=True), out, progress=False,
                              comm=on, sharded_head=sharded_head and on is not None, dtype=np.float64)
            trainer.start()
            assert trainer.train() == "finished"
            written = trainer.writer
            losses = ([json.loads(line)["loss"] for line in open(f"{out}/metrics.jsonl")] if written else None)
            saved = checkpoint.read(f"{out}/checkpoint.npz")[0] if written else None
            runs[name] = (trainer.model.state_dict(), losses, saved)
        finally:
            shutil.rmtree(out)
    (expected, expected_losses, expected_saved), (state, losses, saved) = runs["one"], runs["ranks"]
    if sharded_head:
        rows = slice(*class_range(7, comm.size, comm.rank))
        expected = dict(expected, **{"head.classifier.weight": expected["head.classifier.weight"][rows]})
    errors = {name: relative_error(value, expected[name]) for name, value in state.items()}
    if comm.rank == 0:
        errors["losses"] = relative_error(losses, expected_losses)
        assert saved.keys() == expected_saved.keys()
        errors["checkpoint"] = max(relative_error(saved[k], expected_saved[k]) for k in saved)
    replicated = [name for name in state if not (sharded_head and name.startswith("head."))]
    flat = np.concatenate([state[name].ravel() for name in replicated])
    errors["identical"] = float(not np.array_equal(comm.broadcast(flat.copy(), root=0), flat))
    return errors


def check_trainer(comm):
    for sharded_head in (False, True):
        errors = trainer_errors(comm, sharded_head)
        assert errors.pop("identical") == 0, (comm.size, sharded_head, "parameters differ between ranks")
        assert max(errors.values()) < 1e-12, (comm.size, sharded_head, errors)


def check_collectives(comm):
    """Each collective against its definition, with uneven row counts (one rank may have none)."""
    sizes = [(2 * r + 1) % 4 for r in range(comm.size)]  # 1, 3, 1 / 1, 3 / 1
    rng = np.random.default_rng(0)
    pieces = [rng.standard_normal((n, 2)) for n in sizes]
    full = [rng.standard_normal((sum(sizes), 2)) for _ in sizes]
    r, starts = comm.rank, np.cumsum([0] + sizes)
    np.testing.assert_allclose(comm.all_reduce(full[r].copy()), np.sum(full, axis=0), rtol=1e-14)
    np.testing.assert_array_equal(comm.all_reduce(full[r].copy(), "max"), np.max(full, axis=0))
    np.testing.assert_array_equal(comm.broadcast(full[r].copy(), root=comm.size - 1), full[-1])
    np.testing.assert_array_equal(comm.all_gather(pieces[r], sizes), np.concatenate(pieces))
    np.testing.assert_allclose(comm.reduce_scatter(full[r], sizes),
                               np.sum(full, axis=0)[starts[r]:starts[r + 1]], rtol=1e-14)
    assert comm.all_gather_sizes(sizes[r]) == sizes
    assert comm.broadcast_object(("id", r)) == ("id", 0)
    comm.barrier()


def check_mpi_refuses_device_arrays(comm):
    from tests.host_guard import guard

    try:
        comm.all_reduce(guard(np.ones(2)))
    except TypeError as exc:
        assert "sends host memory (NumPy arrays), got GuardedArray" in str(exc), exc
    else:
        raise AssertionError("MPICommunicator took a device array")


CASES = {"sharded_head": check_sharded_head, "data_parallel": check_data_parallel,
         "training": check_training, "partial_fc": check_partial_fc, "collectives": check_collectives,
         "mpi_errors": check_mpi_refuses_device_arrays, "trap_as_if_right": check_trap_as_if_right,
         "trainer": check_trainer}


def main(names):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests.*

    from amnp.distributed.mpi import MPICommunicator

    comm = MPICommunicator()
    for name in names:
        CASES[name](comm)
        print(f"rank {comm.rank} of {comm.size}: {name} ok", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
