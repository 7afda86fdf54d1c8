"""Training on a folder larger than a memory budget: decode once to disk, then stream.

    python benchmarks/streaming.py --folder /tmp/amnp-synthetic-faces          # 80,000 images
    python benchmarks/streaming.py --folder F --identities 100 --per-identity 10 --steps 5

Writes a synthetic face folder (JPEG, 3x112x96, the size of CASIA-WebFace's crops) unless
``--folder`` already holds one of that size, then runs, each in its own process so that its peak
resident memory (ru_maxrss) is its own:

1. ``decode``: the folder decoded once into the dataset cache (amnp.data.on_disk);
2. ``train``: ``amnp``'s trainer on the cached folder for ``--steps`` steps, timing how long
   the steps waited for their batch (the prefetch thread reads ahead);
3. ``in memory`` (with ``--in-memory``): the same folder decoded into memory instead, for
   the memory it would take.

Prints one table: seconds, peak RSS, and the decoded size.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPE = (112, 96)


def write_folder(root: Path, identities: int, per_identity: int, seed: int = 0) -> None:
    """Face-sized JPEGs: a smooth random 'face' per identity plus per-image noise and shifts."""
    from PIL import Image
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    for identity in tqdm(range(identities), desc="writing the synthetic folder", unit="id",
                         disable=not sys.stderr.isatty()):
        directory = root / f"id{identity:06d}"
        directory.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (14, 12, 3)).astype(np.float32)
        face = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize(SHAPE[::-1], Image.BILINEAR),
                          dtype=np.float32)
        for k in range(per_identity):
            shifted = np.roll(face, tuple(rng.integers(-4, 5, 2)), axis=(0, 1))
            noisy = np.clip(shifted + rng.normal(0, 12, shifted.shape), 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(directory / f"{k:04d}.jpg", quality=90)


def child(stage: str, folder: str, steps: int, batch_size: int, out: str) -> dict:
    """Run one stage in this process; returns what it measured."""
    from amnp.data import default_cache_dir, load_folder_dataset

    cache = default_cache_dir() / "folders"
    start = time.perf_counter()
    if stage == "in memory":
        dataset = load_folder_dataset(folder, progress=sys.stderr.isatty())
        return {"seconds": time.perf_counter() - start,
                "bytes": int(dataset.train_images.nbytes + dataset.test_images.nbytes)}
    dataset = load_folder_dataset(folder, cache_dir=cache, progress=sys.stderr.isatty())
    if stage == "decode":
        return {"seconds": time.perf_counter() - start,
                "bytes": int(dataset.train_images.nbytes + dataset.test_images.nbytes)}

    from amnp.data import prefetch
    from amnp.config import TrainConfig
    from amnp.training import Trainer

    waited = []
    get = prefetch.Prefetcher.get

    def timed_get(self, step):
        begin = time.perf_counter()
        batch = get(self, step)
        waited.append(time.perf_counter() - begin)
        return batch

    prefetch.Prefetcher.get = timed_get
    config = TrainConfig(dataset=f"folder:{folder}", model="small", iters=steps,
                         batch_size=batch_size, log_every=max(1, steps // 4))
    trainer = Trainer(config, dataset, out, progress=False)
    trainer.start()
    begin = time.perf_counter()
    trainer.train()
    elapsed = time.perf_counter() - begin
    return {"seconds": elapsed, "step_ms": 1e3 * elapsed / steps,
            "wait_ms": 1e3 * float(np.median(waited)), "wait_max_ms": 1e3 * max(waited),
            "bytes": int(dataset.train_images.nbytes + dataset.test_images.nbytes)}


def run_stage(stage: str, args) -> dict:
    """One stage in a fresh process; adds its peak RSS (this process's own ru_maxrss of the
    child, via wait4)."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, __file__, "--child", stage, "--folder", str(args.folder),
                   "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--out", out]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        stdout = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        sys.exit(f"the {stage} stage failed (exit {process.returncode})")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "amnp-synthetic-faces")
    parser.add_argument("--identities", type=int, default=2000)
    parser.add_argument("--per-identity", type=int, default=40)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--in-memory", action="store_true",
                        help="also decode the folder into memory, to show what that takes")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, str(args.folder), args.steps, args.batch_size, args.out)))
        return

    if not args.folder.exists():
        write_folder(args.folder, args.identities, args.per_identity)
    files = sum(len(names) for _, _, names in os.walk(args.folder))
    if files != args.identities * args.per_identity:  # an existing folder of another size
        sys.exit(f"{args.folder} holds {files} images, not --identities {args.identities} x "
                 f"--per-identity {args.per_identity}: give those of the folder, or a new --folder")
    print(f"{files} images under {args.folder}")
    stages = ["decode", "train"] + (["in memory"] if args.in_memory else [])
    rows = [(stage, run_stage(stage, args)) for stage in stages]
    print(f"\n{'stage':<10} {'seconds':>8} {'peak RSS':>10} {'decoded images':>15}  notes")
    for stage, result in rows:
        notes = (f"{args.steps} steps of `small` at batch {args.batch_size}: {result['step_ms']:.0f} ms "
                 f"per step, waited {result['wait_ms']:.2f} ms (median; max {result['wait_max_ms']:.1f}) "
                 "for its batch" if stage == "train" else "")
        print(f"{stage:<10} {result['seconds']:8.1f} {result['peak_rss_mb']:8.0f} MB "
              f"{result['bytes'] / 2**30:12.2f} GiB  {notes}")
    from amnp.data import default_cache_dir
    print(f"\npeak RSS: the maximum resident set size of each stage's process; "
          f"the decoded cache is under {default_cache_dir() / 'folders'} (AMNP_CACHE_DIR moves it)")

if __name__ == "__main__":
    main()
