"""Shared test settings.

Hypothesis profiles, chosen with AMNP_HYPOTHESIS_PROFILE:
- ``quick`` (default on a workstation): few examples, for development;
- ``ci`` (default where the CI environment variable is set): derandomized, so
  every CI run draws the same examples, and a moderate number of them;
- ``thorough``: many examples, for a gradient study.
"""
import os
import signal

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("quick", max_examples=10, deadline=None)
settings.register_profile(
    "ci", max_examples=25, deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(
    os.environ.get("AMNP_HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "quick"))


@pytest.fixture
def cupy_module():
    """The cupy module, or a skip that says why the GPU tests cannot run here."""
    from amnp.backend import _import_cupy, cupy_available

    available, reason = cupy_available()
    if not available:
        pytest.skip(f"GPU test skipped: {reason}")
    return _import_cupy()


@pytest.fixture(scope="session", autouse=True)
def dataset_cache(tmp_path_factory):
    """Datasets the tests generate or decode (folders trained on from the command line) go to
    a temporary cache, never into the user's."""
    with pytest.MonkeyPatch.context() as patch:
        path = tmp_path_factory.mktemp("amnp-cache")
        patch.setenv("AMNP_CACHE_DIR", str(path))
        yield path


class Unhandled(Exception):
    """Raised by the test's stand-in for a signal's default action, which for SIGTERM and
    SIGHUP would end the test process itself."""


@pytest.fixture
def stop_signals_as_from_a_shell():
    """SIGINT as in an interactive shell; SIGTERM and SIGHUP raise Unhandled where nothing
    in amnp catches them."""
    def unhandled(signum, frame):
        raise Unhandled(signal.Signals(signum).name)

    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, unhandled)
    signal.signal(signal.SIGHUP, unhandled)
    yield unhandled
    for signum, handler in before.items():
        signal.signal(signum, handler)


@pytest.fixture
def outside_the_checkout(tmp_path):
    """(working directory, environment) for running a script of this checkout as a user of
    an uninstalled checkout would, from elsewhere: the PYTHONPATH holds an `amnp` that fails
    to import, standing for "not installed" (this machine may have another amnp installed)."""
    decoy = tmp_path / "site" / "amnp"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text('raise ImportError("an amnp from outside the checkout was imported")\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    return elsewhere, dict(os.environ, PYTHONPATH=str(decoy.parent))
