"""amnp against PyTorch on the CPU: the same network, weights, batch, head and optimizer.

    python benchmarks/compare_torch.py                                   # small, batch 128, 1000 classes
    python benchmarks/compare_torch.py --model sphereface20 --batch-size 16 --classes 10516
    python benchmarks/compare_torch.py --breakdown        # where the time goes, op by op
    python benchmarks/compare_torch.py --embedding        # inference: images/s and memory

Each round starts one fresh process per side (amnp, then PyTorch, alternating), which
builds the network, warms up, and times ``--steps`` training steps (network forward and
backward, AM-Softmax head, SGD with momentum and weight decay) and ``--steps`` embedding
passes (network forward only, as evaluation runs it).  The medians over the rounds are
printed with their ratio.  Alternating processes spreads the noise of a shared machine
over both sides; the spread (min-max) is printed too, so judge the ratio with it.  With
``--threads`` above 1 a third side, "amnp, split batch", runs amnp's step and embedding pass
with the batch split over the threads, each with one BLAS thread, as ``amnp train --threads``
does (amnp.parallel).  The CPU time per step (all threads) is printed as well: with
``--threads 1`` on a machine shared with other work it is steadier than the wall time.

The PyTorch network is built from amnp's own layer list with amnp's initial weights,
and the AM-Softmax head and the SGD update are written inline with the same formulas.
With ``--breakdown`` the time of one training step is split op by op instead: every
layer's forward and backward, each residual sum, the head and the update.  amnp's ops are
timed inside whole steps (wrapping each layer's forward and backward), so they run with the
caches and memory of a real step and add up to nearly all of it (the last line compares
the sum with the whole step timed as one); PyTorch's backward ops are run by
autograd, so each PyTorch op is timed alone, on the input it gets in the network (forward
recording autograd, backward as ``torch.autograd.grad`` of that op), after two whole steps.
Each figure is the median over ``--steps`` steps or calls; layers of the same kind and
shape are merged into one row.  An op timed alone runs with its data in cache, so the
PyTorch column is, if anything, a little fast.

With ``--embedding`` only the embedding pass is timed, by three sides in alternating
processes: amnp in inference mode (as ``amnp embed``, ``eval``, ``verify`` and ``compare``
run it), amnp's forward as a training step runs it (every layer keeping its backward
cache), and PyTorch's forward under ``torch.no_grad()`` (what ``eval()`` mode adds does not apply:
the network has no dropout and no batch norm); each reports images per
second and how far the first ``--steps`` passes raised the process's peak resident memory
above its peak before them (the activations' memory: the network, the batch and the
libraries are there before).

PyTorch is not an amnp dependency: without it (or with ``--amnp-only``), only amnp is
timed.  Both sides get the same thread count (``--threads``, default: every core) through the usual environment
variables and ``torch.set_num_threads``.  The BLAS library NumPy uses is printed with
threadpoolctl where that is installed, else asked from OpenBLAS directly.  Check the
kernel: an ``OPENBLAS_CORETYPE`` in the environment overrides OpenBLAS's own choice.  On the
2-core development machine the environment once set ``OPENBLAS_CORETYPE=Haswell`` (AVX2) on a
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
WARM_UP_STEPS = 2  # whole steps before an op is timed: memory and caches in a training run's state
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


def amnp_model(model, classes):
    """(network, AM-Softmax head) on the current backend, the same weights every call."""
    from amnp import models
    from amnp.config import build_head

    net = models.build(model, rng=0)
    return net, build_head("am-softmax", models.embedding_size(net), classes, m=MARGIN, s=SCALE, rng=1)


def amnp_optimizer(net, head):
    """SGD with momentum and weight decay over the network's and the head's parameters."""
    from amnp.heads import TrainingModel
    from amnp.optim import SGD

    return SGD(TrainingModel(net, head), MOMENTUM, WEIGHT_DECAY)


def amnp_batch(model, batch_size, classes):
    """make_batch's images and labels for ``model``, on the current backend."""
    import amnp
    from amnp import models

    x, y = make_batch(models.PRESETS[model][3], batch_size, classes)
    return amnp.asarray(x), amnp.asarray(y)


