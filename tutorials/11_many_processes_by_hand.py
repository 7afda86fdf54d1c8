# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Tutorial 11: many processes by hand
#
# **Learning goals.** After this tutorial you can
# - explain why data parallelism **sums** the ranks' gradients of a global-mean loss, and what averaging does instead;
# - compute a softmax whose classes are split across ranks, sending two numbers per row instead of the logits;
# - write its backward for the embeddings, and say why it needs a reduce-scatter, not an all-reduce.
#
# It runs on one process, with two simulated ranks (threads that talk through
# `amnp.distributed.run_simulated`), so you need no MPI. With mpi4py and MPICH
# (`pip install "amnp[dist]"`) it also runs on real processes:
# `mpiexec -n 2 python -m mpi4py 11_many_processes_by_hand.py`.
# The library's version of all this is described in `docs/distributed.md`.

# %%
import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
QUICK = os.environ.get("AMNP_TUTORIAL_QUICK", "0") == "1"
OUT = os.environ.get("AMNP_TUTORIAL_OUT", "out")
os.makedirs(OUT, exist_ok=True)

import numpy as np

import checks
from amnp.distributed import class_range, run_simulated

# mpiexec tells its processes how many they are (MPICH: PMI_SIZE, Open MPI: OMPI_COMM_WORLD_SIZE);
# a plain run never imports mpi4py
PROCESSES = int(os.environ.get("PMI_SIZE", os.environ.get("OMPI_COMM_WORLD_SIZE", "1")))
if PROCESSES > 1:
    from amnp.distributed.mpi import MPICommunicator

    COMM = MPICommunicator()
    RANK = COMM.rank

    def on_every_rank(function):
        """Every rank's result of function(comm), in rank order, on every rank."""
        mine = function(COMM)
        return [COMM.broadcast_object(mine, root=rank) for rank in range(COMM.size)]
else:
    RANK = 0

    def on_every_rank(function):
        """Every rank's result of function(comm), in rank order: two simulated ranks."""
        return run_simulated(2, function)


def say(*args):
    """print on rank 0 only, so that P processes print one copy."""
    if RANK == 0:
        print(*args)


say(f"ranks: {PROCESSES if PROCESSES > 1 else 2} ({'processes under mpiexec' if PROCESSES > 1 else 'simulated'})")
rng = np.random.default_rng(11)     # the same seed on every rank: every rank draws the same data

# %% [markdown]
# ## 1. Data parallelism: why gradients are summed
# Each of $P$ ranks holds a copy of the network and its own rows of the global batch of $N$ rows,
# $n_r$ of them. The loss is the mean over the **global** batch,
# $L = \frac1N\sum_{n=1}^{N}\ell_n = \sum_r \frac1N\sum_{n\in r}\ell_n$, so its gradient is a sum
# over ranks of each rank's share $\frac1N\sum_{n\in r}\nabla\ell_n$. One all-reduce (sum) gives
# every rank the full gradient, and every copy of the network takes the same step.
#
# The classifier below is a linear layer with softmax cross-entropy; `sum_of_losses_gradient`
# is the gradient of the **sum** of the losses of the rows it is given.

# %%
def sum_of_losses_gradient(weight, x, labels):
    """d(sum_n loss_n)/d weight for logits x @ weight and softmax cross-entropy."""
    z = x @ weight
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(labels)), labels] -= 1
    return x.T @ p


# %% [markdown]
# **Predict first.** Two ranks with equal batches each compute the mean gradient of their own
# rows and all-reduce it with a sum. Is the result the one-process gradient, twice it or half of it?
# And if each divides by the global $N$ and the ranks then average?
#
# ### Exercise 1
# Write `data_parallel_gradient(comm, weight, x, labels)`: `x`, `labels` are this rank's rows;
# return the gradient of the global batch's mean loss, the same on every rank. Local batches may
# differ in size (the last batch of an epoch), so the global $N$ is itself all-reduced.
# `comm.all_reduce(array, op="sum")` replaces `array` in place by its sum over the ranks (and
# returns it); it needs an array, so put a count in a one-element array.

# %%
def data_parallel_gradient(comm, weight, x, labels):
    """-> dL/dweight of the mean loss over every rank's rows, (D, C)."""
    ### BEGIN SOLUTION
    grad = sum_of_losses_gradient(weight, x, labels)
    count = comm.all_reduce(np.array([float(len(labels))]))
    return comm.all_reduce(grad) / count[0]
    ### END SOLUTION


