"""Reading the next batches in the background while the current step computes.

Reading a batch from disk (`DiskImages`) costs page faults and, on a cold cache,
disk seeks; done inside the step, the network would wait for it.  `Prefetcher`
reads the batches of the next few steps on one background thread.  NumPy releases
the GIL while it copies the rows, so the read overlaps the step's arithmetic,
which releases the GIL too (BLAS).  What a step gets is exactly what reading it
in place would give: the batch of step t is a pure function of t.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

__all__ = ["Prefetcher"]


class Prefetcher:
    """``get(step)`` returns ``read(step)``, read ahead for steps up to ``depth`` later.

    ``read`` must be a pure function of the step (it runs on another thread).
    Steps at or beyond ``end`` are never read ahead.  Use as a context manager, or
    call `close`, so that the thread stops.
    """

    def __init__(self, read, end: int, depth: int = 2):
        self.read, self.end, self.depth = read, end, depth
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="amnp-prefetch")
        self._pending = {}

    def get(self, step: int):
        for ahead in range(step, min(step + self.depth + 1, self.end)):
            if ahead not in self._pending:
                self._pending[ahead] = self._pool.submit(self.read, ahead)
        for stale in [s for s in self._pending if s < step]:  # steps that were skipped
            self._pending.pop(stale).cancel()
        future = self._pending.pop(step, None)
        return self.read(step) if future is None else future.result()

    def close(self) -> None:
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
        return False
