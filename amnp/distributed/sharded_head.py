"""A margin head whose classes are split across ranks (model parallelism for the classifier).

With many identities the classifier's weight (C × D) outgrows one device long before the
network does.  Here each rank owns a contiguous slice of the classes, ``class_range(C, size,
rank)``, and the batch is the union of every rank's local batch:

forward, on every rank
    x̂, ‖x‖ = normalise the local embeddings                      (local rows)
    X̂, ‖X‖, Y = all-gather them and the labels                   (all N rows)
    cos = X̂ Ŵ_rᵀ                                                   (N × C_r, this rank's classes)
    t = cos with ψ(cos θ_y) in the target column where this rank owns y_n
    z = scale · t
    M = all-reduce MAX of each row's max z, with its max cos and its target cos,
        for the logged accuracy                                    (3N numbers)
    [S, z_y, owned] = all-reduce SUM of Σ_j exp(z − M), the target logit where owned, and
                      whether this rank owns the label                (3N numbers)
    loss = mean over the N rows of log S + M − z_y                 (the same on every rank)

backward
    dz = (softmax − onehot) / N on this rank's columns; dt = scale·dz, ψ' on the target column
    dŴ_r = dtᵀ X̂: the weight slice's gradient is local and exact (it sees all N rows), so
         momentum and weight decay act on the slice alone, and nothing about W is sent
    dX̂ = dt Ŵ_r is only this rank's classes' share of each row's gradient: the full gradient
         of row n is the sum over ranks, and only the rank that holds row n needs it, so a
         reduce-scatter (sum, then each rank keeps its rows) returns it: N × D numbers in, the
         local n × D out, half the traffic of an all-reduce.  For the feature-norm scale the
         per-row dL/d‖x‖ partial sums ride in the same buffer as one more column.

The loss is the mean over the global batch, so each rank's embedding gradient is already its
share of the global mean's gradient: the network's gradients must be *summed* over ranks, not
averaged (see :func:`amnp.distributed.all_reduce_gradients`).  The head's own gradients are
complete on every rank after backward: the weight slice's is local, a learned scale's is
all-reduced here; they must not be all-reduced again.

``sample_rate`` < 1 adds Partial FC's class sampling, an approximation (see ShardedMarginHead).

Labels are checked as everywhere (amnp.validation.class_labels); their range is a value check,
which reads them back, so a training step skips it (``value_checks(False)``): there a label
that no rank owns makes its row's loss NaN instead of a wrong finite number.
"""
from __future__ import annotations

import numpy as np

from .. import functional as F
from .. import init as param_init
from ..backend import get_array_module, to_numpy
from ..functional.normalize import DEFAULT_EPS
from ..config import build_head
from ..heads import MarginHead, MarginSchedule
from ..layers import Layer
from ..validation import class_labels, floating_array, same_dtype
from .communicator import Communicator