def amnp_training(model, batch_size, classes, threads=1):
    """(step, embed) closures for amnp on the current backend, on a fixed random batch: the
    trainer's step and the embedding pass in inference mode, as amnp.inference runs it, each
    with the batch split over ``threads`` threads as ``--threads`` splits it (amnp.parallel)."""
    from amnp.heads import TrainingModel
    from amnp.layers import inference_mode
    from amnp.parallel import ThreadReplicas
    from amnp.validation import value_checks

    net, head = amnp_model(model, classes)
    optimizer = amnp_optimizer(net, head)
    replicas = ThreadReplicas(TrainingModel(net, head), threads)
    x, y = amnp_batch(model, batch_size, classes)

    def part(model, x_part, y_part):
        with value_checks(False):  # as the trainer: no host reads
            return model.forward_backward(x_part, y_part, 0, len(y_part) / len(y))

    def step():
        replicas.run(part, x, y)
        optimizer.step(LEARNING_RATE)

    def forward(_, x_part):
        with inference_mode():  # per thread
            return net.forward(x_part)

    def embed():
        replicas.split.map(forward, x)

    return step, embed


def torch_leaf(layer, x, params, prefix):
    """The PyTorch op computing amnp leaf ``layer`` on x, with its parameters from ``params``
    (torch tensors by amnp's dotted names, ``prefix`` naming the layer)."""
    import torch

    from amnp import layers as L

    TF = torch.nn.functional
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


class TorchModel:
    """amnp's network and head (same weights) as PyTorch tensors, with the forward pass,
    the AM-Softmax loss and the SGD update written inline with amnp's formulas."""

    def __init__(self, model, classes, device="cpu"):
        import torch

        self.net, head = amnp_model(model, classes)
        self.params, self.decayed = {}, set()
        for name, owner, key in self.net.named_parameters():
            self.params[name] = torch.tensor(owner.params[key], device=device, requires_grad=True)
            if key not in owner.no_weight_decay:
                self.decayed.add(name)
        self.params["head"] = torch.tensor(head.classifier.params["weight"], device=device,
                                           requires_grad=True)
        self.decayed.add("head")
        self.velocity = {name: torch.zeros_like(p) for name, p in self.params.items()}

    def forward(self, layer, x, prefix=""):
        from amnp import layers as L

        if isinstance(layer, L.Residual):
            out = x
            for name, child in layer.children():
                out = self.forward(child, out, f"{prefix}{name}.")
            return x + out
        if isinstance(layer, L.Sequential):
            for name, child in layer.children():
                x = self.forward(child, x, f"{prefix}{name}.")
            return x
        return torch_leaf(layer, x, self.params, prefix)

    def loss(self, embeddings, y, onehot):
        import torch

        TF = torch.nn.functional
        cos = TF.normalize(embeddings, dim=1) @ TF.normalize(self.params["head"], dim=1).T
        return TF.cross_entropy(SCALE * (cos - MARGIN * onehot), y)

    def update(self):
        import torch

        with torch.no_grad():
            for name, p in self.params.items():
                g = p.grad + WEIGHT_DECAY * p if name in self.decayed else p.grad
                self.velocity[name].mul_(MOMENTUM).add_(g)
                p.sub_(LEARNING_RATE * self.velocity[name])


def torch_training(model, batch_size, classes, device="cpu"):
    """(step, embed) closures for the same network, weights and update written in PyTorch."""
    import torch

    from amnp import models

    torch_model = TorchModel(model, classes, device)
    x, y = make_batch(models.PRESETS[model][3], batch_size, classes)
    x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    onehot = torch.nn.functional.one_hot(y, classes).float()

    def step():
        loss = torch_model.loss(torch_model.forward(torch_model.net, x), y, onehot)
        for p in torch_model.params.values():
            p.grad = None
        loss.backward()
        torch_model.update()

    def embed():
        with torch.no_grad():
            torch_model.forward(torch_model.net, x)

    return step, embed


