"""amnp: AM-Softmax (Additive Margin Softmax) and face verification, by hand in NumPy/CuPy.

    import amnp
    from amnp import layers, losses, functional

``amnp.data``, ``amnp.evaluation``, ``amnp.figures``, ``amnp.inference`` and
``amnp.training`` load matplotlib or tqdm and are imported on demand.
``amnp.load_run(DIR)`` is a trained run's network for inference (``amnp.run``).
"""
from . import config, functional, gradcheck, heads, layers, losses, models, optim
from .backend import (
    asarray,
    get_array_module,
    get_backend,
    set_backend,
    to_numpy,
    use_backend,
)
from .run import load_run

__version__ = "0.1.0"

__all__ = [
    "asarray", "get_array_module", "get_backend", "set_backend", "to_numpy", "use_backend",
    "config", "functional", "gradcheck", "heads", "layers", "losses", "models", "optim", "load_run",
]
