"""One prepared check of the GPU path, sized for a short device loan: it ends within --time-limit
(default 270 s, so under five minutes on an H100 with the defaults).  It runs from a checkout,
without installing amnp, on a machine with CUDA and CuPy (PyTorch with CUDA optional).

    python benchmarks/gpu_check.py                  # SphereFace-20, batch 256, 10,516 classes
    python benchmarks/gpu_check.py --time-limit 150 # fewer pieces when device time is scarce
    python benchmarks/gpu_check.py --numpy --model small --batch-size 4 --classes 10
                                                    # a rehearsal on the CPU: every piece but the
                                                    # parity tests, on NumPy (timings are host ones)

It first prints the precision settings, then runs these pieces, each in its own process (one
that crashes leaves the others' results) and each row printed as soon as it is known:

1. amnp on CuPy in FP32 (CUPY_TF32=0), from an empty kernel cache: the first training step
   (network, AM-Softmax head, SGD), which compiles CuPy's kernels, is reported apart from the
   median step; the embedding pass; the memory pool's used bytes (live arrays after a step)
   and held bytes (its high-water mark: the pool keeps freed blocks); one SphereFace-20 step
   at batch --parity-batch with the --classes head, forward and backward, against the same
   step on NumPy; and the step run under ``cupyx.allow_synchronize(False)``, which raises
   where the host would wait for the device (CuPy warns of false positives: the CPU-side
   proof is tests/test_host_transfers.py).
2. the same in TF32 (CUPY_TF32=1), its kernels from the disk cache.  CuPy reads CUPY_TF32
   from the environment at its first float32 GEMM, once per process, hence a process per mode.
3. PyTorch with cuDNN (benchmarks/compare_torch.py: the same network, weights, batch, head and
   update) in FP32, then TF32.  PyTorch's cuDNN convolutions use TF32 by default and its
   matmuls do not; here both are off, then both on (torch.backends.cudnn.allow_tf32,
   torch.backends.cuda.matmul.allow_tf32), so that each ratio compares like with like.
4. the GPU parity tests (``pytest -m gpu``: every layer, loss and both convolutions on CuPy
   against NumPy).
5. amnp's FP32 step with the channels-last convolution, which Conv2d does not run on CuPy
   (amnp.layers.core.runs_channels_last): the measurement behind that choice.

Each row says which mode the float32 products were seen to run in: the sum of 1024 products
(1 + 2⁻¹²) · 1 is 1024.25 in FP32 and 1024 in TF32, which keeps 10 bits of mantissa.  Step
times come from CUDA events recorded between steps, with one synchronisation after the last,
as a training loop queues them; each figure is the median.  A piece that would start past the
time limit is skipped, and a running one is stopped there.

Exit status: 0 when every check passed; 1 when one failed (a step against NumPy beyond its
tolerance, the parity tests, a piece that crashed or was stopped); 2 when there is nothing to
check (no CuPy or no CUDA device, said in one line) or for bad arguments.
"""
import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPOSITORY, os.path.join(REPOSITORY, "benchmarks")]

import amnp  # noqa: E402
from compare_torch import amnp_batch, amnp_model, amnp_training, torch_training  # noqa: E402

# Norm-wise relative error ‖device − NumPy‖ / ‖NumPy‖ allowed for each array of the step.  FP32:
# rounding in another summation order; TF32 rounds each factor to 10 bits (about 5e-4), and
# twenty layers compound it.  A wrong kernel gives errors of order 1.
TOLERANCE = {"FP32": 1e-3, "TF32": 5e-2}
PROBE_SIZE = 1024  # products summed by the precision probe
MIB = 2**20


# ---------------------------------------------------------------- what needs no device