def median_call(function, repeats):
    """Median wall seconds of one call over ``repeats`` calls, after one warm-up call."""
    function()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def describe(layer, shape):
    """A row label naming the op and the shape it runs on, the same on both sides."""
    from amnp import layers as L

    if isinstance(layer, L.Residual):
        return f"residual add {'x'.join(map(str, shape[1:]))}"
    if isinstance(layer, L.Conv2d):
        (kh, kw), stride = layer.kernel_size, layer.stride[0]
        return (f"conv {layer.in_channels}->{layer.out_channels} {kh}x{kw}/{stride} "
                f"on {shape[2]}x{shape[3]}")
    if isinstance(layer, L.PReLU):
        return f"PReLU {'x'.join(map(str, shape[1:]))}"
    if isinstance(layer, L.Linear):
        return f"linear {layer.in_features}->{layer.out_features}"
    return type(layer).__name__


def network_ops(net, x, apply):
    """[(label, layer, prefix, inputs)] for every op of the network's forward pass, in order:
    each leaf layer (inputs: (x,)) and each residual sum (the Residual, inputs: (x, F(x))).
    ``apply(layer, x, prefix)`` computes a leaf on this side's arrays."""
    from amnp import layers as L

    ops = []

    def walk(layer, x, prefix):
        if isinstance(layer, L.Sequential):
            out = x
            for name, child in layer.children():
                out = walk(child, out, f"{prefix}{name}.")
            if not isinstance(layer, L.Residual):
                return out
            ops.append((describe(layer, tuple(x.shape)), layer, prefix, (x, out)))
            return x + out
        ops.append((describe(layer, tuple(x.shape)), layer, prefix, (x,)))
        return apply(layer, x, prefix)

    return ops, walk(net, x, "")


def amnp_breakdown(model, batch_size, classes, repeats):
    """([(label, forward s, backward s)] per op of amnp's training step, whole step s), timed inside whole
    steps: the median over ``repeats`` steps (after WARM_UP_STEPS) of each layer's forward
    and backward, each residual sum (the residual block's time less its layers'), the head,
    and the SGD update (its time in the forward column)."""
    from amnp import layers as L
    from amnp.validation import value_checks

    net, head = amnp_model(model, classes)
    optimizer = amnp_optimizer(net, head)
    x, y = amnp_batch(model, batch_size, classes)
    ops, _ = network_ops(net, x, lambda layer, x, prefix: layer.forward(x))
    times = [([], []) for _ in ops]
    inner = [0.0]  # seconds spent in timed ops so far: a residual block's own time excludes them

    def timed(function, samples, own_time_only):
        def call(*args, **kwargs):
            before, start = inner[0], time.perf_counter()
            result = function(*args, **kwargs)
            elapsed = time.perf_counter() - start
            if own_time_only:
                elapsed -= inner[0] - before
            inner[0] += elapsed
            samples.append(elapsed)
            return result
        return call

    for (_, layer, _, _), (forward_times, backward_times) in zip(ops, times):
        residual = isinstance(layer, L.Residual)
        layer.forward = timed(layer.forward, forward_times, residual)
        layer.backward = timed(layer.backward, backward_times, residual)
    head_times, update_times = ([], []), []
    def head_forward_unchecked(embeddings):
        with value_checks(False):  # as the trainer: no host reads
            return head.forward(embeddings, y)

    head_forward = timed(head_forward_unchecked, head_times[0], False)
    head_backward = timed(head.backward, head_times[1], False)
    update = timed(lambda: optimizer.step(LEARNING_RATE), update_times, False)
    steps = []
    for step in range(WARM_UP_STEPS + repeats):
        if step == WARM_UP_STEPS:
            for samples in [*(t for pair in times for t in pair), *head_times, update_times]:
                samples.clear()
        start = time.perf_counter()
        head_forward(net.forward(x))
        net.backward(head_backward(), input_grad=False)
        update()
        steps.append(time.perf_counter() - start)
    rows = [(label, statistics.median(forward), statistics.median(backward))
            for (label, *_), (forward, backward) in zip(ops, times)]
    rows.append(("AM-Softmax head", statistics.median(head_times[0]), statistics.median(head_times[1])))
    rows.append(("SGD update", statistics.median(update_times), 0.0))
    return rows, statistics.median(steps[WARM_UP_STEPS:])


