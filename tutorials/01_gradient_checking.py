"""Tutorial 1: how amnp proves its gradients.

amnp has no autograd: every layer's backward pass is written by hand, so every
one of them can be wrong.  The only independent witness we have is the forward
pass itself.  This script walks through how amnp uses the forward pass to check
the backward pass, and where that check can mislead you:

  (a) the vector-Jacobian product and its central-difference estimate, on a
      convolution whose windows overlap (stride < kernel) and are padded;
  (b) the same check in float32, which fails although nothing is wrong, and a
      sweep of the step size h that shows why (truncation vs rounding);
  (c) a kink: ReLU at exactly 0, where the two gradients disagree by design;
  (d) checks of a whole small network and of the AM-Softmax loss;
  (e) a deliberately broken backward pass, caught only when windows overlap.

Run it from the repository root:

    python tutorials/01_gradient_checking.py            # full version, a few seconds
    python tutorials/01_gradient_checking.py --quick    # tiny version (used by the tests)

It prints its results and writes one figure, ``01_h_sweep.png``, to ``--out``
(default: ``tutorials/out``).
"""
from __future__ import annotations

import argparse
import os
import time

# The matrices in this tutorial are tiny.  A multi-threaded BLAS gains nothing on them and,
# on a busy machine, loses a lot (we measured a 12x slowdown of training with OpenBLAS's
# default threads while other processes ran).  One thread, unless you asked for more:
# this must happen before NumPy is first imported.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np
from matplotlib.figure import Figure

from amnp.functional.conv import conv2d_forward, crop_padding, window_slice
from amnp.gradcheck import (
    ATOL,
    RTOL,
    GradientReport,
    check_layer,
    check_loss,
    directional_check,
    format_reports,
    numerical_gradient,
    rel_error,
)
from amnp.layers import Conv2d, CosineLinear, Flatten, Linear, MaxPool2d, PReLU, ReLU, Sequential
from amnp.losses import AMSoftmaxLoss

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")


def heading(title: str) -> None:
    print()
    print("=" * 78)
    print(title)
    print("=" * 78)


def verdict(reports) -> str:
    """PASSED when every gradient of a check passed, FAILED otherwise."""
    return "PASSED" if all(r.passed for r in reports) else "FAILED"


def compare(name: str, analytic, numeric, atol: float = ATOL, rtol: float = RTOL) -> GradientReport:
    """The comparison amnp's checks make, written out: the worst absolute error, the worst
    relative error (cs231n's rel_error), and numpy.allclose's elementwise rule
    |analytic - numeric| <= atol + rtol * |numeric|.  (amnp's own helper for this is private.)"""
    analytic = np.asarray(analytic, dtype=np.float64)
    numeric = np.asarray(numeric, dtype=np.float64)
    error = np.abs(analytic - numeric)
    return GradientReport(name, float(error.max()), rel_error(analytic, numeric),
                          bool(np.all(error <= atol + rtol * np.abs(numeric))))