def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="sphereface20")
    parser.add_argument("--batch-size", type=positive, default=256, help="batch of the timed steps")
    parser.add_argument("--classes", type=positive, default=10516)
    parser.add_argument("--steps", type=positive, default=20, help="timed steps per piece")
    parser.add_argument("--parity-batch", type=positive, default=16,
                        help="batch of the step checked against NumPy")
    parser.add_argument("--time-limit", type=positive, default=270,
                        help="seconds for the whole check; later pieces are skipped past it")
    parser.add_argument("--numpy", action="store_true",
                        help="rehearse every piece but the parity tests on NumPy (and PyTorch on the CPU)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # one piece, as JSON, in a child process
    args = parser.parse_args(argv)
    from amnp import models

    if args.model not in models.PRESETS:
        parser.error(f"--model must be one of {', '.join(models.PRESETS)}, got {args.model!r}")
    return args


def positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def precision_settings(environment, capability):
    """Lines saying how float32 products may run: from the environment the pieces inherit
    and the device's compute capability ((major, minor), or None on the host)."""
    lines = []
    inherited = environment.get("CUPY_TF32")
    lines.append(f"CUPY_TF32 here: {'unset (CuPy: 0)' if inherited is None else repr(inherited)}; "
                 "the amnp pieces set it themselves, 0 for FP32 and 1 for TF32")
    override = environment.get("NVIDIA_TF32_OVERRIDE")
    if override == "0":
        lines.append("NVIDIA_TF32_OVERRIDE=0: every CUDA library refuses TF32, so the TF32 rows run FP32")
    elif override is not None:
        lines.append(f"NVIDIA_TF32_OVERRIDE={override!r} (only 0 changes anything: it disables TF32)")
    if capability is not None:
        major, minor = capability
        lines.append(f"TF32 tensor cores: {'yes' if major >= 8 else 'no, the TF32 rows run FP32'} "
                     f"(compute capability {major}.{minor}; TF32 needs 8.0)")
    lines.append("PyTorch by default: cuDNN convolutions in TF32 (torch.backends.cudnn.allow_tf32=True), "
                 "matmuls in FP32 (torch.backends.cuda.matmul.allow_tf32=False); "
                 "its FP32 row sets both False, its TF32 row both True")
    return lines


def probe_operands():
    """(a, b) whose product's every entry is Σ of PROBE_SIZE products (1 + 2⁻¹²) · 1."""
    return (np.full((256, PROBE_SIZE), 1 + 2**-12, np.float32), np.ones((PROBE_SIZE, 256), np.float32))


def observed_precision(product):
    """"FP32" or "TF32": the mode a float32 product (a host array computed from
    probe_operands) ran in; anything else is reported as it is."""
    product = np.asarray(product, dtype=np.float64)
    exact = PROBE_SIZE * (1 + 2**-12)
    if np.all(product == exact):
        return "FP32"
    if np.all(product == PROBE_SIZE):
        return "TF32"
    return f"neither FP32 nor TF32 (values from {product.min()} to {product.max()}, FP32 gives {exact})"


def step_times_ms(function, steps, new_event, elapsed_ms):
    """Milliseconds of each of ``steps`` calls, from events recorded between the calls and one
    wait for the last: the host queues the steps as a training loop does."""
    events = [new_event() for _ in range(steps + 1)]
    events[0].record()
    for event in events[1:]:
        function()
        event.record()
    events[-1].synchronize()
    return [elapsed_ms(start, end) for start, end in zip(events, events[1:])]


class HostEvent:
    """The CUDA event interface on the host clock, for the --numpy rehearsal."""

    def record(self):
        self.time = time.perf_counter()

    def synchronize(self):
        pass


def host_elapsed_ms(start, end):
    return (end.time - start.time) * 1000


def step_results(backend, model, batch_size, classes):
    """One training step's forward and backward (no update) on ``backend``, from compare_torch's
    weights and batch: {name: host array} with the embeddings, the loss, the gradient of the
    embeddings from the head, and every parameter's gradient ("net.3.weight", "head.classifier.weight")."""
    from amnp.heads import TrainingModel

    with amnp.use_backend(backend):
        net, head = amnp_model(model, classes)
        x, y = amnp_batch(model, batch_size, classes)
        embeddings = net.forward(x)
        loss = head.forward(embeddings, y)
        dembeddings = head.backward()
        net.backward(dembeddings)
    results = {"embeddings": embeddings, "loss": loss, "embedding gradient": dembeddings}
    for name, owner, key in TrainingModel(net, head).named_parameters():
        results[name] = owner.grads[key]
    return {name: np.asarray(amnp.to_numpy(value), dtype=np.float64) for name, value in results.items()}


def relative_errors(reference, candidate):
    """{name: ‖candidate − reference‖ / ‖reference‖} (the absolute norm where the reference is 0)."""
    errors = {}
    for name, expected in reference.items():
        scale = np.linalg.norm(expected) or 1.0
        errors[name] = float(np.linalg.norm(candidate[name] - expected) / scale)
    return errors


def parity_summary(errors, tolerance, classes):
    """(passed, detail) for a step against NumPy: the embeddings, the loss, the head (its weight
    gradient and the embeddings' gradient) and the worst network gradient, named."""
    network = {name: e for name, e in errors.items() if name.startswith("net.")}
    worst = max(network, key=network.get)
    head = max(errors["head.classifier.weight"], errors["embedding gradient"])
    detail = (f"relative error: embeddings {errors['embeddings']:.1e}, loss {errors['loss']:.1e}, "
              f"{classes}-class head {head:.1e}, network gradients up to {network[worst]:.1e} "
              f"({worst}); tolerance {tolerance:.0e}")
    return all(e <= tolerance for e in errors.values()), detail


def format_row(name, result, detail=""):
    return f"  {name:<34} {result:<18} {detail}".rstrip()


def amnp_rows(label, result, baseline=None):
    """Table rows for an amnp piece's result; ``baseline``: the FP32 piece's result, for the
    channels-last piece's ratio (on CuPy the FP32 piece runs the plain im2col)."""
    steps = result["step_ms"]
    median = statistics.median(steps)
    detail = (f"{result['images_per_step'] / median * 1000:.0f} images/s, steps {min(steps):.1f}-"
              f"{max(steps):.1f}; embedding pass {statistics.median(result['embed_ms']):.1f} ms; "
              f"products in {result['precision']}")
    if baseline is not None:
        detail += f"; {median / statistics.median(baseline['step_ms']):.2f}x the FP32 piece's step"
    rows = [format_row(label, f"{median:.1f} ms/step", detail),
            format_row("  first step", f"{result['first_step_s']:.1f} s",
                       f"{result['first_step']}, and allocates; the second step {result['second_step_ms']:.1f} ms")]
    if result["memory"] is not None:
        used, held = result["memory"]
        rows.append(format_row("  memory pool", f"{used / MIB:.0f} MiB used",
                               f"{held / MIB:.0f} MiB held (high-water mark) after the timed steps"))
    return rows


def torch_rows(label, result, amnp_result):
    steps = result["step_ms"]
    median = statistics.median(steps)
    detail = (f"{result['images_per_step'] / median * 1000:.0f} images/s; embedding pass "
              f"{statistics.median(result['embed_ms']):.1f} ms; convolutions in {result['precision']['conv']}, "
              f"matmuls in {result['precision']['matmul']}")
    if amnp_result is not None:
        detail += f"; amnp/torch {statistics.median(amnp_result['step_ms']) / median:.2f}x"
    rows = [format_row(label, f"{median:.1f} ms/step", detail),
            format_row("  first steps", f"{result['first_step_s']:.1f} s",
                       "the first step: CUDA start-up and cuDNN's algorithm search")]
    if result["memory"] is not None:
        rows.append(format_row("  memory", f"{result['memory'] / MIB:.0f} MiB peak", "torch.cuda.max_memory_allocated"))
    return rows


# ---------------------------------------------------------------- the pieces (child processes)

class CupyClock:
    """Events, waits and the memory pool of the current CUDA device."""

    def __init__(self):
        import cupy

        self.cupy = cupy
        self.new_event = cupy.cuda.Event
        self.elapsed_ms = cupy.cuda.get_elapsed_time

    def synchronize(self):
        self.cupy.cuda.Device().synchronize()

    def memory(self):
        pool = self.cupy.get_default_memory_pool()
        return pool.used_bytes(), pool.total_bytes()

    def product(self, a, b):
        return (self.cupy.asarray(a) @ self.cupy.asarray(b)).get()


class HostClock:
    new_event, elapsed_ms = HostEvent, staticmethod(host_elapsed_ms)

    def synchronize(self):
        pass

    def memory(self):
        return None

    def product(self, a, b):
        return a @ b


def first_calls(step, synchronize):
    """(seconds of the first call, ms of the second), each waited for."""
    durations = []
    for _ in range(2):
        start = time.perf_counter()
        step()
        synchronize()
        durations.append(time.perf_counter() - start)
    return durations[0], durations[1] * 1000


def amnp_piece(spec):
    """One amnp piece (see the module docstring), on CuPy or, with spec["numpy"], on NumPy."""
    backend = "numpy" if spec["numpy"] else "cupy"
    if spec["channels_last"]:  # what Conv2d would do on CuPy if NumPy's rule applied there
        from amnp.layers import core

        core.runs_channels_last = lambda xp, in_channels: in_channels >= core.CHANNELS_LAST_MIN_CHANNELS
    cache = os.environ.get("CUPY_CACHE_DIR")
    kernels = ("no kernels to compile on NumPy" if spec["numpy"]
               else "compiles CuPy's kernels (the cache was empty)" if cache and not os.listdir(cache)
               else "loads CuPy's kernels from the disk cache")
    clock = HostClock() if spec["numpy"] else CupyClock()
    result = {"precision": observed_precision(clock.product(*probe_operands())),
              "images_per_step": spec["batch_size"], "first_step": kernels}
    with amnp.use_backend(backend):
        step, embed = amnp_training(spec["model"], spec["batch_size"], spec["classes"])
        result["first_step_s"], result["second_step_ms"] = first_calls(step, clock.synchronize)
        result["step_ms"] = step_times_ms(step, spec["steps"], clock.new_event, clock.elapsed_ms)
        embed()
        result["embed_ms"] = step_times_ms(embed, spec["steps"], clock.new_event, clock.elapsed_ms)
        result["memory"] = clock.memory()
    if spec["check_step"]:
        del step, embed  # the batch-256 caches, before the parity step needs memory
        reference = step_results("numpy", spec["model"], spec["parity_batch"], spec["classes"])
        errors = relative_errors(reference, step_results(backend, spec["model"], spec["parity_batch"],
                                                         spec["classes"]))
        result["parity"] = parity_summary(errors, TOLERANCE.get(result["precision"], TOLERANCE["FP32"]),
                                          spec["classes"])
    if spec["check_synchronisation"]:
        result["synchronisation"] = no_synchronisation(spec)
    return result


def no_synchronisation(spec):
    """(status, detail): a whole training step (network, head, SGD.step) run with host
    synchronisation forbidden, as the trainer runs it."""
    import cupy
    import cupyx

    if not hasattr(cupyx, "allow_synchronize"):  # deprecated since CuPy 10, may be gone
        return "not checked", f"CuPy {cupy.__version__} has no cupyx.allow_synchronize"
    with amnp.use_backend("cupy"):
        step, _ = amnp_training(spec["model"], spec["parity_batch"], spec["classes"])
        step()  # outside the guard: kernel compilation and the memory pool
        cupy.cuda.Device().synchronize()
        try:
            with cupyx.allow_synchronize(False):
                step()
        except cupyx.DeviceSynchronized as exc:
            return "CAUGHT", f"{exc} (CuPy warns of false positives: see tests/test_host_transfers.py)"
    return "clean", "no synchronisation in a training step (network, head, SGD.step)"


def torch_piece(spec):
    """One PyTorch piece: the same step with cuDNN, both kinds of TF32 off or both on."""
    import torch

    device = "cpu" if spec["numpy"] else "cuda"
    if device == "cuda":
        if not torch.cuda.is_available():
            return {"skipped": f"torch {torch.__version__} has no CUDA device"}
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = spec["tf32"]
        new_event = lambda: torch.cuda.Event(enable_timing=True)  # noqa: E731
        elapsed_ms, synchronize = (lambda start, end: start.elapsed_time(end)), torch.cuda.synchronize
    else:
        new_event, elapsed_ms, synchronize = HostEvent, host_elapsed_ms, lambda: None
    a, b = (torch.from_numpy(operand).to(device) for operand in probe_operands())
    images = a.reshape(1, 256, PROBE_SIZE, 1).permute(0, 2, 1, 3).contiguous()  # (1, 1024, 256, 1)
    filters = b.T.reshape(256, PROBE_SIZE, 1, 1).contiguous()
    conv = torch.nn.functional.conv2d(images, filters)[0, :, :, 0]
    result = {"precision": {"matmul": observed_precision((a @ b).cpu().numpy()),
                            "conv": observed_precision(conv.cpu().numpy())},
              "images_per_step": spec["batch_size"]}
    step, embed = torch_training(spec["model"], spec["batch_size"], spec["classes"], device)
    result["first_step_s"], _ = first_calls(step, synchronize)
    result["step_ms"] = step_times_ms(step, spec["steps"], new_event, elapsed_ms)
    embed()
    result["embed_ms"] = step_times_ms(embed, spec["steps"], new_event, elapsed_ms)
    result["memory"] = torch.cuda.max_memory_allocated() if device == "cuda" else None
    return result


# ---------------------------------------------------------------- the parent

def run_child(command, environment, seconds):
    """(completed process, None) or (None, why it gave nothing) for a child run up to ``seconds``."""
    try:
        return subprocess.run(command, env=environment, capture_output=True, text=True,
                              timeout=seconds, cwd=REPOSITORY), None
    except subprocess.TimeoutExpired:
        return None, f"stopped after {seconds:.0f} s: --time-limit"


def run_piece(spec, environment, seconds):
    """(result, None) or (None, one line saying why not) for a piece run in a child process."""
    done, problem = run_child([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)],
                              environment, seconds)
    if problem:
        return None, problem
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}, no message"]
        return None, lines[-1]
    return json.loads(done.stdout.strip().splitlines()[-1]), None


