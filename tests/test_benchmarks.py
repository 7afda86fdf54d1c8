"""The benchmark scripts still run against the library (they are not timed here: speed is
measured by running them, never by tests)."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from amnp import models
from amnp.config import build_head
from amnp.heads import TrainingModel
from amnp.optim import SGD

from .checkout import checkout_env
from .host_guard import guard, guard_parameters, transfers
from .test_distributed import mpi_missing

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("script, arguments", [
    ("compare_torch.py", ["--model", "small", "--batch-size", "4", "--classes", "10", "--rounds", "1",
                          "--steps", "1", "--threads", "2"]),
    ("compare_torch.py", ["--model", "small", "--batch-size", "4", "--classes", "10", "--rounds", "1",
                          "--steps", "1", "--breakdown"]),
    ("compare_torch.py", ["--model", "small", "--batch-size", "4", "--classes", "10", "--rounds", "1",
                          "--steps", "1", "--breakdown", "--amnp-only"]),
    ("compare_torch.py", ["--model", "small", "--batch-size", "4", "--classes", "10", "--rounds", "1",
                          "--steps", "1", "--embedding"]),
])
def test_benchmark_runs_at_toy_size(script, arguments):
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *arguments],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    if "--embedding" in arguments:
        assert "amnp, inference mode" in done.stdout and "amnp, keeping caches" in done.stdout
        with_torch = importlib.util.find_spec("torch") is not None
        assert ("PyTorch, no_grad" in done.stdout) == with_torch
    else:
        assert "step" in done.stdout
    assert ("amnp, split batch" in done.stdout) == ("--threads" in arguments)  # the batch over the 2 threads
    if "--breakdown" in arguments:
        assert "conv 64->64 3x3/1 on 4x4" in done.stdout and "SGD update" in done.stdout
        with_torch = "--amnp-only" not in arguments and importlib.util.find_spec("torch") is not None
        assert ("ratio" in done.stdout) == with_torch  # the torch columns, where torch runs


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="gemm_rates.py compares with PyTorch")
def test_gemm_rates_runs_at_toy_size():
    done = subprocess.run([sys.executable, str(BENCHMARKS / "gemm_rates.py"), "--batch-size", "4", "--repeats", "1",
                           "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "conv 64->64 3x3/1 on 4x4" in done.stdout and "all convolutions" in done.stdout
    assert "1 threads" in done.stdout  # the thread count reached NumPy's BLAS (set before its import)


def test_the_checksum_benchmark_runs_at_toy_size():
    done = subprocess.run([sys.executable, str(BENCHMARKS / "cache_checksums.py"), "--images", "300", "--batches", "2",
                           "--rounds", "1"], capture_output=True, text=True, timeout=300, env=checkout_env())
    assert done.returncode == 0, done.stderr[-2000:]
    assert "checked" in done.stdout and "unchecked" in done.stdout


def test_streaming_benchmark_runs_at_toy_size(tmp_path):
    folder = tmp_path / "faces"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "streaming.py"), "--folder", str(folder), "--identities", "8",
         "--per-identity", "4", "--steps", "2", "--batch-size", "8", "--in-memory"],
        capture_output=True, text=True, timeout=300, env=checkout_env(AMNP_CACHE_DIR=str(tmp_path / "cache")))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "32 images under" in done.stdout
    assert [line.split()[0] for line in done.stdout.splitlines()[3:6]] == ["decode", "train", "in"]


def test_speed_runs_from_a_checkout_without_installing(outside_the_checkout):
    cwd, env = outside_the_checkout
    done = subprocess.run([sys.executable, str(BENCHMARKS / "speed.py"), "--model", "small", "--batch-size", "4",
                           "--classes", "10", "--steps", "1"], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "small on numpy, batch 4" in done.stdout and "Conv2d forward" in done.stdout


def test_speed_times_steps_that_read_nothing_back():
    """On a GPU every read waits for the device: a step that read values back would time
    those waits, not the step."""
    spec = importlib.util.spec_from_file_location("speed", BENCHMARKS / "speed.py")
    speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speed)
    net = models.build("small", rng=0)
    head = build_head("am-softmax", models.embedding_size(net), 10, rng=0)
    model = TrainingModel(net, head)
    guard_parameters(model)
    rng = np.random.default_rng(0)
    x = guard(rng.standard_normal((4,) + models.PRESETS["small"][3]).astype(np.float32))
    y = guard(rng.integers(0, 10, 4))
    with transfers() as count:
        speed.training_step(net, head, SGD(model), x, y)
    assert count.downloads == 0


def test_distributed_benchmark_runs_at_toy_size():
    reason = mpi_missing()
    if reason:
        pytest.skip(f"MPI benchmark skipped: {reason}")
    done = subprocess.run([sys.executable, str(BENCHMARKS / "distributed.py"), "--presets", "small", "--ranks", "1", "2",
                           "--batch-size", "4", "--classes", "10", "--steps", "1", "--timeout", "120"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split() for line in done.stdout.splitlines()]
    jobs = [i for i, row in enumerate(rows) if row[:1] == ["small"]]
    assert [rows[i][3:5] for i in jobs] == [["1", "replicated"], ["2", "replicated"], ["2", "sharded"]]
    # the traffic is counted from the arrays sent: on 2 ranks of 2 rows, 128-d embeddings (float32)
    traffic = {" ".join(row[:row.index("call(s)") - 1]): " ".join(row[row.index("call(s)") + 1:-2])
               for row in rows[jobs[-1]:] if "call(s)" in row}  # the sharded job's lines
    assert traffic.keys() == {"gradients: all-reduce sum", "head: all-gather", "head: all-reduce max",
                              "head: all-reduce sum", "head: reduce-scatter"}
    assert traffic["head: all-gather"] == "in 1.0 KiB out 2.0 KiB"  # 2 x 128 floats and 2 labels
    assert traffic["head: all-reduce max"] == "in 48 B out 48 B"  # 3 numbers for each of 4 rows
    assert traffic["head: reduce-scatter"] == "in 2.0 KiB out 1.0 KiB"  # 4 x 128 floats in, 2 x 128 out
    assert "sharded, P = 8: 3 x 10,718 x 512 x 4 B = 62.8 MiB" in done.stdout


def test_the_streaming_benchmark_refuses_a_folder_of_another_size_in_one_line(tmp_path):
    folder = tmp_path / "faces"
    folder.mkdir()
    (folder / "only.png").write_bytes(b"")
    done = subprocess.run([sys.executable, str(BENCHMARKS / "streaming.py"), "--folder", str(folder),
                           "--identities", "2", "--per-identity", "3"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip() == (f"{folder} holds 1 images, not --identities 2 x --per-identity 3: "
                                   "give those of the folder, or a new --folder")


def test_the_distributed_benchmark_without_mpiexec_says_how_to_install_it(tmp_path):
    done = subprocess.run([sys.executable, str(BENCHMARKS / "distributed.py"), "--presets", "small"],
                          capture_output=True, text=True, timeout=120, env=checkout_env(PATH=str(tmp_path)))
    assert done.returncode == 1
    assert done.stderr.strip() == 'distributed.py: mpiexec is not on the PATH; pip install "amnp[dist]" (mpi4py and MPICH)'