def torch_breakdown(model, batch_size, classes, repeats):
    """The same rows and the whole step for PyTorch, its ops each timed alone: forward with
    autograd recording, as in training, and backward as torch.autograd.grad of that op.
    The first layer's input needs no gradient, as in a training step."""
    import torch

    from amnp import layers as L
    from amnp import models

    torch_model = TorchModel(model, classes)
    params = torch_model.params
    x, y = make_batch(models.PRESETS[model][3], batch_size, classes)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    onehot = torch.nn.functional.one_hot(y, classes).float()
    for _ in range(WARM_UP_STEPS):
        torch_model.loss(torch_model.forward(torch_model.net, x), y, onehot).backward()
        torch_model.update()
    with torch.no_grad():
        ops, embeddings = network_ops(torch_model.net, x, lambda layer, x, prefix: torch_leaf(layer, x, params, prefix))
    generator = torch.Generator().manual_seed(1)
    rows = []
    for position, (label, layer, prefix, inputs) in enumerate(ops):
        inputs = [t.detach().requires_grad_(position > 0) for t in inputs]
        if isinstance(layer, L.Residual):
            forward = lambda: inputs[0] + inputs[1]
            dout, dbranch = (torch.randn(inputs[0].shape, generator=generator) for _ in "ab")
            backward = lambda: dout + dbranch  # the two paths' gradients summed
        else:
            forward = lambda: torch_leaf(layer, inputs[0], params, prefix)
            out = forward()
            dout = torch.randn(out.shape, generator=generator)
            wrt = [t for t in inputs if t.requires_grad] + [params[f"{prefix}{key}"] for key in layer.params]
            backward = lambda: torch.autograd.grad(out, wrt, dout, retain_graph=True)
        rows.append((label, median_call(forward, repeats), median_call(backward, repeats)))
    embeddings = embeddings.detach().requires_grad_(True)
    loss = torch_model.loss(embeddings, y, onehot)
    rows.append(("AM-Softmax head", median_call(lambda: torch_model.loss(embeddings, y, onehot), repeats),
                 median_call(lambda: torch.autograd.grad(loss, [embeddings, params["head"]],
                                                         retain_graph=True), repeats)))
    for p in params.values():
        p.grad = torch.zeros_like(p)
    rows.append(("SGD update", median_call(torch_model.update, repeats), 0.0))

    def step():
        loss = torch_model.loss(torch_model.forward(torch_model.net, x), y, onehot)
        for p in params.values():
            p.grad = None
        loss.backward()
        torch_model.update()

    return rows, median_call(step, repeats)


def amnp_embedding(model, batch_size, classes, recording):
    """The embedding pass alone: in inference mode, or (``recording``) as a training step's
    forward runs, every layer keeping its cache."""
    from amnp.layers import inference_mode

    net, _ = amnp_model(model, classes)
    x, _ = amnp_batch(model, batch_size, classes)
    if recording:
        return lambda: net.forward(x)

    def embed():
        with inference_mode():
            net.forward(x)

    return embed


def torch_embedding(model, batch_size, classes):
    import torch

    from amnp import models

    torch_model = TorchModel(model, classes)
    x = torch.from_numpy(make_batch(models.PRESETS[model][3], batch_size, classes)[0])

    def embed():
        with torch.no_grad():
            torch_model.forward(torch_model.net, x)

    return embed


def embedding_timings(embed, steps):
    """Seconds per pass and the rise of the peak RSS (MiB) over the passes."""
    before = peak_rss_mib()
    wall, cpu = time_calls(embed, steps)
    return {"embed": wall, "embed_cpu": cpu, "activations_mib": peak_rss_mib() - before}


def timings(step, embed, steps):
    (step_wall, step_cpu), (embed_wall, embed_cpu) = time_calls(step, steps), time_calls(embed, steps)
    return {"step": step_wall, "step_cpu": step_cpu, "embed": embed_wall, "embed_cpu": embed_cpu}


