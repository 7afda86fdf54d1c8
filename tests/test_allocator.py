"""amnp.allocator: with glibc's allocator told to keep freed memory, arrays made again after
being freed take no new pages (counted as the process's minor page faults, in a fresh
process); the user's own glibc variables stand; elsewhere nothing is changed."""
import ctypes
import subprocess
import sys

import pytest

from amnp import allocator, cli

from .checkout import checkout_env

# A step's pattern in small: arrays of a few MB made, freed and made again, then page faults
# counted over 100 repetitions, as a share of the 6.4 MB of pages a step writes.
REMAKE_ARRAYS = """
import resource, sys
import numpy as np
from amnp.allocator import keep_freed_memory

kept = keep_freed_memory() if sys.argv[1] == "keep" else None

def step():
    columns = np.ones(600_000, np.float32)
    activations = np.ones(300_000, np.float32)
    del columns
    gradients = np.ones(700_000, np.float32)
    return activations, gradients

for _ in range(5):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(100):
    step()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 100
print(kept, faults / (6.4e6 / resource.getpagesize()))  # the share of the step's pages that were fresh
"""


def fresh_pages(mode, **variables):
    environment = checkout_env(**variables)
    for name in [*allocator.SETTINGS, "GLIBC_TUNABLES"]:
        if name not in variables:
            environment.pop(name, None)
    done = subprocess.run([sys.executable, "-c", REMAKE_ARRAYS, mode], capture_output=True, text=True,
                          env=environment, timeout=60)
    assert done.returncode == 0, done.stderr
    kept, fresh = done.stdout.split()
    return kept, float(fresh)


def glibc_missing():
    return None if allocator._mallopt() is not None else "the C library is not glibc"


def test_arrays_made_again_take_no_new_pages_once_freed_memory_is_kept():
    if glibc_missing():
        pytest.skip(glibc_missing())
    kept, fresh = fresh_pages("keep")
    assert kept == "True" and fresh < 0.01
    _, fresh = fresh_pages("default")
    assert fresh > 0.25  # glibc's defaults: nearly every page of every step (about 1,500 faults of 4 KiB)


@pytest.mark.parametrize("variable, value", [("MALLOC_TRIM_THRESHOLD_", "131072"),
                                             ("MALLOC_MMAP_THRESHOLD_", "131072"),
                                             ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=131072")])
def test_the_users_own_tuning_of_glibc_stands(variable, value):
    if glibc_missing():
        pytest.skip(glibc_missing())
    kept, fresh = fresh_pages("keep", **{variable: value})
    assert kept == "False" and fresh > 0.25


def test_without_glibc_nothing_is_changed(monkeypatch):
    def no_libc(name):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    for name in [*allocator.SETTINGS, "GLIBC_TUNABLES"]:  # not tuned by the user: the C library decides
        monkeypatch.delenv(name, raising=False)
    assert allocator.keep_freed_memory() is False


def test_the_command_line_keeps_freed_memory_before_any_command(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append("kept"))
    monkeypatch.setitem(cli.COMMANDS, "margins", lambda args: calls.append(args.command) or 0)
    assert cli.main(["margins", "--out", str(tmp_path / "margins.png")]) == 0
    assert calls == ["kept", "margins"]