def parity_tests(environment, seconds):
    """(passed, pytest's summary line) of ``pytest -m gpu``."""
    done, problem = run_child([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                               "tests"], environment, seconds)
    if problem:
        return False, problem
    summary = (done.stdout.strip().splitlines() or ["no output"])[-1]
    if done.returncode != 0:
        print(done.stdout[-3000:], done.stderr[-1000:], sep="\n", flush=True)
    return done.returncode == 0, summary


def pieces(args):
    """(label, spec) of every piece in the order they run (see the module docstring)."""
    common = {"model": args.model, "batch_size": args.batch_size, "classes": args.classes,
              "steps": args.steps, "parity_batch": args.parity_batch, "numpy": args.numpy}
    amnp_spec = dict(common, kind="amnp", channels_last=False, check_step=True, check_synchronisation=False)
    backend, torch_device = ("NumPy", "CPU") if args.numpy else ("CuPy", "cuDNN")
    return [
        (f"amnp {backend} FP32", dict(amnp_spec, tf32=False, check_synchronisation=not args.numpy)),
        (f"amnp {backend} TF32", dict(amnp_spec, tf32=True)),
        (f"PyTorch {torch_device} FP32", dict(common, kind="torch", tf32=False)),
        (f"PyTorch {torch_device} TF32", dict(common, kind="torch", tf32=True)),
        ("parity tests (pytest -m gpu)", dict(common, kind="pytest")),
        (f"amnp {backend} FP32, channels-last", dict(amnp_spec, tf32=False, channels_last=True, check_step=False)),
    ]