# ----------------------------------------------------------------------------------------------
# (a) The vector-Jacobian product, checked by central differences, in float64
# ----------------------------------------------------------------------------------------------
def part_a(sizes, rng):
    heading("(a) Central differences on a padded Conv2d with overlapping windows (float64)")
    # A layer maps x to y = f(x).  Its backward pass never forms the Jacobian J = dy/dx: it
    # receives the upstream gradient g = dL/dy (the "dout" a later layer sends) and returns
    # the vector-Jacobian product  J^T g = d<g, f(x)>/dx.  So to check backward we only need
    # the gradient of ONE scalar function, phi(x) = <g, f(x)>, and that we can estimate from
    # the forward pass alone, one entry at a time:
    #
    #     d phi / d x_i  ~=  (phi(x + h e_i) - phi(x - h e_i)) / 2h
    #
    # The central difference has error O(h^2) (the one-sided difference only O(h)).
    #
    # stride 2 < kernel 3 makes neighbouring windows overlap, so some input pixels feed
    # several outputs and their gradients must be SUMMED (col2im's "+="), and padding 1 puts
    # window taps on the zero border, whose gradient must be cropped away.  Both are where
    # convolution backward passes usually go wrong, so this is the geometry worth checking.
    n, c, size = sizes["conv_input"]
    conv = Conv2d(c, 3, kernel_size=3, stride=2, padding=1, dtype=np.float64, rng=rng)
    # A zero bias would hide a missing bias gradient behind nothing; give it generic values.
    conv.params["bias"] = rng.standard_normal(3)
    x = rng.standard_normal((n, c, size, size))

    y = conv.forward(x)
    g = rng.standard_normal(y.shape)          # a random upstream gradient
    analytic = conv.backward(g)               # J^T g, by hand-written backward
    numeric = numerical_gradient(lambda: conv.forward(x), x, g, h=1e-6)
    print(f"input {x.shape} -> output {y.shape}; Conv2d(kernel 3, stride 2, padding 1)")
    print("dL/dx by hand vs by central differences, a few entries:")
    for index in [(0, 0, 0, 0), (0, 0, 2, 2), (n - 1, c - 1, size - 1, size - 2)]:
        print(f"   x{list(index)}: analytic {analytic[index]: .10f}   numeric {numeric[index]: .10f}")
    print(f"max relative error over all {x.size} entries: {rel_error(analytic, numeric):.2e}")

    # check_layer does exactly this for the input AND for every parameter (perturbing the
    # weights in place and restoring them), and reports each against amnp's tolerances,
    # atol 1e-6 and rtol 1e-5 (tighter than torch.autograd.gradcheck's float64 defaults).
    #
    # Why "max relative error" and not just the absolute error?  Gradients have no natural
    # scale, so an absolute error of 1e-6 means nothing on its own.  rel_error is elementwise
    # |a - b| / (|a| + |b|), so its worst case comes from the entries with the SMALLEST
    # gradients (here ~1e-7: rounding of phi, divided by 2h, against a tiny entry).
    print("\ncheck_layer(conv, x, dout=g):")
    reports = check_layer(conv, x, dout=g)
    print(format_reports(reports))
    print(f"float64 check: {verdict(reports)}")
    return conv, x


# ----------------------------------------------------------------------------------------------
# (b) float32: failing by rounding, not by bugs; the V-shaped error curve
# ----------------------------------------------------------------------------------------------
def check_in_dtype(layer, x, g, h):
    """check_layer's loop without its float64 copies, so that the layer and the
    perturbations stay in x's dtype.  (check_layer itself always hands the layer float64
    arrays, so a float32 layer would refuse them with a dtype error.)"""
    layer.forward(x)
    dx = layer.backward(g)
    reports = [compare("input", dx, numerical_gradient(lambda: layer.forward(x), x, g, h))]
    for name, owner, key in layer.named_parameters():
        analytic = owner.grads[key].copy()
        p = owner.params[key]   # perturbed in place by numerical_gradient, then restored
        reports.append(compare(name, analytic, numerical_gradient(lambda: layer.forward(x), p, g, h)))
    return reports


def cast_layer(layer, dtype):
    """The same weights in another dtype: a state dict round trip."""
    copy = Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                  layer.padding, dtype=dtype)
    copy.load_state_dict({k: v.astype(dtype) for k, v in layer.state_dict().items()})
    return copy


