"""One prepared check of the GPU path, for a machine with CUDA, CuPy and (optionally) PyTorch.

    python benchmarks/gpu_check.py                 # sphereface20, batch 256, 10,516 classes
    python benchmarks/gpu_check.py --steps 5       # shorter, when device time is scarce

1. runs the GPU parity tests (``pytest -m gpu``: every layer and loss on CuPy against NumPy);
2. runs a whole training step (network, AM-Softmax head, SGD) under CuPy's
   ``cupyx.allow_synchronize(False)``, which raises at any point where the host would wait
   for the device (a device-to-host copy does): the GPU twin of tests/test_host_transfers.py;
3. times the training step (network, AM-Softmax head, SGD) and the embedding pass on
   CuPy, and on PyTorch with cuDNN where torch with CUDA is installed;

and prints one table.  Timings synchronise the device before reading the clock.  Exits
non-zero when the parity tests fail.  The synchronisation check is a report, not a test:
CuPy documents false positives for it; the CPU-side proof is tests/test_host_transfers.py.
"""
import argparse
import os
import subprocess
import sys
import time

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPOSITORY, os.path.join(REPOSITORY, "benchmarks")]

import amnp  # noqa: E402
from compare_torch import amnp_training, torch_training  # noqa: E402


def timed(function, steps, synchronize):
    """Mean ms per call over ``steps`` calls after two warm-up calls
    (the first compiles CuPy kernels, the second lets the memory pool settle)."""
    function()
    function()
    synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        function()
    synchronize()
    return (time.perf_counter() - start) / steps * 1000


def parity_tests():
    finished = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "tests"],
                              cwd=REPOSITORY, capture_output=True, text=True,
                              env=dict(os.environ, PYTHONPATH=REPOSITORY))
    summary = (finished.stdout.strip().splitlines() or ["no output"])[-1]
    if finished.returncode != 0:
        print(finished.stdout[-4000:], finished.stderr[-2000:], sep="\n")
    return finished.returncode == 0, summary


def no_synchronisation(model, batch_size, classes):
    """A whole training step (network, AM-Softmax head, SGD.step) with host synchronisation
    forbidden, as the trainer runs it (value checks done once, not per step)."""
    import cupy
    import cupyx
    import numpy as np

    from amnp import models
    from amnp.config import build_head
    from amnp.heads import TrainingModel
    from amnp.optim import SGD
    from amnp.validation import value_checks

    net = models.build(model, rng=0)
    head = build_head("am-softmax", models.embedding_size(net), classes, rng=1)
    optimizer = SGD(TrainingModel(net, head), momentum=0.9, weight_decay=5e-4)
    rng = np.random.default_rng(0)
    x = amnp.asarray(rng.standard_normal((batch_size,) + models.PRESETS[model][3]).astype(np.float32))
    y = amnp.asarray(rng.integers(0, classes, batch_size))

    def step():
        with value_checks(False):  # the labels were drawn in range: no host reads
            head.forward(net.forward(x), y)
        net.backward(head.backward())
        optimizer.step(0.01)

    step()  # warm-up outside the guard: kernel compilation and the memory pool
    cupy.cuda.Device().synchronize()
    if not hasattr(cupyx, "allow_synchronize"):  # deprecated since CuPy 10, may be gone
        return "not checked", f"CuPy {cupy.__version__} has no cupyx.allow_synchronize"
    try:
        with cupyx.allow_synchronize(False):
            step()
    except cupyx.DeviceSynchronized as exc:
        return "CAUGHT", f"{exc} (CuPy warns of false positives: confirm with tests/test_host_transfers.py)"
    return "clean", "no synchronisation in a training step (network, head, SGD.step)"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="sphereface20")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--classes", type=int, default=10516)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()

    available, reason = amnp.backend.cupy_available()
    if not available:
        sys.exit(f"gpu_check: no GPU path to check here: {reason}")
    amnp.set_backend("cupy")
    import cupy

    rows = []
    tests_ok, summary = parity_tests()
    rows.append(("parity tests (pytest -m gpu)", "passed" if tests_ok else "FAILED", summary))
    rows.append(("no host sync in a step",) + no_synchronisation(args.model, args.batch_size, args.classes))

    step, embed = amnp_training(args.model, args.batch_size, args.classes)
    synchronize = cupy.cuda.Device().synchronize
    step_ms, embed_ms = timed(step, args.steps, synchronize), timed(embed, args.steps, synchronize)
    pool = cupy.get_default_memory_pool()
    rows.append(("amnp on CuPy", f"{step_ms:.1f} ms/step",
                 f"{args.batch_size / step_ms * 1000:.0f} images/s; embedding pass {embed_ms:.1f} ms; "
                 f"memory pool {pool.total_bytes() / 2**30:.2f} GiB held"))
    del step, embed
    pool.free_all_blocks()

    try:
        import torch
        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        torch.backends.cudnn.benchmark = True
        t_step, t_embed = torch_training(args.model, args.batch_size, args.classes, "cuda")
        t_step_ms = timed(t_step, args.steps, torch.cuda.synchronize)
        t_embed_ms = timed(t_embed, args.steps, torch.cuda.synchronize)
        rows.append((f"PyTorch {torch.__version__} + cuDNN", f"{t_step_ms:.1f} ms/step",
                     f"{args.batch_size / t_step_ms * 1000:.0f} images/s; embedding pass "
                     f"{t_embed_ms:.1f} ms; amnp/torch {step_ms / t_step_ms:.2f}x"))
    else:
        rows.append(("PyTorch + cuDNN", "skipped", "torch with CUDA is not installed"))

    device = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"].decode()
    print(f"\n{args.model}, batch {args.batch_size}, {args.classes} classes, {args.steps} timed steps "
          f"on {device}, CuPy {cupy.__version__}")
    for name, result, detail in rows:
        print(f"  {name:<30} {result:<16} {detail}")
    sys.exit(0 if tests_ok else 1)


if __name__ == "__main__":
    main()
