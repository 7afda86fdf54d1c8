"""Throughput of the hand-written kernels and of whole training steps.

    python benchmarks/speed.py                      # NumPy, the small preset at batch 128
    python benchmarks/speed.py --backend cupy --model sphereface20 --batch-size 64
    OPENBLAS_NUM_THREADS=1 python benchmarks/speed.py --clock cpu   # steadier on a busy machine

Prints, per layer type, the time spent in forward and backward over a few training
steps, and the images/s of a full step (network forward and backward, AM-Softmax
head, SGD update).  Timings on CuPy synchronise the device before reading the clock.
A step reads nothing back from the device, as in the trainer.  Runs from a checkout
without installing amnp (the checkout's amnp comes first).
"""
import argparse
import os
import sys
import time
from collections import defaultdict

import numpy as np

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPOSITORY)

import amnp  # noqa: E402
from amnp import models  # noqa: E402
from amnp.config import build_head  # noqa: E402
from amnp.heads import TrainingModel  # noqa: E402
from amnp.optim import SGD  # noqa: E402
from amnp.validation import value_checks  # noqa: E402


def synchronize():
    if amnp.get_backend() == "cupy":
        amnp.backend.xp().cuda.Device().synchronize()


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def timed_layers(net, totals, clock):
    """Wrap every leaf layer's forward/backward to accumulate wall time per layer type."""
    def wrap(layer):
        kind = type(layer).__name__
        forward, backward = layer.forward, layer.backward

        def timed_forward(x):
            synchronize()
            start = clock()
            out = forward(x)
            synchronize()
            totals[kind + " forward"] += clock() - start
            return out

        def timed_backward(dout, input_grad=True):
            synchronize()
            start = clock()
            dx = backward(dout, input_grad=input_grad)
            synchronize()
            totals[kind + " backward"] += clock() - start
            return dx

        layer.forward, layer.backward = timed_forward, timed_backward

    for layer in net.layers:
        for leaf in getattr(layer, "layers", [layer]):
            wrap(leaf)


def training_step(net, head, optimizer, x, y, lr=0.01):
    """One step as the trainer takes it.  The labels were drawn in range, so the loss skips
    its value checks: they read values back three times a step, and on a GPU every read
    waits for the device, so the timing would compare synchronisations, not steps."""
    with value_checks(False):
        head.forward(net.forward(x), y)
    net.backward(head.backward(), input_grad=False)
    optimizer.step(lr)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--model", default="small")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--classes", type=int, default=500)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall time, or the process's CPU time (all threads; excludes waiting "
                             "for a core on a shared machine, and CuPy kernels running on the GPU)")
    args = parser.parse_args()
    clock = CLOCKS[args.clock]

    amnp.set_backend(args.backend)
    xp = amnp.backend.xp()
    net = models.build(args.model, rng=0)
    shape = models.PRESETS[args.model][3]
    head = build_head("am-softmax", models.embedding_size(net), args.classes, rng=0)
    optimizer = SGD(TrainingModel(net, head))
    rng = np.random.default_rng(0)
    x = amnp.asarray(rng.standard_normal((args.batch_size,) + shape).astype(np.float32))
    y = amnp.asarray(rng.integers(0, args.classes, args.batch_size))

    def step():
        training_step(net, head, optimizer, x, y)

    step()  # warm-up: allocations, CuPy kernel compilation
    synchronize()
    start = clock()
    for _ in range(args.steps):
        step()
    synchronize()
    seconds = (clock() - start) / args.steps
    print(f"{args.model} on {args.backend}, batch {args.batch_size}, {args.clock} clock: "
          f"{seconds * 1000:.1f} ms/step, "
          f"{args.batch_size / seconds:.0f} images/s ({net.num_parameters():,} parameters)")

    totals = defaultdict(float)
    timed_layers(net, totals, clock)
    for _ in range(args.steps):
        step()
    for kind, total in sorted(totals.items(), key=lambda item: -item[1]):
        print(f"  {kind:<20} {total / args.steps * 1000:8.1f} ms/step")
    if args.backend == "cupy":
        print(f"  CuPy memory pool in use: {xp.get_default_memory_pool().used_bytes() / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