checks.check_data_parallel_gradient(data_parallel_gradient, sum_of_losses_gradient)

# %%
x_all, labels_all, weight = rng.standard_normal((8, 4)), rng.integers(0, 3, 8), rng.standard_normal((4, 3))


def data_parallel(comm):
    start, stop = class_range(len(labels_all), comm.size, comm.rank)   # contiguous blocks of rows
    return data_parallel_gradient(comm, weight, x_all[start:stop], labels_all[start:stop])


one_process = sum_of_losses_gradient(weight, x_all, labels_all) / len(labels_all)
gradients = on_every_rank(data_parallel)
say("data parallel gradient against one process: max abs difference "
    f"{max(np.abs(g - one_process).max() for g in gradients):.1e} on every rank")
say(f"averaged over the ranks instead: {np.abs(gradients[0] / len(gradients)).sum() / np.abs(one_process).sum():.2f} "
    "of the gradient's size")

# %% [markdown]
# Averaging is right only for a **local** mean over equal local batches; with a global-mean loss
# it divides by $P$ once more, which is a learning rate $P$ times smaller, and no error appears
# anywhere. `amnp.distributed.all_reduce_gradients` sums, in one buffer for all parameters.
#
# ## 2. A softmax whose classes are split across ranks
# With $C = 10^5$ identities the classifier's weight ($C \times D$) outgrows one device. Each
# rank keeps a contiguous slice of the classes, gathers the whole batch's embeddings (an
# all-gather), and computes the logits of its classes only: $z^{(r)}$, $N \times C_r$.
# The loss of row $n$ needs $\log\sum_j e^{z_{nj}}$ over **all** classes. Stable, as in tutorial 6:
# $M_n = \max_j z_{nj}$, then $M_n + \log\sum_j e^{z_{nj} - M_n}$. Both the max and the sum run
# over every rank's classes, and each is one all-reduce of $N$ numbers: first the max, because
# every rank must subtract the **same** $M_n$ before the sums can be added.
#
# ### Exercise 2
# Write `global_logsumexp(comm, local_logits)`: `local_logits` is $z^{(r)}$; return
# $\log\sum_j e^{z_{nj}}$ over all classes, shape $(N,)$, the same on every rank.
# `comm.all_reduce(array, op="max")` takes the element-wise maximum over the ranks.

# %%
def global_logsumexp(comm, local_logits):
    """local_logits: (N, this rank's classes) -> (N,) log-sum-exp over every rank's classes."""
    ### BEGIN SOLUTION
    top = comm.all_reduce(local_logits.max(axis=1), op="max")
    total = comm.all_reduce(np.exp(local_logits - top[:, None]).sum(axis=1))
    return top + np.log(total)
    ### END SOLUTION


checks.check_global_logsumexp(global_logsumexp)

# %% [markdown]
# **Inline question 1.** A global batch of $N = 256$ rows, $C = 10^5$ classes over $P = 8$
# ranks. How many numbers does each rank put into the forward's two all-reduces together (the
# log-sum-exp above; the target logit is one more sum, which a real head packs beside it)?
# Gathering the logits instead would move $N \times C = 2.56 \cdot 10^7$.
#
# Answer with a whole number.

# %%
### BEGIN SOLUTION
answer_softmax_numbers = 512
### END SOLUTION
checks.check_answer("11.softmax_numbers", answer_softmax_numbers)

# %% [markdown]
# ## 3. The backward for the embeddings: a reduce-scatter
# With $p = \mathrm{softmax}(z)$, $\partial L/\partial z = (p - \mathrm{onehot}(y))/N$: each rank
# computes it on its own columns, $p^{(r)} = e^{z^{(r)} - \mathrm{lse}}$, from exercise 2's result.
# Since $z^{(r)} = E\,W_r^\top$ (gathered embeddings $E$, $N \times D$), rank $r$ gets
# $\partial L/\partial z^{(r)}\,W_r$: only **its classes' share** of the gradient of every row.
# The gradient of row $n$ is the sum of the shares over the ranks, and only the rank that owns
# row $n$ needs it. That is a reduce-scatter: sum over ranks, each rank keeping its own rows.
# An all-reduce would give the same numbers with twice the traffic, to every rank, which then
# throws away all but its $n_r$ rows.
#
# ### Exercise 3
# Write `embedding_gradient(comm, dlogits, weight, sizes)`: `dlogits` is
# $\partial L/\partial z^{(r)}$ ($N \times C_r$), `weight` is $W_r$ ($C_r \times D$), and `sizes`
# lists each rank's number of rows; return $\partial L/\partial$(this rank's embeddings),
# `(sizes[comm.rank], D)`. `comm.reduce_scatter(array, sizes)` sums `array` ($N \times \dots$)
# over the ranks and returns this rank's rows.

