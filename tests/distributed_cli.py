"""``amnp`` on a tiny dataset, for the tests that run the command under ``mpiexec``:

    mpiexec -n 2 python -m mpi4py tests/distributed_cli.py train --distributed --out DIR ...

The command line is amnp's own (amnp.cli.main); only the dataset is the tests' tiny one
(tests/test_training.py), as the in-process CLI tests use it.  Set by the tests, never by users:
AMNP_TEST_PIDS=DIR       each rank writes its pid to DIR/rank<R>.pid, for the signal tests;
AMNP_TEST_RAISE=R:S      rank R raises a RuntimeError in step S (a rank that fails alone);
AMNP_TEST_NAN=R:S        rank R's loss in step S is NaN (seen by rank R alone before the all-reduce);
AMNP_TEST_CLASSES=K      the tiny dataset has K identities (7 when unset);
AMNP_TEST_BLAS=DIR       each rank writes to DIR/rank<R>.json the BLAS thread counts it runs its
                         steps with, the library's own, and the count its trainer chose.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from amnp import cli  # noqa: E402
from amnp.training import Trainer  # noqa: E402
from tests.test_training import tiny_dataset  # noqa: E402


def fault(name):
    """(rank, step) of the fault named by the environment variable ``name``, or None."""
    value = os.environ.get(name)
    return tuple(int(part) for part in value.split(":")) if value else None


def inject_faults():
    failing, nan = fault("AMNP_TEST_RAISE"), fault("AMNP_TEST_NAN")
    train_step = Trainer.train_step

    def faulty_step(self, step):
        if (self.comm.rank, step) == failing:
            raise RuntimeError(f"injected failure on rank {self.comm.rank} at step {step}")
        values = train_step(self, step)
        if (self.comm.rank, step) == nan:
            return (values[0] * np.nan,) + tuple(values[1:])
        return values

    Trainer.train_step = faulty_step


def record_blas_threads(directory):
    from amnp.parallel import available_cores
    from tests.test_parallel import blas_counts

    own = blas_counts()  # the library's own count, before any training
    train_step = Trainer.train_step

    def recording_step(self, step):
        with open(os.path.join(directory, f"rank{self.comm.rank}.json"), "w") as file:
            json.dump({"counts": blas_counts(), "own": own, "chosen": self.blas_threads, "cores": available_cores()},
                      file)
        return train_step(self, step)

    Trainer.train_step = recording_step


if __name__ == "__main__":
    classes = int(os.environ.get("AMNP_TEST_CLASSES", "7"))
    cli.open_dataset = lambda config: tiny_dataset(num_classes=classes, per_class=8, seed=config.seed)
    inject_faults()
    if os.environ.get("AMNP_TEST_BLAS"):
        record_blas_threads(os.environ["AMNP_TEST_BLAS"])
    pids = os.environ.get("AMNP_TEST_PIDS")
    if pids:
        from mpi4py import MPI

        with open(os.path.join(pids, f"rank{MPI.COMM_WORLD.Get_rank()}.pid"), "w") as file:
            file.write(str(os.getpid()))
    sys.exit(cli.main(sys.argv[1:]))
