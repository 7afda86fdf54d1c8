"""What checking the decoded-image cache's checksums costs a read (amnp.data.on_disk).

    python benchmarks/cache_checksums.py                    # 20,000 images of 3x112x96: 645 MB
    python benchmarks/cache_checksums.py --images 500 --rounds 2

Writes random face-sized images into a cache (DiskImageWriter) in a temporary directory, then
reads the same random batches from it (DiskImages) with the check and with it switched off,
alternately, and prints the median milliseconds per batch of each.  Every row is read once
first, so the rows come from the page cache: this measures the check, not the disk.
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from amnp.data.on_disk import DiskImages, DiskImageWriter

SHAPE = (3, 112, 96)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=100, help="batches per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as directory:
        with DiskImageWriter(Path(directory) / "cache", "benchmark") as writer:
            for start in range(0, args.images, 1000):
                for image in rng.integers(0, 256, (min(1000, args.images - start),) + SHAPE, np.uint8):
                    writer.append(image)
            images = writer.commit()
        batches = [rng.choice(args.images, args.batch_size, replace=False) for _ in range(args.batches)]
        np.asarray(images)  # every page in the page cache

        checked = DiskImages._check
        seconds = {"checked": [], "unchecked": []}
        for _ in range(args.rounds):
            for name in seconds:
                DiskImages._check = checked if name == "checked" else (lambda self, images, rows: None)
                start = time.perf_counter()
                for rows in batches:
                    images[rows]
                seconds[name].append((time.perf_counter() - start) / len(batches))
        DiskImages._check = checked
    size = args.images * int(np.prod(SHAPE)) / 1e6
    print(f"{args.images} images of {'x'.join(map(str, SHAPE))} ({size:.0f} MB), batches of "
          f"{args.batch_size}, median of {args.rounds} rounds of {args.batches} batches:")
    for name, values in seconds.items():
        print(f"  {name:<9} {1e3 * np.median(values):.2f} ms per batch")


if __name__ == "__main__":
    main()