def device_description():
    """(one line naming the device and libraries, compute capability) for the current device."""
    import cupy

    properties = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    runtime = cupy.cuda.runtime.runtimeGetVersion()
    line = (f"{properties['name'].decode()}, CuPy {cupy.__version__}, CUDA runtime "
            f"{runtime // 1000}.{runtime % 1000 // 10}")
    return line, (properties["major"], properties["minor"])


def main(argv=None):
    args = parse_arguments(argv)
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(amnp_piece(spec) if spec["kind"] == "amnp" else torch_piece(spec)))
        return
    if args.numpy:
        device, capability = f"the CPU (a rehearsal on NumPy {np.__version__})", None
    else:
        available, reason = amnp.backend.cupy_available()
        if not available:
            print(f"gpu_check: nothing to check here: {reason}", file=sys.stderr)
            sys.exit(2)
        device, capability = device_description()
    deadline = time.monotonic() + args.time_limit
    print(f"{args.model}, batch {args.batch_size} ({args.steps} timed steps), {args.classes} classes, "
          f"on {device}")
    for line in precision_settings(os.environ, capability):
        print(f"  {line}")
    outcomes, results = {}, {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-kernels-") as kernel_cache:
        for label, spec in pieces(args):
            environment = dict(os.environ, CUPY_CACHE_DIR=kernel_cache, CUPY_TF32=str(int(spec.get("tf32", 0))),
                               PYTHONPATH=os.pathsep.join(filter(None, [REPOSITORY, os.environ.get("PYTHONPATH")])))
            outcome, rows = run(label, spec, environment, deadline - time.monotonic(), results)
            outcomes.setdefault(outcome, []).append(label)
            for row in rows:
                print(row, flush=True)
    print(f"\n{len(outcomes.get('passed', []))} passed, {len(outcomes.get('skipped', []))} skipped"
          + "".join(f"; FAILED: {label}" for label in outcomes.get("FAILED", []))
          + f" ({args.time_limit - (deadline - time.monotonic()):.0f} s)")
    sys.exit(1 if "FAILED" in outcomes else 0)


def run(label, spec, environment, seconds, results):
    """("passed" | "skipped" | "FAILED", rows to print) for one piece given ``seconds`` at most;
    a piece's result joins ``results``, by (kind, tf32, channels_last), for later ratios."""
    if seconds < 10:
        return "skipped", [format_row(label, "skipped", "--time-limit reached")]
    if spec["kind"] == "torch" and importlib.util.find_spec("torch") is None:
        return "skipped", [format_row(label, "skipped", "PyTorch is not installed")]
    if spec["kind"] == "pytest":
        if spec["numpy"]:
            return "skipped", [format_row(label, "skipped", "a rehearsal on NumPy has no GPU tests to run")]
        passed, summary = parity_tests(environment, seconds)
        return ("passed" if passed else "FAILED"), [format_row(label, "passed" if passed else "FAILED", summary)]
    result, problem = run_piece(spec, environment, seconds)
    if problem:
        return "FAILED", [format_row(label, "FAILED", problem)]
    if "skipped" in result:
        return "skipped", [format_row(label, "skipped", result["skipped"])]
    results[spec["kind"], spec["tf32"], spec.get("channels_last", False)] = result
    passed = result.get("parity", (True,))[0]
    return ("passed" if passed else "FAILED"), report(label, spec, result, results)


def report(label, spec, result, results):
    """The rows for one piece's result, with its ratio to the piece it compares with
    (``results``: the earlier pieces' results by (kind, tf32, channels_last))."""
    if spec["kind"] == "torch":
        return torch_rows(label, result, results.get(("amnp", spec["tf32"], False)))
    rows = amnp_rows(label, result, results.get(("amnp", False, False)) if spec["channels_last"] else None)
    if "parity" in result:
        passed, detail = result["parity"]
        rows.append(format_row(f"  step vs NumPy, batch {spec['parity_batch']}", "passed" if passed else "FAILED",
                               detail))
    if "synchronisation" in result:
        rows.append(format_row("  no host sync in a step", *result["synchronisation"]))
    return rows


if __name__ == "__main__":
    main()