def smooth_network(sizes, dtype, rng):
    """Conv2d -> Flatten -> CosineLinear: smooth (no kinks) and, through the normalisation
    in the cosine layer, nonlinear, so that central differences have a truncation error."""
    n, c, size = sizes["conv_input"]
    conv = Conv2d(c, 3, 3, stride=2, padding=1, dtype=dtype, rng=rng)
    features = 3 * ((size + 2 - 3) // 2 + 1) ** 2
    return Sequential(conv, Flatten(), CosineLinear(features, 4, dtype=dtype, rng=rng))


def part_b(sizes, conv64, x64, out_dir, rng):
    heading("(b) The same check in float32: it fails, and nothing is wrong")
    # The convolution is LINEAR in x and in w, so the central difference has no truncation
    # error at all: everything the check reports for it is rounding.  In float64, phi has
    # about 16 correct digits, and dividing its rounding error (~1e-16 |phi|) by 2h = 2e-6
    # leaves ~1e-10: invisible.  In float32, phi has ~7 digits, and the same division leaves
    # an error of ~1e-7 / 1e-6, i.e. ~10% of the gradient.  Worse, x + h itself is rounded to
    # the float32 grid (spacing ~1.2e-7 near 1), so the step actually taken is not h.
    conv32 = cast_layer(conv64, np.float32)
    x32 = x64.astype(np.float32)
    g = rng.standard_normal(conv64.forward(x64).shape)
    reports32 = check_in_dtype(conv32, x32, g.astype(np.float32), h=1e-6)
    print("the same Conv2d, same weights, same input, in float32 (h = 1e-6):")
    print(format_reports(reports32))
    print(f"float32 check: {verdict(reports32)}  (rounding, not a bug: the float64 check of the same"
          " layer passed)")

    # The sweep.  For a nonlinear function the error of the central difference is the sum of
    #   truncation:  ~ h^2 |phi'''| / 6         (shrinks as h shrinks)
    #   rounding:    ~ eps |phi| / h            (grows as h shrinks; eps = machine epsilon)
    # which is smallest near h ~ eps^(1/3): ~6e-6 for float64 (eps 2.2e-16), ~5e-3 for float32
    # (eps 1.2e-7).  On a log-log plot the two terms are straight lines of slope +2 and -1:
    # the "V".  We use a smooth nonlinear network (conv + cosine layer) and measure the
    # normwise error ||numeric - exact|| / ||exact||, where "exact" is the float64 backward.
    # The input is scaled by 0.3: short feature vectors make the normalisation x/||x|| more
    # curved, so that the truncation arm of the V shows inside the sweep (with inputs of
    # scale 1 the float32 curve bottoms out at the largest h tried).
    # Errors above 1 at the smallest h in float32: x + h rounds to the nearest float32, a
    # step of one grid spacing (~6e-8 near 0.5) that is far larger than h, yet we divide by 2h.
    print("\nstep-size sweep on Conv2d -> Flatten -> CosineLinear (smooth, nonlinear):")
    print("error = ||numeric - analytic|| / ||analytic||, analytic from the float64 backward")
    seed = int(rng.integers(1 << 31))
    net64 = smooth_network(sizes, np.float64, np.random.default_rng(seed))
    net32 = smooth_network(sizes, np.float32, np.random.default_rng(seed))
    net32.load_state_dict({k: v.astype(np.float32) for k, v in net64.state_dict().items()})
    n, c, size = sizes["conv_input"]
    x = 0.3 * rng.standard_normal((n, c, size, size))
    g = rng.standard_normal(net64.forward(x).shape)
    exact = net64.backward(g)
    steps = 10.0 ** -np.arange(1, 10)
    errors = {"float64": [], "float32": []}
    for h in steps:
        for name, net, dtype in (("float64", net64, np.float64), ("float32", net32, np.float32)):
            xd = x.astype(dtype)
            numeric = numerical_gradient(lambda: net.forward(xd), xd, g.astype(dtype), h)
            errors[name].append(np.linalg.norm(numeric - exact) / np.linalg.norm(exact))
    print(f"{'h':>8}  {'float64':>10}  {'float32':>10}")
    for i, h in enumerate(steps):
        print(f"{h:8.0e}  {errors['float64'][i]:10.2e}  {errors['float32'][i]:10.2e}")
    for name in errors:
        best = int(np.argmin(errors[name]))
        print(f"{name}: smallest error {errors[name][best]:.1e} at h = {steps[best]:.0e}")
    best32 = min(errors["float32"])
    print(f"float32 at its best h reaches {best32:.1e}, "
          + ("still above" if best32 > RTOL else "barely within")
          + f" amnp's rtol of {RTOL:.0e} for a whole gradient, with no h known in advance: "
          "check gradients in float64.")

    fig = Figure(figsize=(6, 4.2))
    ax = fig.subplots()
    for name, marker in (("float64", "o"), ("float32", "s")):
        ax.loglog(steps, errors[name], marker=marker, label=name)
    # the two asymptotes, anchored at the float64 ends of the sweep, to name the two arms
    ax.loglog(steps[:4], errors["float64"][0] * (steps[:4] / steps[0]) ** 2, "k:", linewidth=1,
              label="slope 2: truncation ~ h²")
    ax.loglog(steps[-4:], errors["float64"][-1] * (steps[-1] / steps[-4:]), "k--", linewidth=1,
              label="slope −1: rounding ~ eps/h")
    ax.axhline(RTOL, color="gray", linewidth=0.8)
    ax.text(steps[0], RTOL * 1.5, "amnp rtol 1e-5", color="gray", fontsize=8)
    ax.invert_xaxis()
    ax.set_xlabel("step h (smaller to the right)")
    ax.set_ylabel("relative error of the central difference")
    ax.set_title("central differences: truncation vs rounding")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(out_dir, "01_h_sweep.png")
    fig.savefig(path, dpi=120)
    print(f"figure: {path}")


# ----------------------------------------------------------------------------------------------
# (c) A kink: ReLU at exactly 0
# ----------------------------------------------------------------------------------------------
def part_c(rng):
    heading("(c) A kink: ReLU at exactly 0")
    # ReLU has no derivative at 0.  amnp (like PyTorch) uses the subgradient 0 there.  The
    # central difference straddles the kink: (relu(h) - relu(-h)) / 2h = (h - 0) / 2h = 1/2.
    # So the two disagree by design, by exactly half the upstream gradient, whatever h is.
    # Kinks hide in every network: ReLU/PReLU at 0, max-pool ties, the conditional margin at
    # c_y = m.  Random float64 inputs almost never land on one, so amnp checks at generic
    # points and pins the kink conventions with separate, exact tests (tests/test_kinks.py).
    x = rng.standard_normal((1, 6))
    x[0, [1, 4]] = 0.0                       # two entries exactly on the kink
    relu = ReLU()
    g = np.ones_like(x)
    relu.forward(x)
    analytic = relu.backward(g)
    numeric = numerical_gradient(lambda: relu.forward(x), x, g, h=1e-6)
    print(f"{'x':>10} {'analytic':>9} {'numeric':>9}")
    for xi, a, nu in zip(x[0], analytic[0], numeric[0]):
        print(f"{xi:10.4f} {a:9.4f} {nu:9.4f}" + ("   <- kink" if xi == 0 else ""))
    reports = check_layer(relu, x, dout=g)
    print(f"ReLU check with two inputs at exactly 0: {verdict(reports)} "
          f"(max abs error {reports[0].max_abs_error:.2f}: the 1/2 of the straddled kink)")
    # Moving the points off the kink by more than h makes the check pass again: the backward
    # pass was never wrong, the test point was.
    x[0, [1, 4]] = [1e-3, -1e-3]
    print(f"same check with those inputs moved to +-1e-3 (> h): {verdict(check_layer(relu, x, dout=g))}")


# ----------------------------------------------------------------------------------------------
# (d) A whole network, and the AM-Softmax loss
# ----------------------------------------------------------------------------------------------
def part_d(sizes, rng):
    heading("(d) directional_check on a whole network; check_loss on AM-Softmax")
    # check_layer costs two forward passes PER ENTRY of the input and of every parameter.
    # directional_check costs two forward passes in all: it moves the input and every
    # parameter together along one random direction d and compares
    #     (phi(theta + h d) - phi(theta - h d)) / 2h   with   <backward's gradient, d>.
    # One direction checks every gradient at once (a wrong entry shows up unless d happens to
    # be orthogonal to the error, which has probability 0); a few seeds make it robust.
    n, c, size = sizes["net_input"]
    net = Sequential(
        Conv2d(c, 4, 3, stride=1, padding=1, dtype=np.float64, rng=rng),
        PReLU(4, dtype=np.float64),
        MaxPool2d(2),
        Flatten(),
        Linear(4 * (size // 2) ** 2, 8, dtype=np.float64, rng=rng),
        CosineLinear(8, 5, dtype=np.float64, rng=rng),
    )
    x = rng.standard_normal((n, c, size, size))
    print(net)
    print(f"{net.num_parameters()} parameters + {x.size} inputs")
    start = time.perf_counter()
    reports = [directional_check(net, x, seed=seed)._replace(name=f"direction, seed {seed}")
               for seed in range(3)]
    took = time.perf_counter() - start
    print(format_reports(reports))
    print(f"network directional check: {verdict(reports)}  (3 directions, {took * 1e3:.0f} ms)")
    start = time.perf_counter()
    full = check_layer(net, x)
    took = time.perf_counter() - start
    print(f"for comparison, check_layer entry by entry: {verdict(full)} "
          f"({2 * (net.num_parameters() + x.size)} forward passes, {took * 1e3:.0f} ms)")

    # The loss is checked on its own: check_loss compares dLoss/dcos with central differences
    # of the loss value.  Cosines are drawn in (-0.9, 0.9), a generic point; s = 30, m = 0.35
    # are the paper's values.  (AM-Softmax itself has no kink: the margin is unconditional.)
    batch, classes = sizes["loss"]
    cos = rng.uniform(-0.9, 0.9, (batch, classes))
    labels = rng.integers(0, classes, batch)
    loss = AMSoftmaxLoss(m=0.35, s=30.0)
    report = check_loss(loss, cos, labels)
    print("\ncheck_loss(AMSoftmaxLoss(m=0.35, s=30), cos, labels):")
    print(format_reports([report]))
    print(f"AM-Softmax loss check: {verdict([report])}")
    # Do not be alarmed by a large "rel" next to "ok".  With s = 30, most softmax
    # probabilities are tiny, so many gradient entries s (p_j - [j = y]) / N are ~1e-10 or
    # less, while the central difference of a loss of size ~10 carries rounding noise of
    # ~1e-16 * 10 / 2e-6 ~ 1e-9.  For such an entry the elementwise relative error is
    # meaningless, which is why the pass rule is |a - n| <= atol + rtol |n| (allclose), with
    # an absolute floor atol = 1e-6, and why the "abs" column is the one to read here.
    loss.forward(cos, labels)
    grad = np.abs(loss.backward())
    print(f"(gradient entries range from {grad.min():.1e} to {grad.max():.1e}; "
          f"{np.mean(grad < 1e-8):.0%} of them are below 1e-8)")


# ----------------------------------------------------------------------------------------------
# (e) A deliberately broken backward pass
# ----------------------------------------------------------------------------------------------
def broken_col2im(cols, x_padded_shape, kernel, stride, out_hw):
    """amnp's col2im with one character changed: '=' where '+=' belongs.  Where windows
    overlap, a pixel seen by several windows keeps only the LAST window's gradient."""
    n, c = x_padded_shape[:2]
    (kh, kw), (ho, wo) = kernel, out_hw
    cols = cols.reshape(c, kh, kw, n, ho, wo)
    dx_padded = np.zeros(x_padded_shape, dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            rows, columns = window_slice(i, j, out_hw, stride)
            dx_padded[:, :, rows, columns] = cols[:, i, j].transpose(1, 0, 2, 3)   # the bug
    return dx_padded


class BrokenConv2d(Conv2d):
    """A Conv2d on the plain im2col path (Conv2d itself takes a faster gather at stride 1)
    whose backward is amnp's conv2d_backward with broken_col2im in it."""

    def forward(self, x):
        out, self._cache = conv2d_forward(
            x, self.params["weight"], self.params.get("bias"), self.stride, self.padding)
        return out

    def backward(self, dout):
        cache = self._last_cache()
        w = cache.w
        f = w.shape[0]
        dout_mat = dout.transpose(1, 0, 2, 3).reshape(f, -1)
        self.grads["weight"] = (dout_mat @ cache.cols.T).reshape(w.shape)
        self.grads["bias"] = dout.sum(axis=(0, 2, 3))
        dcols = w.reshape(f, -1).T @ dout_mat
        dx_padded = broken_col2im(dcols, cache.x_padded_shape, w.shape[2:], cache.stride, dout.shape[2:])
        return crop_padding(dx_padded, cache.padding)


def part_e(sizes, rng):
    heading("(e) A broken col2im ('=' instead of '+='), and when a check can see it")
    # When no two windows share a pixel (stride >= kernel), '=' and '+=' do the same thing:
    # each pixel receives exactly one contribution.  The broken backward is then CORRECT for
    # that geometry, and no check, however precise, can fail it.  Only when windows overlap
    # (stride < kernel) do the lost contributions change the input gradient.  The weight and
    # bias gradients do not go through col2im and pass in every case.
    # The lesson: a gradient check only tests the configurations you give it.  amnp's tests
    # check convolution and pooling with stride < kernel and padding > 0 for this reason.
    n, c, size = sizes["conv_input"]
    print(f"{'kernel':>6} {'stride':>6} {'padding':>7}  {'overlap':>7}  {'input rel err':>13}  verdict")
    for kernel, stride, padding in [(3, 1, 1), (3, 2, 1), (2, 2, 0), (3, 3, 1)]:
        conv = BrokenConv2d(c, 3, kernel, stride=stride, padding=padding, dtype=np.float64, rng=rng)
        x = rng.standard_normal((n, c, size, size))
        reports = check_layer(conv, x)
        by_name = {r.name: r for r in reports}
        overlap = stride < kernel
        caught = not by_name["input"].passed
        params_ok = all(r.passed for r in reports if r.name != "input")
        line = (f"{kernel:>6} {stride:>6} {padding:>7}  {'yes' if overlap else 'no':>7}  "
                f"{by_name['input'].max_rel_error:13.2e}  ")
        if caught:
            line += "broken col2im CAUGHT"
        else:
            line += "not caught (no overlap: '=' and '+=' agree)"
        print(line + ("" if params_ok else "  [parameter gradient failed too?!]"))
    print("\nthe full report for the overlapping case (kernel 3, stride 1, padding 1):")
    conv = BrokenConv2d(c, 3, 3, stride=1, padding=1, dtype=np.float64, rng=rng)
    x = rng.standard_normal((n, c, size, size))
    print(format_reports(check_layer(conv, x)))
    report = directional_check(conv, x)
    print(f"directional_check sees it too: {'CAUGHT' if not report.passed else 'not caught'} "
          f"(rel error {report.max_rel_error:.2e})")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help="directory for the figure (default: tutorials/out)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for the tests")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.quick:
        sizes = {"conv_input": (1, 2, 5), "net_input": (2, 2, 4), "loss": (4, 5)}
    else:
        sizes = {"conv_input": (2, 3, 7), "net_input": (3, 2, 6), "loss": (8, 10)}
    rng = np.random.default_rng(2018)  # everything below is seeded: the output is reproducible
    start = time.perf_counter()
    conv, x = part_a(sizes, rng)
    part_b(sizes, conv, x, args.out, rng)
    part_c(rng)
    part_d(sizes, rng)
    part_e(sizes, rng)
    print(f"\ndone in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
