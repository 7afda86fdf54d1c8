"""Backend selection, and NumPy/CuPy parity (the `gpu` tests skip with the reason where no GPU)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import amnp
from amnp import backend
from amnp import layers as L
from amnp import losses
from amnp import functional as F
from amnp.gradcheck import check_function, check_layer


def test_default_is_numpy_and_names_are_checked():
    assert amnp.get_backend() == "numpy"
    with pytest.raises(ValueError, match="unknown backend 'torch'; expected one of numpy, cupy"):
        amnp.set_backend("torch")
    assert amnp.get_backend() == "numpy"


def test_use_backend_restores_the_previous_backend():
    with amnp.use_backend("numpy"):
        assert amnp.get_backend() == "numpy"
    assert amnp.get_backend() == "numpy"


@pytest.fixture
def without_cupy(monkeypatch):
    """Pretend CuPy is not installed, whatever this machine has."""
    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.setattr(backend, "_cupy", None)


def test_missing_cupy_is_explained(without_cupy):
    with pytest.raises(RuntimeError, match=re.escape("""'pip install "amnp[gpu]"' (CuPy for CUDA 12) or """
                                                     """'pip install "amnp[gpu-cuda13]"' (CUDA 13; nvidia-smi""")):
        amnp.set_backend("cupy")
    assert amnp.get_backend() == "numpy"
    available, reason = backend.cupy_available()
    assert not available and "CuPy" in reason


def test_the_gpu_extras_install_cupy_for_cuda_12_and_13():
    tomllib = pytest.importorskip("tomllib")
    with open(Path(__file__).resolve().parents[1] / "pyproject.toml", "rb") as file:
        extras = tomllib.load(file)["project"]["optional-dependencies"]
    assert extras["gpu"] == ["cupy-cuda12x"] and extras["gpu-cuda13"] == ["cupy-cuda13x"]


ALL_MODULES = ("amnp", "amnp.cli", "amnp.config", "amnp.inference", "amnp.training", "amnp.evaluation",
               "amnp.figures", "amnp.data", "amnp.checkpoint", "amnp.gradcheck")


def test_a_bad_environment_variable_never_breaks_import():
    """Imported in a fresh interpreter: no module may read AMNP_BACKEND at import time."""
    code = ("import importlib, sys\n"
            f"for name in {ALL_MODULES!r}: importlib.import_module(name)\n"
            "import amnp\n"
            "try:\n    amnp.get_backend()\n"
            "except ValueError as exc:\n    print(exc)\n")
    env = dict(os.environ, AMNP_BACKEND="tensorflow")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "AMNP_BACKEND='tensorflow': unknown backend 'tensorflow'; expected one of numpy, cupy")


@pytest.fixture
def unread_backend(monkeypatch):
    """The state of a fresh import: no backend chosen yet, AMNP_BACKEND not read."""
    monkeypatch.setattr(backend, "_current", None)
    return monkeypatch


def set_backend_message(name):
    with pytest.raises((ValueError, RuntimeError)) as info:
        amnp.set_backend(name)
    return str(info.value)


def test_environment_variable_chooses_the_backend_on_first_use(unread_backend):
    unread_backend.setenv("AMNP_BACKEND", " NumPy ")
    assert amnp.get_backend() == "numpy"
    unread_backend.setattr(backend, "_current", None)
    unread_backend.delenv("AMNP_BACKEND")
    assert amnp.get_backend() == "numpy"


def test_unknown_name_in_the_variable_is_reported_where_it_matters(unread_backend):
    unread_backend.setenv("AMNP_BACKEND", "tensorflow")
    expected = "AMNP_BACKEND='tensorflow': " + set_backend_message("tensorflow")
    for use in (amnp.get_backend, lambda: amnp.asarray([1.0]), lambda: L.Linear(2, 2), backend.xp):
        with pytest.raises(ValueError) as info:  # every time: nothing falls back to NumPy
            use()
        assert str(info.value) == expected
    with amnp.use_backend("numpy"):  # an explicit choice wins, and leaves the variable unread
        assert amnp.get_backend() == "numpy"
    with pytest.raises(ValueError, match="AMNP_BACKEND='tensorflow'"):
        amnp.get_backend()
    amnp.set_backend("numpy")
    assert amnp.get_backend() == "numpy"


def test_unavailable_cupy_in_the_variable_is_reported_where_it_matters(unread_backend, without_cupy):
    unread_backend.setenv("AMNP_BACKEND", "cupy")
    expected = "AMNP_BACKEND='cupy': " + set_backend_message("cupy")
    with pytest.raises(RuntimeError) as info:
        L.Conv2d(1, 1, 3)
    assert str(info.value) == expected
    with pytest.raises(RuntimeError):
        amnp.get_backend()


@pytest.mark.parametrize("value, error", [
    ("tensorflow", "unknown backend 'tensorflow'"),
    ("cupy", "the cupy backend needs CuPy"),
])
def test_cli_reports_a_bad_variable_in_one_line(unread_backend, without_cupy, tmp_path, capsys, value, error):
    from amnp import cli

    unread_backend.setenv("AMNP_BACKEND", value)
    unread_backend.delenv("AMNP_DEBUG", raising=False)
    out = tmp_path / "run"
    assert cli.main(["train", "--iters", "1", "--out", str(out)]) == cli.EXIT_BAD_INPUT
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"amnp: error: AMNP_BACKEND={value!r}: ") and error in lines[0]
    assert not out.exists()


def test_trainer_without_a_backend_follows_the_variable(unread_backend, tmp_path):
    from amnp.config import TrainConfig
    from amnp.training import Trainer

    from .test_training import tiny_dataset

    unread_backend.setenv("AMNP_BACKEND", "tensorflow")
    with pytest.raises(ValueError, match="AMNP_BACKEND='tensorflow': unknown backend"):
        Trainer(TrainConfig(iters=1, batch_size=4), tiny_dataset(), str(tmp_path), progress=False)
    unread_backend.setenv("AMNP_BACKEND", "numpy")
    config = TrainConfig(iters=1, batch_size=4)
    trainer = Trainer(config, tiny_dataset(), str(tmp_path), progress=False)
    assert trainer.config.backend == "numpy" and config.backend is None


class FakeCupyArray:
    """Stands in for a CuPy array on machines without CuPy: only its module name matters."""
    __module__ = "cupy._core.core"


def test_mixing_backends_is_a_type_error_naming_the_arguments():
    with pytest.raises(TypeError, match="argument 0 is a NumPy array and argument 1 is a CuPy array"):
        amnp.get_array_module(np.zeros(2), FakeCupyArray())


def test_get_array_module_and_conversions_on_numpy():
    a = np.arange(3.0)
    assert amnp.get_array_module(a, None, 1.0) is np
    assert amnp.get_array_module() is np
    assert amnp.to_numpy(a) is a
    b = amnp.asarray([1, 2], dtype=np.float32)
    assert isinstance(b, np.ndarray) and b.dtype == np.float32


# ---------------------------------------------------------------- GPU parity

def parity_cases():
    """(name, layer factory, input shape): each layer built with the same seed on both backends."""
    return [
        ("linear", lambda: L.Linear(6, 4, rng=0), (5, 6)),
        ("conv2d", lambda: L.Conv2d(3, 4, (3, 2), stride=(1, 2), padding=(2, 1), rng=0), (2, 3, 7, 6)),
        # 8 input channels or more: the channels-last convolution, at stride 1 (dx by the
        # flipped kernels), at stride 2, and with padding > kernel - 1 (dx by the scatter-add)
        ("conv2d_channels_last", lambda: L.Conv2d(8, 8, 3, padding=1, rng=0), (2, 8, 6, 5)),
        ("conv2d_channels_last_stride2", lambda: L.Conv2d(8, 16, 3, stride=2, padding=1, rng=0), (2, 8, 7, 6)),
        ("conv2d_channels_last_wide_padding", lambda: L.Conv2d(8, 4, 2, padding=2, rng=0), (2, 8, 5, 5)),
        ("relu", lambda: L.ReLU(), (3, 4, 5)),
        ("prelu", lambda: L.PReLU(3), (2, 3, 4, 4)),
        ("max_pool2d", lambda: L.MaxPool2d(3, stride=2, padding=1), (2, 3, 7, 6)),
        ("avg_pool2d", lambda: L.AvgPool2d(3, stride=1, padding=1), (2, 3, 5, 6)),
        ("flatten", lambda: L.Flatten(), (2, 3, 2, 2)),
        ("l2_normalize", lambda: L.L2Normalize(), (4, 6)),
        ("cosine", lambda: L.CosineLinear(6, 5, rng=0), (4, 6)),
        ("cosine_no_fn", lambda: L.CosineLinear(6, 5, normalize_features=False, rng=0), (4, 6)),
        ("network", lambda: L.Sequential(
            L.Conv2d(1, 4, 3, stride=2, padding=1, rng=0), L.PReLU(4),
            L.Residual(L.Conv2d(4, 4, 3, padding=1, rng=1), L.PReLU(4)),
            L.MaxPool2d(2), L.Flatten(), L.Linear(16, 8, rng=2), L.CosineLinear(8, 5, rng=3)), (3, 1, 8, 8)),
    ]


@pytest.mark.gpu
@pytest.mark.parametrize("name, make, shape", parity_cases(), ids=[c[0] for c in parity_cases()])
def test_layer_parity_numpy_cupy(cupy_module, name, make, shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    cpu = make()
    out_cpu = cpu.forward(x)
    dout = rng.standard_normal(out_cpu.shape).astype(np.float32)
    dx_cpu = cpu.backward(dout)
    with amnp.use_backend("cupy"):
        gpu = make()
        out_gpu = gpu.forward(cupy_module.asarray(x))
        dx_gpu = gpu.backward(cupy_module.asarray(dout))
    assert isinstance(out_gpu, cupy_module.ndarray)
    np.testing.assert_allclose(amnp.to_numpy(out_gpu), out_cpu, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(amnp.to_numpy(dx_gpu), dx_cpu, rtol=1e-4, atol=1e-5)
    for pname, owner, key in cpu.named_parameters():
        gpu_owner = dict((n, o) for n, o, _ in gpu.named_parameters())[pname]
        np.testing.assert_allclose(amnp.to_numpy(gpu_owner.grads[key]), owner.grads[key], rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("criterion", [losses.AMSoftmaxLoss(m=0.35, s=30.0), losses.SoftmaxCrossEntropyLoss()])
def test_loss_parity_numpy_cupy(cupy_module, criterion):
    rng = np.random.default_rng(1)
    cos = rng.uniform(-1, 1, (8, 6)).astype(np.float32)
    labels = rng.integers(0, 6, 8)
    loss_cpu, grad_cpu = criterion.forward(cos, labels), criterion.backward()
    loss_gpu = criterion.forward(cupy_module.asarray(cos), cupy_module.asarray(labels))
    grad_gpu = criterion.backward()
    assert loss_gpu == pytest.approx(loss_cpu, rel=1e-4)
    np.testing.assert_allclose(amnp.to_numpy(grad_gpu), grad_cpu, rtol=1e-4, atol=1e-6)


@pytest.mark.gpu
def test_gpu_errors_match_cpu_errors(cupy_module):
    crit = losses.AMSoftmaxLoss()
    with pytest.raises(ValueError, match="got values from -1"):
        crit.forward(cupy_module.zeros((2, 3), np.float32), cupy_module.asarray([-1, 0]))
    with pytest.raises(TypeError, match="NumPy array and argument 1 is a CuPy array"):
        amnp.get_array_module(np.zeros(2), cupy_module.zeros(2))


@pytest.mark.gpu
def test_gradcheck_runs_on_cupy(cupy_module):
    with amnp.use_backend("cupy"):
        layer = L.Conv2d(2, 2, 3, stride=1, padding=1, dtype=np.float64, rng=0)
        x = cupy_module.asarray(np.random.default_rng(0).standard_normal((1, 2, 4, 4)))
        assert all(r.passed for r in check_layer(layer, x))


@pytest.mark.gpu
def test_gradcheck_promotes_float32_checks_functional_pairs_and_kinks_on_cupy(cupy_module):
    rng = np.random.default_rng(0)
    with amnp.use_backend("cupy"):
        layer = L.Linear(3, 2, rng=0)  # float32 parameters on the device
    reports = check_layer(layer, cupy_module.asarray(rng.standard_normal((4, 3)), dtype=np.float32))
    assert all(r.passed and r.promoted_from == "float32" for r in reports)
    assert layer.params["weight"].dtype == np.float32
    cos = cupy_module.asarray(rng.uniform(-0.9, 0.9, (4, 5)))
    labels = cupy_module.asarray(rng.integers(0, 5, 4))
    report, = check_function(F.am_softmax_forward, F.am_softmax_backward, (cos, labels), {"m": 0.35, "s": 16.0})
    assert report.passed
    assert check_layer(L.ReLU(), cupy_module.asarray([[0.0, 1.0]]), detect_kinks=True)[0].kinks == ((0, 0),)
