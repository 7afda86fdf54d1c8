"""Checks of tutorial 10: timing a training step honestly, on a simulated asynchronous device."""
from __future__ import annotations

import contextlib
import time

from .common import _as_number, _fail, _ok, guarded


class FakeDevice:
    """Simulates an asynchronous device on a simulated clock.  ``launch()`` queues one step's
    work and returns at once, except the first call, which compiles its kernels on the host
    first (``compile_s``, as CuPy does); ``synchronize()`` waits for the queued work.  The
    steps take ``work_s`` seconds each, in turn.  ``clock()`` is the simulated time: only
    waiting on the host moves it, so a measurement on this device gives the same number on
    a busy machine as on an idle one."""

    def __init__(self, work_s=(0.02,), compile_s=0.0):
        self.work_s, self.compile_s = tuple(work_s), compile_s
        self.launches, self.pending, self.now, self.reads = 0, 0.0, 1000.0, 0

    def launch(self):
        if self.launches == 0:
            self.now += self.compile_s
        self.pending += self.work_s[self.launches % len(self.work_s)]
        self.launches += 1

    def synchronize(self):
        self.now += self.pending
        self.pending = 0.0

    def clock(self):
        self.reads += 1
        return self.now

    @contextlib.contextmanager
    def on_the_clocks(self):
        """time.perf_counter, time.monotonic and time.time read the simulated clock here."""
        names = ("perf_counter", "monotonic", "time")
        saved = {name: getattr(time, name) for name in names}
        for name in names:
            setattr(time, name, self.clock)
        try:
            yield
        finally:
            for name, function in saved.items():
                setattr(time, name, function)


# A warm-up step, then five timed steps of 20 ms, one of them slow (80 ms): their median is
# 20 ms, their mean 32 ms.
STEPS_S = (0.02, 0.02, 0.02, 0.08, 0.02, 0.02)
COMPILE_S, QUEUED_S = 0.2, 0.2


def check_measure(measure):
    """measure(step, synchronize, repeats) -> median seconds per step, measured honestly:
    warm up, synchronise before starting the clock and before stopping it, take the median.
    The device has work queued before the call and compiles on its first launch."""
    measure = guarded(measure, "measure", ())
    device = FakeDevice(STEPS_S, COMPILE_S)
    device.pending = QUEUED_S                                # work queued before the measurement
    repeats = len(STEPS_S) - 1
    with device.on_the_clocks():
        got = measure(device.launch, device.synchronize, repeats)
    got = _as_number(got, "measure's result", "return the median time per step in seconds, one number")
    if device.reads == 0:
        _fail("measure never read time.perf_counter(): the check runs the device on a simulated clock",
              "read the clock as time.perf_counter() (after `import time`), not a name imported from time")
    if got < 0.01:
        _fail(f"{got * 1e3:.2f} ms per step for 20 ms of work: you timed the launch, not the work",
              "call synchronize() before reading the clock at the end of each step")
    if device.launches <= repeats:
        _fail(f"{device.launches} calls of step() for {repeats} repeats: no warm-up",
              "call step() once before timing: the first call compiles kernels (here 200 ms of it)")
    if 0.015 <= got <= 0.027:
        _ok("measure", f"{got * 1e3:.1f} ms for a 20 ms step")
        return
    if 0.027 < got <= 0.045:
        _fail(f"{got * 1e3:.1f} ms per step, expected 20 ms: that looks like the mean",
              "return the median: one slow step (80 ms here, a hiccup of the machine) pulls the mean up")
    _fail(f"{got * 1e3:.1f} ms per step for 20 ms of work: earlier work leaked into your measurement",
          "warm up, then synchronise BEFORE starting the clock, so queued work and compilation are not counted")
