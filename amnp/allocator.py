"""glibc's allocator, told to keep the memory a process frees for its next arrays.

Why.  A training step makes the same arrays every step: columns of a few MiB, activations,
their gradients.  glibc hands an array of more than 128 KiB back to the kernel when it is
freed (at first; the threshold then follows the sizes freed, up to 32 MiB) and shrinks the
heap when more than twice that is free at its top, so the next step's arrays are mostly fresh
pages, each faulted in and zeroed by the kernel on its first write: a page fault per 4 KiB.
With two settings a freed array's memory is reused at once:

- ``M_MMAP_THRESHOLD`` 32 MiB (the largest allowed on 64 bits): arrays below it come from the
  heap, not from pages of their own;
- ``M_TRIM_THRESHOLD`` 1 GiB: the heap is not shrunk until that much is free at its top.

The price: memory a process has freed stays in it (its resident size does not fall after a
peak).  What it gains, measured: docs/performance.md ("Freed memory kept").

``keep_freed_memory()`` sets them (``mallopt``) for the whole process; the command line calls
it before any command.  Where the C library is not glibc, or where the user has tuned glibc's
allocator themselves (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, or ``glibc.malloc.*`` in
GLIBC_TUNABLES: theirs stands), it changes nothing and says so by returning False.
"""
from __future__ import annotations

import ctypes
import os

MiB = 2 ** 20
# glibc's option numbers (malloc.h) and the values set, by the environment variable that sets each
SETTINGS = {
    "MALLOC_MMAP_THRESHOLD_": (-3, 32 * MiB),
    "MALLOC_TRIM_THRESHOLD_": (-1, 1024 * MiB),
}


def _mallopt():
    try:
        return ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc: no libc.so.6, or no mallopt in it
        return None


def _tuned_by_the_user() -> bool:
    return (any(os.environ.get(name) for name in SETTINGS)
            or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""))


def keep_freed_memory() -> bool:
    """Set glibc's allocator to keep freed memory for reuse (module docstring).  Returns True
    when both settings took; False when nothing was changed (the C library is not glibc, or
    the user tuned its allocator) or glibc refused one."""
    if _tuned_by_the_user():
        return False
    mallopt = _mallopt()
    if mallopt is None:
        return False
    taken = [mallopt(option, value) == 1 for option, value in SETTINGS.values()]
    return all(taken)
