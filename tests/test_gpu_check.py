"""benchmarks/gpu_check.py without a GPU: every piece of it that needs no device (arguments,
the precision report and probe, the NumPy side of the step check at a small size with the
10,516-class head, the timing loop, the rows), the whole script rehearsed on NumPy from a
checkout that is not installed, and its one-line exit where CuPy or a device is missing."""
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_arguments_default_to_sphereface20_at_batch_256_with_the_10516_class_head(gpu_check):
    args = gpu_check.parse_arguments([])
    assert (args.model, args.batch_size, args.classes, args.parity_batch) == ("sphereface20", 256, 10516, 16)
    assert args.time_limit < 300 and not args.numpy


@pytest.mark.parametrize("arguments, message", [
    (["--model", "resnet"], "--model must be one of sphereface4,"),
    (["--steps", "0"], "argument --steps: must be a positive integer, got 0"),
    (["--time-limit", "x"], "argument --time-limit: invalid positive value: 'x'"),
])
def test_bad_arguments_exit_with_status_2(gpu_check, arguments, message, capsys):
    with pytest.raises(SystemExit) as exited:
        gpu_check.parse_arguments(arguments)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_precision_settings_say_what_each_row_runs_in(gpu_check):
    lines = "\n".join(gpu_check.precision_settings({}, (9, 0)))
    assert "CUPY_TF32 here: unset (CuPy: 0)" in lines
    assert "TF32 tensor cores: yes (compute capability 9.0" in lines
    assert "torch.backends.cudnn.allow_tf32=True" in lines and "torch.backends.cuda.matmul.allow_tf32=False" in lines
    lines = "\n".join(gpu_check.precision_settings({"CUPY_TF32": "1", "NVIDIA_TF32_OVERRIDE": "0"}, (7, 5)))
    assert "CUPY_TF32 here: '1'" in lines
    assert "every CUDA library refuses TF32" in lines
    assert "no, the TF32 rows run FP32 (compute capability 7.5" in lines


def as_tf32(a):
    """float32 values rounded towards zero to TF32's 10 bits of mantissa (13 bits dropped)."""
    return (np.ascontiguousarray(a, np.float32).view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)


def test_the_probe_tells_fp32_products_from_tf32_ones(gpu_check):
    a, b = gpu_check.probe_operands()
    assert gpu_check.observed_precision(a @ b) == "FP32"
    assert gpu_check.observed_precision(as_tf32(a) @ as_tf32(b)) == "TF32"
    assert gpu_check.observed_precision(np.zeros((2, 2))).startswith("neither FP32 nor TF32")


def test_step_times_come_from_the_events_between_calls(gpu_check):
    calls = []

    def step():
        calls.append(None)
        time.sleep(0.002)

    times = gpu_check.step_times_ms(step, 3, gpu_check.HostEvent, gpu_check.host_elapsed_ms)
    assert len(calls) == 3 and len(times) == 3
    assert all(t >= 2.0 for t in times)


def test_the_step_check_on_numpy_with_the_10516_class_head(gpu_check):
    reference = gpu_check.step_results("numpy", "small", 2, 10516)
    assert reference["head.classifier.weight"].shape == (10516, 128)
    assert reference["embeddings"].shape == (2, 128) and reference["loss"].shape == ()
    assert any(name.startswith("net.") for name in reference)
    again = gpu_check.step_results("numpy", "small", 2, 10516)
    passed, detail = gpu_check.parity_summary(gpu_check.relative_errors(reference, again), 1e-3, 10516)
    assert passed and "10516-class head 0.0e+00" in detail
    wrong = dict(again, **{"net.2.weight": again["net.2.weight"] * 1.01})  # a 1% error in one layer
    passed, detail = gpu_check.parity_summary(gpu_check.relative_errors(reference, wrong), 1e-3, 10516)
    assert not passed and "network gradients up to 1.0e-02 (net.2.weight)" in detail


def test_rows_give_medians_throughput_memory_and_like_with_like_ratios(gpu_check):
    amnp = {"step_ms": [30.0, 10.0, 20.0], "embed_ms": [5.0], "images_per_step": 4, "precision": "TF32",
            "first_step_s": 12.5, "first_step": "compiles CuPy's kernels (the cache was empty)",
            "second_step_ms": 21.0, "memory": [3 * 2**20, 40 * 2**20]}
    rows = "\n".join(gpu_check.amnp_rows("amnp CuPy TF32", amnp))
    assert "20.0 ms/step" in rows and "200 images/s" in rows and "products in TF32" in rows
    assert "12.5 s" in rows and "compiles CuPy's kernels" in rows
    assert "3 MiB used" in rows and "40 MiB held" in rows
    torch = {"step_ms": [8.0, 8.0], "embed_ms": [2.0], "images_per_step": 4, "first_step_s": 3.0,
             "precision": {"conv": "TF32", "matmul": "TF32"}, "memory": 2**30}
    rows = "\n".join(gpu_check.torch_rows("PyTorch cuDNN TF32", torch, amnp))
    assert "8.0 ms/step" in rows and "amnp/torch 2.50x" in rows and "1024 MiB peak" in rows
    assert gpu_check.format_row("a", "b") == "  a" + " " * 34 + "b"


def decoy_cupy(tmp_path, body):
    """A PYTHONPATH holding a `cupy` package made of ``body``."""
    package = tmp_path / "site" / "cupy"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(body)
    return str(package.parent)


@pytest.mark.parametrize("body, reason", [
    ('raise ImportError("libcudart.so.12: cannot open shared object file")', "could not be imported"),
    ("class _Runtime:\n    @staticmethod\n    def getDeviceCount():\n"
     "        raise RuntimeError('cudaErrorNoDevice: no CUDA-capable device is detected')\n"
     "class cuda:\n    runtime = _Runtime\n", "no CUDA device is usable"),
])
def test_without_cupy_or_a_device_one_line_and_status_2(tmp_path, body, reason):
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": decoy_cupy(tmp_path, body)})
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    line, = done.stderr.splitlines()
    assert line.startswith("gpu_check: nothing to check here: ") and reason in line


def test_the_rehearsal_on_numpy_runs_every_piece_from_a_checkout(outside_the_checkout):
    cwd, env = outside_the_checkout
    done = subprocess.run([sys.executable, str(SCRIPT), "--numpy", "--model", "small", "--batch-size", "2",
                           "--classes", "10", "--steps", "1", "--parity-batch", "2"],
                          capture_output=True, text=True, timeout=300, cwd=cwd, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for row in ("amnp NumPy FP32", "amnp NumPy TF32", "amnp NumPy FP32, channels-last", "first step"):
        assert f"  {row} " in out
    assert out.count("step vs NumPy, batch 2           passed") == 2
    assert "parity tests (pytest -m gpu)       skipped" in out
    # the two PyTorch timings run where torch is installed (the CPU build stands in for CUDA's)
    with_torch = importlib.util.find_spec("torch") is not None
    assert out.strip().splitlines()[-1].startswith("5 passed, 1 skipped" if with_torch else "3 passed, 3 skipped")


def test_pieces_past_the_time_limit_are_skipped(outside_the_checkout):
    cwd, env = outside_the_checkout
    done = subprocess.run([sys.executable, str(SCRIPT), "--numpy", "--time-limit", "1"],
                          capture_output=True, text=True, timeout=120, cwd=cwd, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("--time-limit reached") == 6
    assert done.stdout.strip().splitlines()[-1].startswith("0 passed, 6 skipped")