def class_range(num_classes: int, size: int, rank: int) -> tuple[int, int]:
    """The classes [start, stop) of ``rank``: contiguous slices, the first ``num_classes % size``
    ranks one class larger, so shards differ by at most one class."""
    if num_classes < size:
        raise ValueError(f"sharded head: {num_classes} classes cannot be split over {size} ranks; "
                         "every rank needs at least one class")
    base, extra = divmod(num_classes, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


class ClassShard(Layer):
    """This rank's slice of the cosine layer's weight: ``params["weight"]`` (stop − start, D),
    the classes [start, stop) of ``num_classes``."""

    def __init__(self, weight, start: int, stop: int, num_classes: int, eps: float = DEFAULT_EPS):
        super().__init__()
        self.add_parameter("weight", weight)
        self.start, self.stop, self.num_classes, self.eps = start, stop, num_classes, eps

    def forward(self, x_hat, rows=None):
        """x_hat: (N, D) normalised features -> (N, stop − start) cosines, or (N, len(rows))
        against the weight rows ``rows`` only (class sampling)."""
        weight = self.params["weight"]
        out, cache = F.cosine_forward(x_hat, weight if rows is None else weight[rows],
                                      normalize_features=False, eps=self.eps)
        return self._remember(out, (cache, rows))

    def backward(self, dout):
        """dL/dx̂ for the last forward; the weight's gradient is zero on rows it did not use."""
        cache, rows = self._last_cache()
        dx_hat, dw = F.cosine_backward(dout, cache)
        if rows is not None:
            weight = self.params["weight"]
            dw_rows, dw = dw, get_array_module(weight).zeros_like(weight)
            dw[rows] = dw_rows
        self.grads["weight"] = dw
        return dx_hat

    def extra_repr(self):
        return f"classes {self.start}:{self.stop} of {self.num_classes}"


class ShardedMarginHead(MarginSchedule, Layer):
    """A :class:`~amnp.heads.MarginHead` with its classes split across the ranks of ``comm``.

    Made by :func:`build_sharded_head`, with the margin, scale and learned scale of the loss's
    MarginHead and this rank's rows of its weight.
    The calls are the MarginHead's: ``loss = head.forward(local_embeddings, local_labels)``
    (a 0-d array, the mean over the global batch, the same on every rank),
    ``d_local_embeddings = head.backward()``, ``head.params`` / ``head.grads``
    (``classifier.weight``: this rank's slice; ``scale``: a learned s, the same on every rank),
    ``set_step`` and ``schedule``; after a forward, ``correct()`` and ``target_cosines()`` of
    every row of the global batch.  Every rank calls forward and backward together.

    ``sample_rate`` < 1 is Partial FC's class sampling, an **approximation**: each step, each
    rank keeps the classes of the batch's labels that it owns and fills up to
    ceil(rate · its classes) with classes drawn at random from ``sample_rng`` (a seeded
    generator per rank); the softmax runs over the kept classes only, and the other rows of the
    weight get a zero gradient (momentum and weight decay still move them).  Where the batch
    holds more of this rank's classes than that, all of them are kept.  Counting them reads
    one number back from the device per step.  ``sampled_classes`` holds the last forward's
    kept classes of this rank (global indices).
    """

    def __init__(self, margin, shard: ClassShard, comm: Communicator, s=None, scale=None,
                 name="margin_softmax", sample_rate=1.0, sample_rng=None):
        super().__init__()
        self.margin, self.classifier, self.comm, self.s, self.name = margin, shard, comm, s, name
        if scale is not None:
            self.add_parameter("scale", scale, weight_decay=False)
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sharded {name}: sample_rate must lie in (0, 1], got {sample_rate}")
        if sample_rate < 1 and not isinstance(sample_rng, np.random.Generator):
            raise TypeError(f"sharded {name}: class sampling (sample_rate < 1) needs sample_rng, a "
                            "numpy.random.Generator seeded differently on each rank")
        self.sample_rate, self.sample_rng = float(sample_rate), sample_rng
        self.sampled_classes = None

    def children(self):
        return [("classifier", self.classifier)]

    def forward(self, embeddings, labels):
        shard, comm = self.classifier, self.comm
        where = f"sharded {self.name}"
        floating_array(embeddings, 2, "(N, D)", where, "embeddings")
        same_dtype(where, embeddings=embeddings, weight=shard.params["weight"])
        if embeddings.shape[1] != shard.params["weight"].shape[1]:
            raise ValueError(f"{where}: embeddings have {embeddings.shape[1]} features but the "
                             f"weight expects {shard.params['weight'].shape[1]}")
        class_labels(labels, embeddings.shape[0], shard.num_classes, where)
        xp = get_array_module(embeddings, labels, shard.params["weight"])
        feature_norm_scale = self.s is None and "scale" not in self.params

        sizes = comm.all_gather_sizes(embeddings.shape[0])
        x_hat, x_norm_cache = F.l2_normalize_forward(embeddings, shard.eps)
        local = xp.concatenate([x_hat, x_norm_cache.norm], axis=1) if feature_norm_scale else x_hat
        gathered = comm.all_gather(xp.ascontiguousarray(local), sizes)
        all_labels = comm.all_gather(xp.ascontiguousarray(labels), sizes)
        all_x_hat = gathered[:, :x_hat.shape[1]]
        if feature_norm_scale:
            scale = xp.ascontiguousarray(gathered[:, -1:])
        else:
            scale = self._learned_scale() if "scale" in self.params else self.s

        owned = (all_labels >= shard.start) & (all_labels < shard.stop)
        # every row reads one column of this shard: its label's where owned, a stand-in
        # column elsewhere, whose ψ is computed and discarded (no data-dependent shapes,
        # which would read the mask back from the device)
        column = xp.clip(all_labels - shard.start, 0, shard.stop - shard.start - 1)
        sampled = None
        if self.sample_rate < 1:
            sampled = self._sample_classes(column, owned)
            position = xp.zeros(shard.stop - shard.start, dtype=column.dtype)
            position[sampled] = xp.arange(sampled.shape[0], dtype=column.dtype)
            column = position[column]
            self.sampled_classes = sampled + shard.start
        cos = shard.forward(xp.ascontiguousarray(all_x_hat), sampled)
        rows = xp.arange(cos.shape[0])
        target_cos = cos[rows, column]
        psi, slope = self.margin(target_cos)
        modified = cos.copy()
        modified[rows, column] = xp.where(owned, psi, target_cos)
        logits = scale * modified

        # the margin-free accuracy rides in the same all-reduce: each row's largest cosine
        # and its target cosine (from the rank that owns it) over all classes
        maxima = comm.all_reduce(xp.stack([logits.max(axis=1), cos.max(axis=1),
                                           xp.where(owned, target_cos, -xp.inf)]), "max")
        row_max, self._max_cos, self._target_cos = maxima[0], maxima[1], maxima[2]
        exp = xp.exp(logits - row_max[:, None])
        sums = comm.all_reduce(xp.stack([
            exp.sum(axis=1), xp.where(owned, logits[rows, column], 0), owned.astype(logits.dtype)], axis=1))
        exp_sum, target_logit, owners = sums[:, 0], sums[:, 1], sums[:, 2]
        # a label outside [0, C) has no owner: NaN, not a finite loss without its target
        unowned = xp.where(owners == 1, 0, xp.nan).astype(logits.dtype)
        loss = (xp.log(exp_sum) + row_max - target_logit + unowned).mean()
        return self._remember(loss, (sizes, x_hat, x_norm_cache, exp / exp_sum[:, None], modified, owned,
                                     column, slope, scale, feature_norm_scale))

    def correct(self):
        """Whether each row of the last forward's global batch is classified right without
        the margin: its target cosine is the largest over all classes (the sampled ones,
        with class sampling); the same on every rank.  A tie counts as right."""
        self._last_cache()
        return self._target_cos >= self._max_cos

    def target_cosines(self):
        """cos θ between each row of the last forward's global batch and its class's weight."""
        self._last_cache()
        return self._target_cos

    def _sample_classes(self, column, owned):
        """This rank's classes for one step (indices into its slice, ascending): every class of
        the batch's labels that it owns, then random others up to ceil(rate · its classes)."""
        xp = get_array_module(column)
        num_local = self.classifier.stop - self.classifier.start
        keep = max(1, int(np.ceil(self.sample_rate * num_local)))
        positive = xp.bincount(column, weights=owned.astype(np.float64), minlength=num_local) > 0
        if int(to_numpy(positive.sum())) >= keep:
            return xp.nonzero(positive)[0]
        priority = xp.where(positive, 2.0, xp.asarray(self.sample_rng.random(num_local)))
        return xp.sort(xp.argsort(-priority)[:keep])

    def backward(self, dout=1.0):
        """dLoss/d(local embeddings) for the last forward; fills the shard's and the learned
        scale's gradients (complete on every rank: not to be all-reduced again)."""
        (sizes, x_hat, x_norm_cache, probs, modified, owned, column, slope, scale,
         feature_norm_scale) = self._last_cache()
        xp = get_array_module(probs)
        rows = xp.arange(probs.shape[0])
        dlogits = probs.copy()
        dlogits[rows, column] -= owned
        dlogits *= dout / probs.shape[0]
        dcos = scale * dlogits
        dcos[rows, column] *= xp.where(owned, slope, 1)
        partial_dx_hat = self.classifier.backward(dcos)
        if feature_norm_scale:
            partial_dnorm = (dlogits * modified).sum(axis=1, keepdims=True)
            mine = self.comm.reduce_scatter(xp.concatenate([partial_dx_hat, partial_dnorm], axis=1), sizes)
            dx = F.l2_normalize_backward(mine[:, :-1], x_norm_cache) + mine[:, -1:] * x_hat
        else:
            dx = F.l2_normalize_backward(self.comm.reduce_scatter(partial_dx_hat, sizes), x_norm_cache)
        if "scale" in self.params:
            dscale = self.comm.all_reduce((dlogits * modified).sum().reshape(1))
            self.grads["scale"] = self._learned_scale_grad(dscale)
        return dx

    def extra_repr(self):
        return f"{self.name}, {self.classifier.extra_repr()}, rank {self.comm.rank} of {self.comm.size}"


def build_sharded_head(loss: str, embedding_size: int, num_classes: int, comm: Communicator, *,
                       dtype=np.float32, rng=None, sample_rate=1.0, sample_rng=None,
                       **options) -> ShardedMarginHead:
    """This rank's shard of ``amnp.config.build_head(loss, ...)``, options checked as there
    (``sample_rate``, ``sample_rng``: class sampling, see :class:`ShardedMarginHead`).

    The rank draws only its rows of the weight, exactly as the whole draw from ``rng`` gives
    them (amnp.init.weight with ``rows``: the C × D values are drawn in blocks and the other
    rows dropped), so with the same seed the sharded head starts where the single-process head
    does, whatever the number of ranks, and no rank holds more than a block and its rows.
    ``rng`` ends where the single-process head leaves it.
    """
    # the margin, the scale and the name come from the loss's head at one class (none of them
    # depends on the classes); its one-row weight, from a generator of its own, is dropped
    head = build_head(loss, embedding_size, 1, dtype=dtype, rng=0, **options)
    if not isinstance(head, MarginHead):
        raise TypeError(f"sharded head: only the margin family (a MarginHead) can be sharded, "
                        f"got {type(head).__name__}")
    start, stop = class_range(num_classes, comm.size, comm.rank)
    # the draw of the head's own classifier (amnp.layers.CosineLinear), restricted to the rows
    weight = param_init.weight((num_classes, embedding_size), embedding_size, head.classifier.weight_init,
                               head.classifier.params["weight"].dtype, param_init.make_rng(rng),
                               "sharded head", rows=(start, stop))
    shard = ClassShard(weight, start, stop, num_classes, head.classifier.eps)
    scale = head.params["scale"] if "scale" in head.params else None
    return ShardedMarginHead(head.margin, shard, comm, s=head.s, scale=scale, name=head.name,
                             sample_rate=sample_rate, sample_rng=sample_rng)
