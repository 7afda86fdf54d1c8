"""Running out of host or device memory is one `amnp: error:` line that names the model, the
batch size and what to lower, never a traceback.  Host memory runs out for real here, in a
child process whose address space is limited (RLIMIT_AS); device memory runs out through
exceptions built as CuPy's are (this machine may have no GPU)."""
import resource
import subprocess
import sys

import pytest

from amnp import cli
from amnp.training import Trainer

from .checkout import checkout_env
from .test_inference_cli import write_tree
from .test_training import tiny_dataset

ADDRESS_SPACE = 2**30  # a small training on the glyphs needs about 600 MiB of it


def amnp_with_limited_memory(arguments, cwd):
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    return subprocess.run([sys.executable, "-m", "amnp", *arguments], cwd=cwd, capture_output=True, text=True,
                          preexec_fn=limit, env=checkout_env(OPENBLAS_NUM_THREADS="1"))


def one_error_line(done):
    lines = done.stderr.strip().splitlines()
    assert done.returncode == cli.EXIT_BAD_INPUT and len(lines) == 1, done.stderr
    return lines[0]


def test_a_batch_too_large_for_host_memory(tmp_path):
    done = amnp_with_limited_memory(["train", "--batch-size", "20000", "--iters", "2", "--no-eval",
                                     "--out", str(tmp_path / "run")], tmp_path)
    line = one_error_line(done)
    assert line.startswith("amnp: error: out of host memory training small at batch size 20000 (Unable to allocate")
    assert line.endswith(f"); lower --batch-size, with another --out than {tmp_path / 'run'}")


def test_an_image_size_too_large_for_host_memory(tmp_path):
    """The images are resized as the folder is decoded: that is where memory runs out."""
    faces = write_tree(tmp_path / "faces", [f"p{i}" for i in range(6)], 4, size=12)
    done = amnp_with_limited_memory(["train", "--dataset", f"folder:{faces}", "--image-size", "100000,100000",
                                     "--out", str(tmp_path / "run")], tmp_path)
    line = one_error_line(done)
    assert line.startswith("amnp: error: out of host memory training small at batch size 128 on "
                           "100000x100000 images (Unable to allocate")
    assert line.endswith("); lower --batch-size or --image-size")
    assert not (tmp_path / "run").exists()


def cupy_exception(name, module, base, message):
    """An exception of the class CuPy raises, told apart, as amnp does, by its module."""
    return type(name, (base,), {"__module__": module})(message)


DEVICE_POOL = cupy_exception("OutOfMemoryError", "cupy.cuda.memory", MemoryError,
                             "Out of memory allocating 1,073,741,824 bytes (allocated so far: 2,048 bytes).")
CUDA_MALLOC = cupy_exception("CUDARuntimeError", "cupy_backends.cuda.api.runtime", RuntimeError,
                             "cudaErrorMemoryAllocation: out of memory")
CUBLAS = cupy_exception("CUBLASError", "cupy_backends.cuda.libs.cublas", RuntimeError,
                        "CUBLAS_STATUS_ALLOC_FAILED")


@pytest.fixture
def failing_training(monkeypatch):
    """`amnp train` and `amnp compare` on the tiny dataset, with training raising ``error``."""
    monkeypatch.setattr(cli, "open_dataset", lambda config: tiny_dataset(seed=config.seed))

    def fail_with(error):
        def train(self, stop_at=None):
            raise error

        monkeypatch.setattr(Trainer, "train", train)

    return fail_with


CURAND = cupy_exception("CURANDError", "cupy_backends.cuda.libs.curand", RuntimeError,
                        "CURAND_STATUS_ALLOCATION_FAILED")


@pytest.mark.parametrize("error", [DEVICE_POOL, CUDA_MALLOC, CUBLAS, CURAND],
                         ids=["pool", "malloc", "cublas", "curand"])
def test_device_memory_in_training(tmp_path, capsys, failing_training, error):
    failing_training(error)
    run = tmp_path / "run"
    assert cli.main(["train", "--iters", "4", "--batch-size", "8", "--out", str(run)]) == 1
    assert capsys.readouterr().err == (f"amnp: error: out of device memory training small at batch size 8 "
                                       f"({error}); lower --batch-size, with another --out than {run}\n")


def test_device_memory_when_resuming_and_comparing(tmp_path, capsys, failing_training):
    run = tmp_path / "run"
    assert cli.main(["train", "--iters", "4", "--batch-size", "8", "--stop-at", "2", "--out", str(run)]) == 0
    failing_training(DEVICE_POOL)
    assert cli.main(["train", "--resume", str(run)]) == 1
    assert capsys.readouterr().err.endswith(
        "); a resumed run keeps its batch size, so free memory or resume with --backend numpy\n")
    assert cli.main(["compare", "--iters", "2", "--batch-size", "8", "--losses", "softmax",
                     "--out", str(tmp_path / "cmp")]) == 1
    assert capsys.readouterr().err.startswith("amnp: error: out of device memory comparing losses with small "
                                              "at batch size 8 (Out of memory allocating")


def test_other_device_errors_are_not_called_memory(tmp_path, capsys, failing_training):
    failing_training(cupy_exception("CUDARuntimeError", "cupy_backends.cuda.api.runtime", RuntimeError,
                                    "cudaErrorIllegalAddress: an illegal memory access was encountered"))
    assert cli.main(["train", "--iters", "4", "--batch-size", "8", "--out", str(tmp_path / "run")]) == 1
    assert capsys.readouterr().err == ("amnp: error: cudaErrorIllegalAddress: an illegal memory access "
                                       "was encountered\n")


def test_device_memory_in_inference(tmp_path, capsys, failing_training, monkeypatch):
    run, images = tmp_path / "run", write_tree(tmp_path / "images", ["a", "b"], 2)
    assert cli.main(["train", "--iters", "2", "--batch-size", "8", "--no-eval", "--out", str(run)]) == 0

    def features(*args, **kwargs):
        raise DEVICE_POOL

    monkeypatch.setattr(cli, "features", features)
    assert cli.main(["embed", str(run), "--images", str(images), "--grayscale"]) == 1
    assert capsys.readouterr().err == (f"amnp: error: out of device memory embedding images with small in "
                                       f"batches of 256 ({DEVICE_POOL}); free memory, or use --backend numpy\n")
