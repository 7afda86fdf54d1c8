"""What data parallelism costs: the gradient all-reduce's share of a training step, the
margin head's memory per rank replicated against sharded, and the bytes each collective moves.

    python benchmarks/distributed.py                 # small (batch 128) and sphereface20 (batch 16)
    python benchmarks/distributed.py --presets small --steps 3 --ranks 1 2

Run it with plain ``python``: it starts its own jobs, ``mpiexec -n P python -m mpi4py
benchmarks/distributed.py --job ...``, one per (preset, P, head), each rank with one BLAS
thread, and prints one table from what rank 0 of each job reports.  Each job makes the
``Trainer`` of ``amnp train --distributed`` on random images of the preset's size and times
its ``train_step`` (one warm-up step, then ``--steps``).  The communicator is instrumented:
each collective it runs is timed and its arrays counted (what a rank hands in and gets back),
so the traffic is read from the arrays actually sent, not worked out by hand.

- ``all-reduce``: the gradient all-reduce of the step (``all_reduce_gradients``: packing into
  one buffer, the MPI call, unpacking), its share of the step's wall time.  On P ranks it
  includes waiting for the slowest rank.  P = 1 sends nothing: the one-process step.
- ``head``: the head's parameters, gradients and momentum on one rank (bytes of the arrays),
  and the rank's resident memory after the steps and at its peak.  A rank of a sharded head
  draws only its rows of the head (amnp.distributed.build_sharded_head), so its peak holds
  no whole matrix.
- after the table, the arithmetic of the head's memory at MS1M's size for P = 2, 4, 8.

Runs from a checkout without installing amnp (the checkout's amnp comes first).  Needs
mpi4py and mpiexec (``pip install "amnp[dist]"``).
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import types
from collections import defaultdict

import numpy as np

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPOSITORY)

# (batch size, classes) of each preset: small as the CPU trains it, sphereface20 with MS1M's classes
PRESETS = {"small": (128, 1000), "sphereface20": (16, 85742)}
MS1M_CLASSES, MS1M_EMBEDDING = 85742, 512
HEAD = "head."  # the prefix of the head's parameter names in TrainingModel.named_parameters
MiB = 2 ** 20


class CountingCommunicator:
    """Wraps a communicator's equal-block primitives: per (phase, collective), the calls, the
    bytes handed in and got back by this rank, and the seconds spent in them."""

    def __init__(self, comm):
        self.phase = "head"  # "gradients" while the trainer's gradient all-reduce runs
        self.calls, self.bytes_in, self.bytes_out, self.seconds = (defaultdict(int), defaultdict(int),
                                                                   defaultdict(int), defaultdict(float))
        for name, kind in (("_all_reduce", "all-reduce"), ("_all_gather", "all-gather"),
                           ("_reduce_scatter", "reduce-scatter")):
            setattr(comm, name, self._counted(getattr(comm, name), kind))

    def _counted(self, primitive, kind):
        def counted(send, *rest):
            key = (self.phase, f"{kind} {rest[0]}" if kind == "all-reduce" else kind)
            start = time.perf_counter()
            primitive(send, *rest)
            self.seconds[key] += time.perf_counter() - start
            self.calls[key] += 1
            self.bytes_in[key] += send.nbytes
            self.bytes_out[key] += send.nbytes if kind == "all-reduce" else rest[0].nbytes
        return counted

    def reset(self):
        for totals in (self.calls, self.bytes_in, self.bytes_out, self.seconds):
            totals.clear()


def resident_mib():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MiB


def job(spec):
    """One rank of one measurement; rank 0 prints every rank's numbers as one JSON line."""
    from amnp.allocator import keep_freed_memory
    from amnp.config import TrainConfig
    from amnp.data.dataset import DeviceImages
    from amnp.distributed.mpi import MPICommunicator
    from amnp.models import PRESETS as SHAPES
    from amnp.training import Trainer

    keep_freed_memory()  # as the amnp command runs
    comm = MPICommunicator()
    counting = CountingCommunicator(comm)
    batch, classes, steps = spec["batch"], spec["classes"], spec["steps"]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2 * batch,) + SHAPES[spec["model"]][3], dtype=np.uint8)
    dataset = types.SimpleNamespace(image_shape=images.shape[1:], num_classes=classes, mirror=True,
                                    train_labels=rng.integers(0, classes, len(images)),
                                    batch_reader=lambda: DeviceImages(images))
    config = TrainConfig(model=spec["model"], batch_size=batch, iters=steps + 1, warmup=1)
    with tempfile.TemporaryDirectory() as out_dir:
        trainer = Trainer(config, dataset, out_dir, progress=False, comm=comm, sharded_head=spec["sharded"])
    # the trainer's one gradient collective per step, timed whole (packing, MPI, unpacking)
    reduce_gradients = trainer._all_reduce_gradients
    gradient_seconds = []

    def timed_reduce(model):
        counting.phase = "gradients"
        start = time.perf_counter()
        reduce_gradients(model)
        gradient_seconds.append(time.perf_counter() - start)
        counting.phase = "head"

    trainer._all_reduce_gradients = timed_reduce
    trainer.train_step(0)  # warm-up: allocations, the first momentum
    counting.reset()
    gradient_seconds.clear()
    comm.barrier()
    step_seconds = []
    for step in range(1, steps + 1):
        start = time.perf_counter()
        trainer.train_step(step)
        step_seconds.append(time.perf_counter() - start)
    head_bytes = sum(owner.params[key].nbytes + owner.grads[key].nbytes
                     for name, owner, key in trainer.model.named_parameters() if name.startswith(HEAD))
    head_bytes += sum(v.nbytes for name, v in trainer.optimizer.velocity.items() if name.startswith(HEAD))
    mine = {
        "step_s": float(np.mean(step_seconds)),
        "gradient_s": float(np.sum(gradient_seconds) / steps) if gradient_seconds else 0.0,
        "head_mib": head_bytes / MiB,
        "rss_mib": resident_mib(),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "traffic": {f"{phase}: {kind}": [counting.calls[phase, kind] / steps, counting.bytes_in[phase, kind] / steps,
                                         counting.bytes_out[phase, kind] / steps,
                                         counting.seconds[phase, kind] / steps]
                    for phase, kind in sorted(counting.calls)},
    }
    every = comm.comm.gather(mine, root=0)
    if comm.rank == 0:
        print(json.dumps({"spec": spec, "ranks": every}), flush=True)


