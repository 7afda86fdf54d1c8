"""amnp against PyTorch on the CPU: the same network, weights, batch, head and optimizer.

    python benchmarks/compare_torch.py                                   # small, batch 128, 1000 classes
    python benchmarks/compare_torch.py --model sphereface20 --batch-size 16 --classes 10516

Each round starts one fresh process per side (amnp, then PyTorch, alternating), which
builds the network, warms up, and times ``--steps`` training steps (network forward and
backward, AM-Softmax head, SGD with momentum and weight decay) and ``--steps`` embedding
passes (network forward only, as evaluation runs it).  The medians over the rounds are
printed with their ratio.  Alternating processes spreads the noise of a shared machine
over both sides; the spread (min-max) is printed too, so judge the ratio with it.  The
CPU time per step (all threads) is printed as well: with ``--threads 1`` on a machine
shared with other work it is steadier than the wall time.

The PyTorch network is built from amnp's own layer list with amnp's initial weights,
and the AM-Softmax head and the SGD update are written inline with the same formulas.
PyTorch is not an amnp dependency: without it, only amnp is timed.  Both sides get the
same thread count (``--threads``, default: every core) through the usual environment
variables and ``torch.set_num_threads``.  The BLAS library NumPy uses is printed with
threadpoolctl where that is installed, else asked from OpenBLAS directly.  Check the
kernel: an ``OPENBLAS_CORETYPE`` in the environment overrides OpenBLAS's own choice.  On the
2-core development machine the environment sets ``OPENBLAS_CORETYPE=Haswell`` (AVX2) on a
CPU with AVX-512, where OpenBLAS would pick its SkylakeX kernel, with GEMMs about 1.8x as
fast, and where PyTorch uses AVX-512: run the script with and without it to see both.
"""
import argparse
import ctypes
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

STEP_SEED = 0
LEARNING_RATE, MOMENTUM, WEIGHT_DECAY, MARGIN, SCALE = 0.01, 0.9, 5e-4, 0.35, 30.0


def make_batch(shape, batch_size, classes):
    rng = np.random.default_rng(STEP_SEED)
    x = rng.standard_normal((batch_size,) + shape).astype(np.float32)
    return x, rng.integers(0, classes, batch_size)


def time_calls(function, steps):
    """(wall, CPU) seconds per call over ``steps`` calls, after one warm-up call.  The CPU
    time of all the process's threads is the steadier figure on a shared machine, at one
    thread: it does not count the time spent waiting for a core."""
    function()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        function()
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def amnp_training(model, batch_size, classes):
    """(step, embed) closures for amnp on the current backend, on a fixed random batch."""
    import amnp
    from amnp import models
    from amnp.heads import TrainingModel, build_head
    from amnp.optim import SGD

    net = models.build(model, rng=0)
    head = build_head("am-softmax", models.embedding_size(net), classes, m=MARGIN, s=SCALE, rng=1)
    optimizer = SGD(TrainingModel(net, head), MOMENTUM, WEIGHT_DECAY)
    x, y = make_batch(models.PRESETS[model][3], batch_size, classes)
    x, y = amnp.asarray(x), amnp.asarray(y)

    def step():
        head.forward(net.forward(x), y, check_values=False)  # as the trainer: no host reads
        net.backward(head.backward())
        optimizer.step(LEARNING_RATE)

    return step, lambda: net.forward(x)


def torch_training(model, batch_size, classes, device="cpu"):
    """(step, embed) closures for the same network, weights and update written in PyTorch."""
    import torch

    from amnp import layers as L
    from amnp import models
    from amnp.heads import build_head

    TF = torch.nn.functional
    net = models.build(model, rng=0)
    head = build_head("am-softmax", models.embedding_size(net), classes, m=MARGIN, s=SCALE, rng=1)
    params, decayed = {}, set()
    for name, owner, key in net.named_parameters():
        params[name] = torch.tensor(owner.params[key], device=device, requires_grad=True)
        if key not in owner.no_weight_decay:
            decayed.add(name)
    params["head"] = torch.tensor(head.classifier.params["weight"], device=device, requires_grad=True)
    decayed.add("head")
    velocity = {name: torch.zeros_like(p) for name, p in params.items()}

    def forward(layer, x, prefix=""):
        if isinstance(layer, L.Residual):
            out = x
            for name, child in layer.children():
                out = forward(child, out, f"{prefix}{name}.")
            return x + out
        if isinstance(layer, L.Sequential):
            for name, child in layer.children():
                x = forward(child, x, f"{prefix}{name}.")
            return x
        if isinstance(layer, L.Conv2d):
            return TF.conv2d(x, params[prefix + "weight"], params.get(prefix + "bias"),
                             layer.stride, layer.padding)
        if isinstance(layer, L.PReLU):
            return TF.prelu(x, params[prefix + "weight"])
        if isinstance(layer, L.Linear):
            return TF.linear(x, params[prefix + "weight"], params.get(prefix + "bias"))
        if isinstance(layer, L.Flatten):
            return torch.flatten(x, 1)
        raise NotImplementedError(f"compare_torch: no torch version of {type(layer).__name__}")

    x, y = make_batch(models.PRESETS[model][3], batch_size, classes)
    x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    onehot = TF.one_hot(y, classes).float()

    def step():
        embeddings = forward(net, x)
        cos = TF.normalize(embeddings, dim=1) @ TF.normalize(params["head"], dim=1).T
        loss = TF.cross_entropy(SCALE * (cos - MARGIN * onehot), y)
        for p in params.values():
            p.grad = None
        loss.backward()
        with torch.no_grad():
            for name, p in params.items():
                g = p.grad + WEIGHT_DECAY * p if name in decayed else p.grad
                velocity[name].mul_(MOMENTUM).add_(g)
                p.sub_(LEARNING_RATE * velocity[name])

    def embed():
        with torch.no_grad():
            forward(net, x)

    return step, embed


