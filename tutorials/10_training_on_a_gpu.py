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
# # Tutorial 10: training without a framework on a GPU
#
# **Learning goals.** After this tutorial you can
# - run the same hand-written network on NumPy and on CuPy, and compare the two;
# - say what has to move between host and device in training (a minibatch in, nothing out) and why;
# - write a training step without a host round-trip, and log the loss without one per step;
# - time a GPU step honestly: warm up, synchronise before reading the clock, take the median.
#
# Without CuPy or a CUDA device this notebook runs on the CPU and skips the CuPy cells, saying so.

# %%
import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
QUICK = os.environ.get("AMNP_TUTORIAL_QUICK", "0") == "1"
OUT = os.environ.get("AMNP_TUTORIAL_OUT", "out")
os.makedirs(OUT, exist_ok=True)

import time

import numpy as np

import checks
from amnp import functional as F
from amnp import models
from amnp.backend import cupy_available, to_numpy, use_backend
from amnp.layers import CosineLinear
from amnp.validation import value_checks

GPU, why_not = cupy_available()
print("CuPy and a CUDA device: " + ("yes" if GPU else f"no, the CuPy parts are skipped ({why_not.split('.')[0]})"))

# %% [markdown]
# ## 1. How GPU work is timed
# A CuPy call **queues** a kernel on the device and returns at once; the host runs ahead. The
# work is done only when something waits for it: `float(x)`, `x.get()`, or an explicit
# `synchronize()`. So a clock read right after a step measures the launch, not the work; and work
# queued before the clock starts (a warm-up) is charged to the step that follows.
#
# **Inline question 1.** Why does `t0 = time.perf_counter(); step(); t1 = time.perf_counter()`
# underestimate a GPU step? (a) the first call compiles kernels (b) kernel launches return before
# the work is done (c) perf_counter has millisecond resolution
#
# Answer with the letter as a string, e.g. `'b'`.

# %%
### BEGIN SOLUTION
answer_sync = "b"
### END SOLUTION
checks.check_answer("10.sync", answer_sync)

# %% [markdown]
# ### Exercise 1: measure a step honestly
# `measure(step, synchronize, repeats)`: call `step()` once to warm up, then for each repeat
# synchronise, start the clock, run the step, synchronise, stop the clock. Return the median.
# (The check runs it on a simulated asynchronous device.)

# %%
def measure(step, synchronize, repeats=5):
    ### BEGIN SOLUTION
    step()
    times = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        step()
        synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times))
    ### END SOLUTION


checks.check_measure(measure)

# %% [markdown]
# ## 2. One network, two backends
# The layers take their array module from their inputs (`get_array_module`), so one source runs
# on both. The backend only decides where new arrays (parameters, batches) are created.

# %%
SIZE, BATCH, CLASSES = (16, 8, 10) if QUICK else (32, 32, 100)


def build(backend, seed=10):
    with use_backend(backend):
        rng = np.random.default_rng(seed)
        net = models.sphereface(4, widths=(8, 16, 32, 32), in_channels=1, input_size=(SIZE, SIZE),
                                embedding_size=16, rng=rng)
        classifier = CosineLinear(16, CLASSES, rng=rng)
    return net, classifier


def parameters(*layers):
    return [(owner, key) for layer in layers for _, owner, key in layer.named_parameters()]


def train_step(net, classifier, x, labels, lr=0.01):
    """One SGD step. Everything stays where x lives: no float(), no .get(), no print.
    Returns the loss as a 0-d array on the same device. The labels were drawn in range
    once, so the loss skips its value checks (value_checks(False)): they read values back
    (are the cosines finite? the smallest and largest label), three waits for the device
    in every step."""
    cos = classifier.forward(net.forward(x))
    with value_checks(False):
        loss, cache = F.am_softmax_forward(cos, labels, m=0.35, s=10.0)
    net.backward(classifier.backward(F.am_softmax_backward(1.0, cache)))
    for owner, key in parameters(net, classifier):
        owner.params[key] -= lr * owner.grads[key]
    return loss


