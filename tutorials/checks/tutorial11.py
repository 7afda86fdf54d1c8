"""Checks of tutorial 11: many processes by hand.  Each answer runs on simulated ranks (threads
of this process, amnp.distributed.run_simulated), through a communicator that counts what the
answer sends, so that an answer with the right numbers and the wrong traffic is told so."""
from __future__ import annotations

import threading

import numpy as np

from amnp.distributed import ShardedMarginHead, all_reduce_gradients, class_range, run_simulated

from .common import _as_float_array, _close, _fail, _ok, _rng, _worst, guarded

# amnp's own versions of this tutorial's exercises: an answer that calls one scores 0
IMPLEMENTATIONS = (all_reduce_gradients, ShardedMarginHead.forward, ShardedMarginHead.backward)

# how long a rank waits in a collective that another rank never joins
COLLECTIVE_TIMEOUT_S = 10.0
SAME_COLLECTIVES = "every rank must call the same collectives in the same order, or the others wait forever"


class _Counted:
    """A rank's communicator that records each collective the answer calls: (name, op, numbers
    this rank puts in).  Everything else is the simulated communicator's."""

    def __init__(self, comm):
        self.comm, self.calls = comm, []
        self.rank, self.size = comm.rank, comm.size

    def all_reduce(self, x, op="sum"):
        self.calls.append(("all_reduce", op, int(np.size(x))))
        return self.comm.all_reduce(x, op)

    def all_gather(self, x, sizes):
        self.calls.append(("all_gather", "", int(np.size(x))))
        return self.comm.all_gather(x, sizes)

    def reduce_scatter(self, x, sizes):
        self.calls.append(("reduce_scatter", "sum", int(np.size(x))))
        return self.comm.reduce_scatter(x, sizes)

    def __getattr__(self, name):
        return getattr(self.comm, name)


def _on_ranks(answer, exercise, inputs):
    """Run ``answer(comm, *inputs[rank])`` on len(inputs) simulated ranks; returns each rank's
    (result, recorded collectives)."""
    answer = guarded(answer, exercise, IMPLEMENTATIONS)

    def rank(comm):
        counted = _Counted(comm)
        return answer(counted, *inputs[comm.rank]), counted.calls

    try:
        return run_simulated(len(inputs), rank, timeout=COLLECTIVE_TIMEOUT_S)
    except threading.BrokenBarrierError:
        _fail(f"{exercise}: a rank waited {COLLECTIVE_TIMEOUT_S:g} s in a collective that another rank never joined", SAME_COLLECTIVES)


def _same_on_every_rank(results, exercise, hint):
    if not all(np.array_equal(results[0], r) for r in results[1:]):
        _fail(f"{exercise}: the ranks returned different results", hint)


# ------------------------------------------------------------------------- exercise 1
def _softmax_inputs(name, sizes, features=4, classes=3):
    rng = _rng(name)
    x = rng.standard_normal((sum(sizes), features))
    labels = rng.integers(0, classes, sum(sizes))
    weight = rng.standard_normal((features, classes))
    return x, labels, weight