def run_job(spec, ranks, timeout):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    done = subprocess.run(["mpiexec", "-n", str(ranks), sys.executable, "-m", "mpi4py", os.path.abspath(__file__),
                           "--job", json.dumps(spec)], capture_output=True, text=True, env=env, timeout=timeout)
    if done.returncode != 0:
        sys.exit(f"distributed.py: the job {spec} on {ranks} ranks failed (exit {done.returncode}):\n"
                 f"{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def size(count):
    """Bytes per step, in the unit that keeps them readable."""
    for unit, factor in (("MiB", MiB), ("KiB", 1024)):
        if count >= factor:
            return f"{count / factor:.1f} {unit}"
    return f"{count:.0f} B"


def report(result, ranks):
    spec, every = result["spec"], result["ranks"]
    step = float(np.mean([r["step_s"] for r in every]))
    gradients = float(np.mean([r["gradient_s"] for r in every]))
    head = "sharded" if spec["sharded"] else "replicated"
    print(f"{spec['model']:<13}{spec['batch']:>6}{spec['classes']:>8}{ranks:>3}  {head:<11}"
          f"{step * 1000:>9.1f}{gradients * 1000:>9.1f}{100 * gradients / step:>7.1f}%"
          f"{every[0]['head_mib']:>9.1f}{max(r['rss_mib'] for r in every):>8.0f}"
          f"{max(r['peak_rss_mib'] for r in every):>8.0f}")
    for name, (calls, bytes_in, bytes_out, seconds) in every[0]["traffic"].items():
        print(f"{'':<15}{name:<28}{calls:>4.0f} call(s)  in {size(bytes_in):>10}  out {size(bytes_out):>10}  "
              f"{seconds * 1000:8.1f} ms")


def head_arithmetic():
    from amnp.distributed import class_range
    copy = MS1M_CLASSES * MS1M_EMBEDDING * 4 / MiB
    print(f"\nhead at MS1M size ({MS1M_CLASSES:,} x {MS1M_EMBEDDING}, float32), parameters + gradients + "
          f"momentum per rank (arithmetic):\n  replicated, any P: 3 x {copy:.1f} = {3 * copy:.1f} MiB")
    for ranks in (2, 4, 8):
        start, stop = class_range(MS1M_CLASSES, ranks, 0)
        print(f"  sharded, P = {ranks}: 3 x {stop - start:,} x {MS1M_EMBEDDING} x 4 B = "
              f"{3 * (stop - start) * MS1M_EMBEDDING * 4 / MiB:.1f} MiB")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--ranks", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: small 10, sphereface20 3)")
    parser.add_argument("--batch-size", type=int, default=None, help="override the preset's batch (toy runs)")
    parser.add_argument("--classes", type=int, default=None, help="override the preset's classes (toy runs)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds one job may take")
    parser.add_argument("--job", help=argparse.SUPPRESS)  # a rank of one job, started by this script
    args = parser.parse_args()
    if args.job:
        return job(json.loads(args.job))
    if shutil.which("mpiexec") is None:
        sys.exit('distributed.py: mpiexec is not on the PATH; pip install "amnp[dist]" (mpi4py and MPICH)')
    print(f"one BLAS thread per rank; ms per step (mean over ranks of train_step's wall time); "
          f"all-reduce: the gradients' (share of the step); head: parameters + gradients + momentum on a rank; "
          f"RSS: the largest rank's, MiB\n"
          f"{'preset':<13}{'batch':>6}{'classes':>8}{'P':>3}  {'head':<11}{'ms/step':>9}{'reduce':>9}{'share':>8}"
          f"{'head MiB':>9}{'RSS':>8}{'peak':>8}")
    for preset in args.presets:
        batch, classes = PRESETS[preset]
        spec = {"model": preset, "batch": args.batch_size or batch, "classes": args.classes or classes,
                "steps": args.steps or (10 if preset == "small" else 3)}
        for ranks in args.ranks:
            for sharded in (False, True) if ranks > 1 else (False,):
                report(run_job(dict(spec, sharded=sharded), ranks, args.timeout), ranks)
    head_arithmetic()


if __name__ == "__main__":
    main()
