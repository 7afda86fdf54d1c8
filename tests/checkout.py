"""Child processes that run this checkout's amnp, whatever amnp the interpreter has
installed (another checkout's in editable mode, an older release)."""
import os
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]


def checkout_env(**variables) -> dict:
    """os.environ with this checkout first on PYTHONPATH, and ``variables`` set."""
    path = os.pathsep.join(filter(None, [str(CHECKOUT), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, **variables)
