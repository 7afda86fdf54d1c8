"""amnp: AM-Softmax (Additive Margin Softmax) and face verification, by hand in NumPy/CuPy.

    import amnp
    from amnp import layers, losses, functional

``amnp.data``, ``amnp.evaluation``, ``amnp.figures`` and ``amnp.training`` load
matplotlib or tqdm and are imported on demand; so is ``amnp.load_run(DIR)``
(a trained run's network for inference, see ``amnp.run``), on first use.
"""
from . import functional, gradcheck, heads, layers, losses, models, optim
from .backend import (
    asarray,
    get_array_module,
    get_backend,
    set_backend,
    to_numpy,
    use_backend,
)

__version__ = "0.1.0"


def __getattr__(name):
    # load_run needs the trainer's config and so tqdm and matplotlib: import it on first use
    if name == "load_run":
        from .run import load_run
        return load_run
    raise AttributeError(f"module 'amnp' has no attribute {name!r}")


__all__ = [
    "asarray", "get_array_module", "get_backend", "set_backend", "to_numpy", "use_backend",
    "functional", "gradcheck", "heads", "layers", "losses", "models", "optim", "load_run",
]