def timings(step, embed, steps):
    (step_wall, step_cpu), (embed_wall, embed_cpu) = time_calls(step, steps), time_calls(embed, steps)
    return {"step": step_wall, "step_cpu": step_cpu, "embed": embed_wall, "embed_cpu": embed_cpu}


def run_amnp(args):
    return timings(*amnp_training(args.model, args.batch_size, args.classes), args.steps)


def run_torch(args):
    import torch

    torch.set_num_threads(args.threads)
    return timings(*torch_training(args.model, args.batch_size, args.classes), args.steps)


def openblas_core():
    """The kernel OpenBLAS chose for this CPU and its threads, asked through ctypes from the
    OpenBLAS library NumPy loaded (the calls threadpoolctl makes), or None."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower()}
    except OSError:  # not Linux
        return None
    for path in sorted(paths):
        library = ctypes.CDLL(path)
        for prefix, suffix in (("scipy_", "64_"), ("", "64_"), ("", "")):
            corename = getattr(library, f"{prefix}openblas_get_corename{suffix}", None)
            threads = getattr(library, f"{prefix}openblas_get_num_threads{suffix}", None)
            if corename is not None and threads is not None:
                corename.restype = ctypes.c_char_p
                return f"{corename().decode()} kernel, {threads()} threads"
    return None


def blas_description():
    """The BLAS NumPy calls, its kernel and threads: from threadpoolctl when it is installed,
    else from NumPy's build configuration and OpenBLAS itself."""
    if importlib.util.find_spec("threadpoolctl") is not None:
        from threadpoolctl import threadpool_info

        blas = [f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')} kernel, "
                f"{i.get('num_threads')} threads)"
                for i in threadpool_info() if i.get("user_api") == "blas"]
        return "; ".join(blas) or "none found by threadpoolctl"
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        name = f"{blas.get('name')} {blas.get('version')}"
    except (TypeError, KeyError):  # NumPy < 1.26 has no mode="dicts"
        name = "unknown library"
    return f"{name} ({openblas_core() or 'kernel unknown: install threadpoolctl to see it'})"


def worker(args):
    result = run_amnp(args) if args.worker == "amnp" else run_torch(args)
    result["peak_rss_mib"] = peak_rss_mib()
    if args.worker == "amnp":
        result["blas"] = blas_description()
    else:
        import torch
        result["torch"] = (f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
                           f"{torch.backends.cpu.get_cpu_capability()} kernels")
    print(json.dumps(result))


def run_round(side, args):
    env = dict(os.environ)
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[variable] = str(args.threads)
    repository = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = repository + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, os.path.abspath(__file__), "--worker", side, "--model", args.model,
               "--batch-size", str(args.batch_size), "--classes", str(args.classes),
               "--steps", str(args.steps), "--threads", str(args.threads)]
    finished = subprocess.run(command, env=env, capture_output=True, text=True)
    if finished.returncode != 0:
        sys.exit(f"the {side} process failed:\n{finished.stderr}")
    return json.loads(finished.stdout.strip().splitlines()[-1])


def summary(results, key):
    values = [r[key] * 1000 for r in results]
    return statistics.median(values), min(values), max(values)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="small")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--worker", choices=["amnp", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    sides = ["amnp"]
    if importlib.util.find_spec("torch") is None:
        print("PyTorch is not installed: timing amnp alone.")
    else:
        sides.append("torch")
    results = {side: [] for side in sides}
    for round_index in range(args.rounds):
        for side in sides if round_index % 2 == 0 else reversed(sides):
            results[side].append(run_round(side, args))
        print(f"round {round_index + 1}/{args.rounds}: " + ", ".join(
            f"{side} {results[side][-1]['step'] * 1000:.0f} ms/step" for side in sides), flush=True)

    print(f"\n{args.model}, batch {args.batch_size}, {args.classes} classes, {args.threads} threads, "
          f"median of {args.rounds} rounds of {args.steps} steps")
    coretype = os.environ.get("OPENBLAS_CORETYPE")
    print(f"NumPy {np.__version__}, BLAS: {results['amnp'][0]['blas']}"
          + (f", OPENBLAS_CORETYPE={coretype}" if coretype else ""))
    if "torch" in results:
        print(results["torch"][0]["torch"])
    print(f"{'':<22}{'amnp':>24}" + (f"{'torch':>24}{'ratio':>8}" if "torch" in results else ""))
    for key, label in (("step", "training step (ms)"), ("embed", "embedding pass (ms)"),
                       ("step_cpu", "step, CPU time (ms)"), ("embed_cpu", "embedding, CPU time")):
        line = f"{label:<22}"
        medians = {}
        for side in sides:
            median, low, high = summary(results[side], key)
            medians[side] = median
            line += f"{median:>10.1f} ({low:.0f}-{high:.0f})".rjust(24)
        if "torch" in results:
            line += f"{medians['amnp'] / medians['torch']:>7.2f}x"
        print(line)
    line = f"{'peak RSS (MiB)':<22}"
    for side in sides:
        line += f"{max(r['peak_rss_mib'] for r in results[side]):>24.0f}"
    print(line)


if __name__ == "__main__":
    main()