rng = np.random.default_rng(0)
x_host = rng.standard_normal((BATCH, 1, SIZE, SIZE)).astype(np.float32)
y_host = rng.integers(0, CLASSES, BATCH)
net_cpu, cls_cpu = build("numpy")
out_cpu = cls_cpu.forward(net_cpu.forward(x_host))
print(f"NumPy: cosines {out_cpu.shape}, {type(out_cpu).__module__}")
if GPU:
    import cupy

    net_gpu, cls_gpu = build("cupy")
    out_gpu = cls_gpu.forward(net_gpu.forward(cupy.asarray(x_host)))
    print(f"CuPy:  cosines {out_gpu.shape}, {type(out_gpu).__module__}; "
          f"largest difference from NumPy {np.abs(to_numpy(out_gpu) - out_cpu).max():.1e} (float32)")
else:
    print("CuPy: skipped (no GPU)")

# %% [markdown]
# ## 3. What moves between host and device
# Per step: the minibatch goes **in** (host → device, or better, the whole dataset once). Nothing
# needs to come **out**. `float(loss)` in the step would copy 4 bytes, but it also makes the host
# wait for the whole step, so the next step's launches cannot overlap this step's work. Accumulate
# the loss on the device and read it every few hundred steps instead.
#
# **Predict first.** On a GPU, rank these three timings of the same step: with synchronisation,
# without it, and with `float(loss)` inside the step. (Without a GPU, only the NumPy line runs.)

# %%
def mean_loss_read_once(step_fn, xp, steps):
    """Run steps, reading the loss on the host every step (bad) or once at the end (good)."""
    total = xp.zeros(())
    for _ in range(steps):
        total += step_fn()
    return float(total) / steps   # the one host read


def synchronizer(xp):
    return cupy.cuda.Device().synchronize if xp is not np else (lambda: None)


repeats = 3 if QUICK else 10
cpu_step = lambda: train_step(net_cpu, cls_cpu, x_host, y_host)
t_cpu = measure(cpu_step, synchronizer(np), repeats)
print(f"NumPy step (batch {BATCH}, {SIZE}x{SIZE}): {t_cpu * 1e3:.1f} ms (median of {repeats})")
print(f"mean loss over 3 steps, read once: {mean_loss_read_once(cpu_step, np, 3):.4f}")
if GPU:
    x_dev, y_dev = cupy.asarray(x_host), cupy.asarray(y_host)   # moved once, outside the loop
    gpu_step = lambda: train_step(net_gpu, cls_gpu, x_dev, y_dev)
    t_gpu = measure(gpu_step, synchronizer(cupy), repeats)
    t_launch = measure(gpu_step, lambda: None, repeats)
    read_every_step = lambda: float(gpu_step())
    t_float = measure(read_every_step, synchronizer(cupy), repeats)
    print(f"CuPy step, synchronised: {t_gpu * 1e3:.2f} ms;  without synchronising: {t_launch * 1e3:.2f} ms "
          f"(the launch only);  with float(loss) in the step: {t_float * 1e3:.2f} ms")
    pool = cupy.get_default_memory_pool()
    print(f"device memory held by CuPy's pool: {pool.used_bytes() / 2**20:.1f} MiB used, "
          f"{pool.total_bytes() / 2**20:.1f} MiB reserved (nvidia-smi shows the reserved amount)")
else:
    print("CuPy step timing: skipped (no GPU)")

# %% [markdown]
# ## Summary
# - One source, two backends: functions take `xp` from their inputs; parameters and batches are created on the chosen backend.
# - In a training step nothing comes back to the host; read the loss every N steps from a device-side sum.
# - Time GPU work with a warm-up and `synchronize()` before both clock reads; report the median.
# - CuPy's memory pool keeps freed blocks: measure `used_bytes()`, not nvidia-smi.
#
# ## Open exercises
# 1. Move the whole training set to the device once and index minibatches there. What does it save per step?
# 2. Time `im2col` and the GEMM separately on the GPU with your `measure`. Which dominates at batch 256?
# 3. CuPy wraps out-of-bounds integer indices instead of raising: write a label check that catches a label ≥ C before `log_probs[rows, labels]`.