def check_data_parallel_gradient(data_parallel_gradient, sum_of_losses_gradient):
    """data_parallel_gradient(comm, weight, x, labels) -> dL/dweight of the mean loss over the
    global batch (every rank's rows), the same on every rank."""
    exercise = "data_parallel_gradient"
    for sizes in ((5, 3), (4, 4, 4)):
        x, labels, weight = _softmax_inputs(f"dp {sizes}", sizes)
        bounds = np.cumsum((0,) + sizes)
        parts = [(x[a:b], labels[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        inputs = [(weight.copy(), px.copy(), pl.copy()) for px, pl in parts]
        ran = _on_ranks(data_parallel_gradient, exercise, inputs)
        results = [_as_float_array(result, "the gradient") for result, _ in ran]
        for got in results:
            if got.shape != weight.shape:
                _fail(f"{exercise}: the gradient has shape {got.shape}, expected {weight.shape} (the weight's)")
        _same_on_every_rank(results, exercise, "every rank must end with the same gradient: all-reduce the "
                            "local gradients, and divide by the global N, not the local batch size")
        got, n, p = results[0], sum(sizes), len(sizes)
        want = sum_of_losses_gradient(weight, x, labels) / n
        if _close(got, want, rtol=1e-9, atol=1e-12):
            continue
        sums = [sum_of_losses_gradient(weight, px, pl) for px, pl in parts]
        if _close(got, want / p, rtol=1e-9, atol=1e-12):
            _fail(f"{exercise}: {len(sizes)} ranks: your gradient is 1/{p} of the one-process gradient",
                  "each rank's share (its sum / the global N) is already part of the global mean: SUM the "
                  "shares; averaging divides by P once more and silently shrinks the learning rate")
        if _close(got, sum(s / m for s, m in zip(sums, sizes)), rtol=1e-9, atol=1e-12):
            _fail(f"{exercise}: {len(sizes)} ranks: your gradient is the sum of the local means, about {p} "
                  "times the one-process gradient",
                  "each rank divided by its own batch size and the results were summed: divide the summed "
                  "gradient by the global N (the sum of the local batch sizes)")
        if _close(got, sum(s / m for s, m in zip(sums, sizes)) / p, rtol=1e-9, atol=1e-12):
            _fail(f"{exercise}: local batches of {sizes} rows: your gradient is the average of the local means",
                  "that is right only for equal local batches; with uneven ones a row of the smaller batch "
                  "weighs more: sum the local sums and divide by the global N")
        _fail(f"{exercise}: {len(sizes)} ranks with {sizes} rows: relative error {_worst(got, want):.1e} "
              "against the one-process gradient",
              "each rank: the gradient of its sum of losses; then all-reduce (sum) it, and divide by the "
              "global N, itself all-reduced from the local counts")
    _ok(exercise, "the same as one process, on 2 uneven and 3 even ranks")


# ------------------------------------------------------------------------- exercise 2
def _logsumexp(z):
    top = z.max(axis=1)
    return top + np.log(np.exp(z - top[:, None]).sum(axis=1))


def check_global_logsumexp(global_logsumexp):
    """global_logsumexp(comm, local_logits) -> (N,): log sum_j exp(z_nj) over every rank's
    classes, the same on every rank; local_logits (N, this rank's classes)."""
    exercise = "global_logsumexp"
    for ranks, classes in ((2, 7), (3, 8)):
        rng = _rng(f"lse {ranks}")
        z = rng.uniform(-5.0, 5.0, (6, classes))
        z[:3] += 800.0       # exp overflows without subtracting the maximum ...
        z[3:] -= 800.0       # ... and underflows to 0 here
        z[0, -1] += 20.0     # the largest logit of a row on the last rank, of another on the first
        z[1, 0] += 20.0
        slices = [class_range(classes, ranks, r) for r in range(ranks)]
        inputs = [(np.ascontiguousarray(z[:, a:b]),) for a, b in slices]
        ran = _on_ranks(global_logsumexp, exercise, inputs)
        results = []
        for result, _ in ran:
            got = _as_float_array(result, "the log-sum-exp")
            if got.shape != (z.shape[0],):
                _fail(f"{exercise}: the result has shape {got.shape}, expected ({z.shape[0]},): one number per row")
            results.append(got)
        want, top = _logsumexp(z), z.max(axis=1)
        got, sent = results[0], sum(size for _, _, size in ran[0][1])
        ops = [op for name, op, _ in ran[0][1] if name == "all_reduce"]
        if all(_close(r, want, rtol=1e-12, atol=1e-9) for r in results):
            if sent > 2 * z.shape[0]:
                _fail(f"{exercise}: right, but each rank sent {sent} numbers for {z.shape[0]} rows",
                      "the point is not to gather the logits (N x C numbers): two all-reduces of N numbers "
                      "each, the row maxima (op='max') and the sums of exp")
            continue
        if _close(got, _logsumexp(inputs[0][0]), rtol=1e-12, atol=1e-9):
            _fail(f"{exercise}: your result is rank 0's classes only",
                  "a row's softmax runs over every class: combine the ranks with comm.all_reduce")
        if "max" not in ops:
            _fail(f"{exercise}: wrong or not finite for logits near +-800, and no all-reduce with op='max'",
                  "every rank must subtract the same maximum before exp, the row's maximum over all classes: "
                  "all-reduce the local maxima with op='max' (a sum of maxima is no maximum)")
        if _close(got, want - top, rtol=1e-12, atol=1e-9):
            _fail(f"{exercise}: your result is off by each row's maximum",
                  "add the maximum back: log sum e^z = M + log sum e^(z - M)")
        _same_on_every_rank(results, exercise, "every rank must end with the same M + log S")
        _fail(f"{exercise}: relative error {_worst(got, want):.1e} against the log-sum-exp of the full rows",
              "M = all-reduce(max) of the local row maxima; S = all-reduce(sum) of sum(exp(z - M)) over "
              "your classes; the result is M + log S")
    _ok(exercise, "agrees with the full rows' log-sum-exp on 2 and 3 ranks, 2N numbers sent")


# ------------------------------------------------------------------------- exercise 3
def check_embedding_gradient(embedding_gradient):
    """embedding_gradient(comm, dlogits, weight, sizes) -> (sizes[rank], D): dL/d(this rank's
    embeddings), where dlogits (N, this rank's classes) is dL/d(logits) on this rank's classes
    for the gathered batch (N = sum(sizes) rows, in rank order), weight (its classes, D) this
    rank's classifier slice, and logits = embeddings @ weight.T."""
    exercise = "embedding_gradient"
    for sizes, classes in (((4, 2), 5), ((3, 3, 3), 7)):
        ranks, n, features = len(sizes), sum(sizes), 3
        rng = _rng(f"embedding {sizes}")
        dlogits, weight = rng.standard_normal((n, classes)), rng.standard_normal((classes, features))
        slices = [class_range(classes, ranks, r) for r in range(ranks)]
        inputs = [(np.ascontiguousarray(dlogits[:, a:b]), weight[a:b].copy(), list(sizes)) for a, b in slices]
        ran = _on_ranks(embedding_gradient, exercise, inputs)
        want = dlogits @ weight
        bounds = np.cumsum((0,) + sizes)
        for rank, (result, calls) in enumerate(ran):
            got = _as_float_array(result, "the gradient")
            mine = slice(bounds[rank], bounds[rank + 1])
            if got.shape == want.shape:
                _fail(f"{exercise}: rank {rank} returned all {n} rows",
                      "a rank needs the gradient of its own embeddings only: reduce_scatter sums over the "
                      "ranks and hands each rank its rows")
            if got.shape != (sizes[rank], features):
                _fail(f"{exercise}: rank {rank}'s gradient has shape {got.shape}, expected {(sizes[rank], features)}")
            partial = inputs[rank][0] @ inputs[rank][1]
            if _close(got, partial[mine], rtol=1e-9, atol=1e-12):
                _fail(f"{exercise}: rank {rank} returned its own classes' share only",
                      "a row's gradient has a share from every rank's classes: sum them over the ranks")
            if _close(got, want[mine] / ranks, rtol=1e-9, atol=1e-12):
                _fail(f"{exercise}: your gradient is 1/{ranks} of the right one",
                      "the shares add up to the gradient: sum over the ranks, do not average")
            if not _close(got, want[mine], rtol=1e-9, atol=1e-12):
                _fail(f"{exercise}: rank {rank}: relative error {_worst(got, want[mine]):.1e}",
                      "the partial gradient is dlogits @ weight (N x D); reduce_scatter it with sizes")
            sent = {name for name, _, _ in calls}
            if sent & {"all_reduce", "all_gather"}:
                _fail(f"{exercise}: right numbers, but through {' and '.join(sorted(sent - {'reduce_scatter'}))}",
                      "an all-reduce hands every rank all N rows, twice a reduce-scatter's traffic, only for "
                      "the rank to drop most of them: use comm.reduce_scatter(partial, sizes)")
    _ok(exercise, "every rank's rows of the dense gradient, by one reduce-scatter, on 2 and 3 ranks")
