"""Shared test settings.

Hypothesis profiles, chosen with AMNP_HYPOTHESIS_PROFILE:
- ``quick`` (default on a workstation): few examples, for development;
- ``ci`` (default where the CI environment variable is set): derandomized, so
  every CI run draws the same examples, and a moderate number of them;
- ``thorough``: many examples, for a gradient study.
"""
import os

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