# %%
def embedding_gradient(comm, dlogits, weight, sizes):
    """-> dL/d(this rank's embeddings), (sizes[comm.rank], D)."""
    ### BEGIN SOLUTION
    return comm.reduce_scatter(np.ascontiguousarray(dlogits @ weight), sizes)
    ### END SOLUTION


checks.check_embedding_gradient(embedding_gradient)

# %% [markdown]
# All three together: a softmax cross-entropy over classes split across the ranks, forward and
# backward, against the same loss on one process. (`amnp.distributed.ShardedMarginHead` is this
# with the margin, the normalisation and the scale.)

# %%
N, D, C = (6, 4, 9) if QUICK else (64, 16, 1000)
embeddings, classifier, targets = rng.standard_normal((N, D)), rng.standard_normal((C, D)), rng.integers(0, C, N)


def sharded_softmax(comm):
    """-> (the loss, dL/d this rank's embeddings): rows and classes both in contiguous blocks."""
    sizes = [stop - start for start, stop in (class_range(N, comm.size, r) for r in range(comm.size))]
    first, last = class_range(N, comm.size, comm.rank)
    low, high = class_range(C, comm.size, comm.rank)
    gathered = comm.all_gather(np.ascontiguousarray(embeddings[first:last]), sizes)
    logits = gathered @ classifier[low:high].T
    lse = global_logsumexp(comm, logits)
    rows, owned = np.arange(N), (targets >= low) & (targets < high)
    column = np.clip(targets - low, 0, high - low - 1)
    target_logit = comm.all_reduce(np.where(owned, logits[rows, column], 0.0))
    dlogits = np.exp(logits - lse[:, None])
    dlogits[rows[owned], column[owned]] -= 1
    dlogits /= N
    return float(np.mean(lse - target_logit)), embedding_gradient(comm, dlogits, classifier[low:high], sizes)


z = embeddings @ classifier.T
p = np.exp(z - z.max(axis=1, keepdims=True))
p /= p.sum(axis=1, keepdims=True)
dense_loss = float(np.mean(-np.log(p[np.arange(N), targets])))
p[np.arange(N), targets] -= 1
dense_gradient = p @ classifier / N

results = on_every_rank(sharded_softmax)
say(f"sharded loss against one process: {max(abs(loss - dense_loss) for loss, _ in results):.1e}")
say("sharded embedding gradient against one process: "
    f"{np.abs(np.concatenate([g for _, g in results]) - dense_gradient).max():.1e}")

# %% [markdown]
# ## Summary
# - A global-mean loss makes each rank's gradient its share of the global gradient: **sum** them.
#   Averaging divides by $P$ again, a silently smaller learning rate.
# - A softmax over classes split across ranks needs two all-reduces of $N$ numbers (the row
#   maxima, then the sums of $e^{z - M}$), not the $N \times C$ logits.
# - Its backward gives each rank its classes' share of every row's gradient; a reduce-scatter sums
#   the shares and hands each rank its own rows, half the traffic of an all-reduce.
#
# ## Open exercises
# 1. Each row's target logit lives on one rank. Send it in the MAX all-reduce beside the row maxima instead of in a SUM of its own: what must the other ranks put in its place? (`ShardedMarginHead` sends the target cosine that way.)
# 2. Rewrite `data_parallel_gradient` with a per-rank **local** mean. When does averaging give the right answer, and what goes wrong with an uneven last batch?
# 3. In a ring, an all-reduce sends $2(P-1)/P$ of the buffer per rank and a reduce-scatter $(P-1)/P$. For $N = 512$ embeddings of $D = 512$ float32 on $P = 8$ ranks, how many bytes does each rank send in the backward, each way?
