"""The tutorials run end to end in their --quick form, write their figures, and print
the results they are about (each run in a fresh interpreter, as a student would run it)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"


def run_tutorial(name, out_dir):
    """Run tutorials/<name> --quick --out out_dir; return its stdout, failing with its output."""
    env = dict(os.environ, MPLBACKEND="Agg")  # belt and braces: the scripts never open a window
    done = subprocess.run(
        [sys.executable, str(TUTORIALS / name), "--quick", "--out", str(out_dir)],
        capture_output=True, text=True, timeout=120, env=env, cwd=TUTORIALS.parent,
    )
    assert done.returncode == 0, f"{name} exited with {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def assert_pngs(out_dir, names):
    for name in names:
        path = Path(out_dir) / name
        assert path.is_file(), f"{name} was not written"
        assert path.stat().st_size > 0, f"{name} is empty"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{name} is not a PNG"


@pytest.mark.parametrize("script", ["01_gradient_checking.py", "02_am_softmax_on_the_circle.py"])
def test_help_describes_the_options(script):
    done = subprocess.run([sys.executable, str(TUTORIALS / script), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "--quick" in done.stdout and "--out" in done.stdout


def test_gradient_checking_tutorial(tmp_path):
    out = run_tutorial("01_gradient_checking.py", tmp_path)
    assert_pngs(tmp_path, ["01_h_sweep.png"])
    # (a) float64 passes; (b) float32 fails by rounding
    assert "float64 check: PASSED" in out
    assert "float32 check: FAILED" in out
    # (c) the kink disagrees by design and agrees once moved off it
    assert "ReLU check with two inputs at exactly 0: FAILED" in out
    assert "moved to +-1e-3 (> h): PASSED" in out
    # (d) the whole network and the loss pass
    assert "network directional check: PASSED" in out
    assert "AM-Softmax loss check: PASSED" in out
    # (e) the broken col2im is caught where windows overlap, and only there
    caught = [line for line in out.splitlines() if "broken col2im CAUGHT" in line]
    missed = [line for line in out.splitlines() if "not caught (no overlap" in line]
    assert caught and all(" yes " in line for line in caught)
    assert missed and all(" no " in line for line in missed)
    assert "directional_check sees it too: CAUGHT" in out


def test_am_softmax_circle_tutorial(tmp_path):
    out = run_tutorial("02_am_softmax_on_the_circle.py", tmp_path)
    assert_pngs(tmp_path, ["02_circle_softmax.png", "02_circle_normface.png",
                           "02_circle_am_softmax.png", "02_circle_all.png"])
    assert "initial-loss sanity check" in out
    assert "ln(C-1+e^(-sm)) + sm" in out
    for name in ("softmax", "normalised softmax", "AM-Softmax"):
        assert f"[{name}]" in out, name
    assert "mean intra-class spread" in out and "smallest angle between class centres" in out
    assert "gap/spread" in out