def run_amnp(args):
    threads = args.threads if args.worker == "amnp-split" else 1
    return timings(*amnp_training(args.model, args.batch_size, args.classes, threads), args.steps)


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
    if args.worker != "torch":
        from amnp.allocator import keep_freed_memory

        keep_freed_memory()  # as the amnp command runs
    if args.embedding:
        if args.worker == "torch":
            import torch

            torch.set_num_threads(args.threads)
            embed = torch_embedding(args.model, args.batch_size, args.classes)
        else:
            embed = amnp_embedding(args.model, args.batch_size, args.classes, args.worker == "amnp-recording")
        result = embedding_timings(embed, args.steps)
    elif args.breakdown:
        breakdown = amnp_breakdown if args.worker == "amnp" else torch_breakdown
        if args.worker == "torch":
            import torch

            torch.set_num_threads(args.threads)
        rows, step = breakdown(args.model, args.batch_size, args.classes, args.steps)
        result = {"rows": rows, "step": step}
    else:
        result = run_torch(args) if args.worker == "torch" else run_amnp(args)
    result["peak_rss_mib"] = peak_rss_mib()
    if args.worker != "torch":
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
    for flag in ("breakdown", "embedding"):
        if getattr(args, flag):
            command.append("--" + flag)
    finished = subprocess.run(command, env=env, capture_output=True, text=True)
    if finished.returncode != 0:
        sys.exit(f"the {side} process failed:\n{finished.stderr}")
    return json.loads(finished.stdout.strip().splitlines()[-1])


def summary(results, key):
    values = [r[key] * 1000 for r in results]
    return statistics.median(values), min(values), max(values)


