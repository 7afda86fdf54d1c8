"""How much of a convolution's forward pass is the BLAS library's: amnp's GEMMs against
PyTorch's own matrix product and its whole convolution.

    python benchmarks/gemm_rates.py                          # small, batch 128, every core
    python benchmarks/gemm_rates.py --model sphereface20 --batch-size 16 --threads 2

For every convolution of the network (identical ones merged, their count in "calls"), the
matrix products amnp's forward issues are timed on their own, with NumPy's matmul on
random matrices of exactly those shapes (chunk by chunk, as ``Conv2d`` cuts the batch:
``samples_per_chunk``), then the same products with ``torch.mm`` and PyTorch's whole
``conv2d`` forward under ``torch.no_grad()``.  All three are medians of ``--repeats``
calls in one process.  When NumPy's products alone take longer than PyTorch's whole
convolution, no rewrite of the rest of amnp's convolution (the gather, the padding, the
bias) can bring it level on that BLAS library: the difference is the GEMM kernel.
PyTorch is needed (it is not an amnp dependency).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def forward_gemm_shapes(layer, x_shape):
    """[(rows, inner, columns)] of the products amnp's Conv2d forward runs on an input of
    x_shape: one per chunk of samples (channels-last), or one for the batch (plain im2col)."""
    import numpy as np

    from amnp.functional.conv import output_size
    from amnp.functional.conv_channels_last import samples_per_chunk
    from amnp.layers.core import runs_channels_last

    n, c, height, width = x_shape
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel_size, layer.stride, layer.padding
    ho, wo = output_size(height, kh, sh, ph), output_size(width, kw, sw, pw)
    inner, f = c * kh * kw, layer.out_channels
    if not runs_channels_last(np, c):
        return [(f, inner, n * ho * wo)]
    float32_bytes = np.dtype(np.float32).itemsize  # the benchmark's images and weights
    chunk = samples_per_chunk(np, n, inner * ho * wo * float32_bytes, ho * wo, f)
    return [(min(chunk, n - start) * ho * wo, inner, f) for start in range(0, n, chunk)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="small")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(args.threads)  # before NumPy and PyTorch start their pools
    import numpy as np
    import torch

    from amnp import layers as L
    from amnp import models
    from compare_torch import blas_description, median_call, network_ops

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    net = models.build(args.model, rng=rng)
    x = rng.standard_normal((args.batch_size,) + models.PRESETS[args.model][3]).astype(np.float32)
    ops, _ = network_ops(net, x, lambda layer, x, prefix: layer.forward(x))
    rows = {}
    for label, layer, _, (layer_input,) in (op for op in ops if isinstance(op[1], L.Conv2d)):
        if label in rows:
            rows[label]["calls"] += 1
            continue
        products = [(rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32))
                    for m, k, n in forward_gemm_shapes(layer, layer_input.shape)]
        torch_products = [(torch.from_numpy(a), torch.from_numpy(b)) for a, b in products]
        torch_input = torch.from_numpy(np.ascontiguousarray(layer_input))
        weight, bias = (torch.from_numpy(layer.params[key]) for key in ("weight", "bias"))

        def torch_conv():
            with torch.no_grad():
                torch.nn.functional.conv2d(torch_input, weight, bias, layer.stride, layer.padding)

        flops = sum(2 * a.shape[0] * a.shape[1] * b.shape[1] for a, b in products)
        rows[label] = {
            "calls": 1, "gflop": flops / 1e9,
            "numpy": median_call(lambda: [a @ b for a, b in products], args.repeats),
            "torch.mm": median_call(lambda: [torch.mm(a, b) for a, b in torch_products], args.repeats),
            "torch conv": median_call(torch_conv, args.repeats),
        }
    print(f"{args.model}, batch {args.batch_size}, {args.threads} threads, forward pass, "
          f"median of {args.repeats} calls")
    print(f"NumPy {np.__version__}, BLAS: {blas_description()}; torch {torch.__version__}, "
          f"{torch.backends.cpu.get_cpu_capability()} kernels")
    print(f"{'convolution':<30}{'calls':>6}{'GFLOP':>8}{'NumPy GEMMs ms':>16}{'GFLOP/s':>9}"
          f"{'torch.mm ms':>13}{'GFLOP/s':>9}{'torch conv ms':>15}")
    totals = dict.fromkeys(("numpy", "torch.mm", "torch conv"), 0.0)
    for label, row in rows.items():
        print(f"{label:<30}{row['calls']:>6}{row['gflop']:>8.3f}"
              f"{row['numpy'] * 1e3:>16.2f}{row['gflop'] / row['numpy']:>9.0f}"
              f"{row['torch.mm'] * 1e3:>13.2f}{row['gflop'] / row['torch.mm']:>9.0f}"
              f"{row['torch conv'] * 1e3:>15.2f}")
        for key in totals:
            totals[key] += row["calls"] * row[key]
    print(f"{'all convolutions':<44}{totals['numpy'] * 1e3:>16.2f}{'':>9}{totals['torch.mm'] * 1e3:>13.2f}"
          f"{'':>9}{totals['torch conv'] * 1e3:>15.2f}")


if __name__ == "__main__":
    main()