def print_breakdown(results):
    """One row per distinct op (identical layers merged, their count in "calls"): the median
    over rounds of each side's median time per call, the ratios, and amnp's time per step."""
    sides = list(results)
    rows = {}  # label -> {side: [(forward, backward) per call of that op and round]}
    for side in sides:
        for result in results[side]:
            for label, forward, backward in result["rows"]:
                rows.setdefault(label, {s: [] for s in sides})[side].append((forward, backward))
    calls = {label: len(times[sides[0]]) // len(results[sides[0]]) for label, times in rows.items()}
    medians = {label: {side: [statistics.median(t[k] for t in times[side]) * 1000 for k in (0, 1)]
                       for side in sides} for label, times in rows.items()}
    step = sum(calls[label] * sum(m["amnp"]) for label, m in medians.items())
    with_torch = "torch" in results

    def pair(label, k):
        m = medians[label]
        text = f"{m['amnp'][k]:>9.2f}"
        if with_torch:
            ratio = f"{m['amnp'][k] / m['torch'][k]:.1f}x" if m["torch"][k] > 0 else "-"
            text += f"{m['torch'][k]:>9.2f}{ratio:>7}"
        return text

    side_heads = f"{'amnp':>9}" + (f"{'torch':>9}{'ratio':>7}" if with_torch else "")
    print(f"{'op':<32}{'calls':>5} |{'forward':^{len(side_heads)}}|{'backward':^{len(side_heads)}}| amnp ms/step")
    print(f"{'':<32}{'':>5} |{side_heads}|{side_heads}|")
    for label in rows:
        total = calls[label] * sum(medians[label]["amnp"])
        print(f"{label:<32}{calls[label]:>5} |{pair(label, 0)}|{pair(label, 1)}| "
              f"{total:>6.2f} {100 * total / step:>3.0f}%")
    line = f"{'sum (the SGD update under forward)':<37} |"
    for k in (0, 1):
        amnp_sum = sum(calls[label] * medians[label]["amnp"][k] for label in rows)
        line += f"{amnp_sum:>9.1f}"
        if with_torch:
            torch_sum = sum(calls[label] * medians[label]["torch"][k] for label in rows)
            line += f"{torch_sum:>9.1f}{amnp_sum / torch_sum:>6.1f}x"
        line += "|"
    print(line + f" {step:>6.1f}")
    measured = {side: statistics.median(r["step"] for r in results[side]) * 1000 for side in sides}
    line = f"{'whole step, timed as one':<37} |" + f"{measured['amnp']:>9.1f}"
    if with_torch:
        line += f"{measured['torch']:>9.1f}{measured['amnp'] / measured['torch']:>6.1f}x"
    print(line + f" (the ops above: {100 * step / measured['amnp']:.0f}% of amnp's)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="small")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--breakdown", action="store_true",
                        help="time each op of the network (each layer, residual sum, the head, "
                             "the update) alone instead of whole steps; --steps calls per op")
    parser.add_argument("--embedding", action="store_true",
                        help="time the embedding pass alone: amnp in inference mode, amnp keeping its "
                             "caches, PyTorch's eval() forward; images/s and the activations' memory")
    parser.add_argument("--amnp-only", action="store_true",
                        help="time amnp alone, as when PyTorch is not installed")
    parser.add_argument("--worker", choices=["amnp", "amnp-split", "amnp-recording", "torch"],
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    if args.embedding:
        sides = ["amnp", "amnp-recording"]
    else:  # the batch split over the threads (amnp.parallel) too, where there are several
        sides = ["amnp", "amnp-split"] if args.threads > 1 and not args.breakdown else ["amnp"]
    if importlib.util.find_spec("torch") is None:
        print("PyTorch is not installed: timing amnp alone.")
    elif not args.amnp_only:
        sides.append("torch")
    results = {side: [] for side in sides}
    for round_index in range(args.rounds):
        for side in sides if round_index % 2 == 0 else reversed(sides):
            results[side].append(run_round(side, args))
        if args.breakdown or args.embedding:
            print(f"round {round_index + 1}/{args.rounds} done", flush=True)
            continue
        print(f"round {round_index + 1}/{args.rounds}: " + ", ".join(
            f"{side} {results[side][-1]['step'] * 1000:.0f} ms/step" for side in sides), flush=True)

    what = ("median ms per call of each op alone" if args.breakdown
            else "embedding pass only, median" if args.embedding else "median")
    print(f"\n{args.model}, batch {args.batch_size}, {args.classes} classes, {args.threads} threads, "
          f"{what} of {args.rounds} rounds of {args.steps} "
          f"{'calls' if args.breakdown else 'passes' if args.embedding else 'steps'}")
    coretype = os.environ.get("OPENBLAS_CORETYPE")
    print(f"NumPy {np.__version__}, BLAS: {results['amnp'][0]['blas']}"
          + (f", OPENBLAS_CORETYPE={coretype}" if coretype else ""))
    if "torch" in results:
        print(results["torch"][0]["torch"])
    if args.breakdown:
        print_breakdown(results)
    elif args.embedding:
        print_embedding(results, args.batch_size)
    else:
        print_steps(results)


def print_embedding(results, batch_size):
    print(f"{'':<36}{'ms / pass':>22}{'images/s':>10}{'vs torch':>9}{'activations (MiB)':>19}")
    labels = {"amnp": "amnp, inference mode", "amnp-recording": "amnp, keeping caches (as training)",
              "torch": "PyTorch, no_grad"}
    torch_ms = summary(results["torch"], "embed")[0] if "torch" in results else None
    for side, side_results in results.items():
        median, low, high = summary(side_results, "embed")
        ratio = f"{median / torch_ms:.2f}x" if torch_ms else "-"
        memory = statistics.median(r["activations_mib"] for r in side_results)
        print(f"{labels[side]:<36}{f'{median:.1f} ({low:.1f}-{high:.1f})':>22}{batch_size / median * 1000:>10.0f}"
              f"{ratio:>9}{memory:>19.0f}")


def print_steps(results):
    labels = {"amnp": "amnp", "amnp-split": "amnp, split batch", "torch": "torch"}
    sides = list(results)
    ratios = [side for side in sides if side != "torch"] if "torch" in results else []
    print(f"{'':<22}" + "".join(f"{labels[side]:>24}" for side in sides)
          + "".join(f"{'ratio' + (' (split)' if side == 'amnp-split' else ''):>16}" for side in ratios))
    for key, label in (("step", "training step (ms)"), ("embed", "embedding pass (ms)"),
                       ("step_cpu", "step, CPU time (ms)"), ("embed_cpu", "embedding, CPU time")):
        line = f"{label:<22}"
        medians = {}
        for side in sides:
            median, low, high = summary(results[side], key)
            medians[side] = median
            line += f"{median:>10.1f} ({low:.0f}-{high:.0f})".rjust(24)
        line += "".join(f"{medians[side] / medians['torch']:>15.2f}x" for side in ratios)
        print(line)
    line = f"{'peak RSS (MiB)':<22}"
    for side in sides:
        line += f"{max(r['peak_rss_mib'] for r in results[side]):>24.0f}"
    print(line)


if __name__ == "__main__":
    main()
