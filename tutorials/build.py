"""Build the student version of the tutorials, and (optionally) notebooks.

The tutorials are jupytext percent-format scripts (``# %%`` cells).  Each exercise's
solution sits between two marker lines::

    ### BEGIN SOLUTION
    ...the teacher's code...
    ### END SOLUTION

The student version replaces every such block with
``raise NotImplementedError("exercise N: ...")`` at the block's indentation, so a
student's copy runs up to their first unsolved exercise and stops there.  This file is
plain Python (no jupytext needed); ``--notebooks`` converts with jupytext, which is part
of the optional ``tutorials`` extra (``pip install -e ".[tutorials]"``).

    python tutorials/build.py --student build/student                 # student scripts + checks.py
    python tutorials/build.py --student build/student --notebooks     # ... and .ipynb next to them
    python tutorials/build.py --solutions build/solutions --notebooks  # teacher notebooks
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
TUTORIAL_PATTERN = re.compile(r"^\d\d_.*\.py$")


def tutorial_files(folder: Path = HERE) -> list[Path]:
    """The tutorials, in order: files named NN_something.py."""
    return sorted(p for p in folder.iterdir() if TUTORIAL_PATTERN.match(p.name))


def _exercise_name(lines: list[str], begin: int) -> str:
    """What the exercise is: the nearest enclosing ``def`` above the block, else the
    variable the block assigns first (inline questions)."""
    indent = len(lines[begin]) - len(lines[begin].lstrip())
    for line in reversed(lines[:begin]):
        stripped = line.lstrip()
        if stripped.startswith("def ") and len(line) - len(stripped) < indent:
            return f"implement {stripped[4:].split('(')[0]}"
        if stripped.startswith("# %%"):
            break
    for line in lines[begin + 1:]:
        match = re.match(r"\s*([A-Za-z_]\w*)\s*=", line)
        if match:
            return f"set {match.group(1)}"
        if line.strip() == END:
            break
    return "complete this cell"


def strip_solutions(source: str, name: str = "<tutorial>") -> tuple[str, int]:
    """Replace each solution block by a NotImplementedError; returns (student source,
    number of exercises).  Unbalanced or nested markers are an error naming the line."""
    lines = source.splitlines(keepends=True)
    out, count, begin = [], 0, None
    for number, line in enumerate(lines, start=1):
        marker = line.strip()
        if marker == BEGIN:
            if begin is not None:
                raise ValueError(f"{name}:{number}: {BEGIN} inside the block opened at line {begin + 1}")
            begin = number - 1
            count += 1
            indent = line[: len(line) - len(line.lstrip())]
            what = _exercise_name([ln.rstrip("\n") for ln in lines], begin)
            out.append(f'{indent}raise NotImplementedError("exercise {count}: {what}")\n')
        elif marker == END:
            if begin is None:
                raise ValueError(f"{name}:{number}: {END} without a {BEGIN}")
            begin = None
        elif begin is None:
            out.append(line)
    if begin is not None:
        raise ValueError(f"{name}:{begin + 1}: {BEGIN} is never closed")
    return "".join(out), count


def solution_source(source: str) -> str:
    """The teacher's version: the marker lines removed, the solutions kept."""
    return "".join(line for line in source.splitlines(keepends=True) if line.strip() not in (BEGIN, END))


def build_student(out_dir: Path, sources: list[Path] | None = None) -> list[Path]:
    """Write the student scripts and checks.py to out_dir; returns the scripts written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sources or tutorial_files():
        student, count = strip_solutions(path.read_text(encoding="utf-8"), path.name)
        if count == 0:
            raise ValueError(f"{path.name} has no exercise ({BEGIN} ... {END})")
        target = out_dir / path.name
        target.write_text(student, encoding="utf-8")
        written.append(target)
    shutil.copy2(HERE / "checks.py", out_dir / "checks.py")
    return written


def build_solutions(out_dir: Path, sources: list[Path] | None = None) -> list[Path]:
    """Write the teacher's scripts (markers removed) and checks.py to out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sources or tutorial_files():
        target = out_dir / path.name
        target.write_text(solution_source(path.read_text(encoding="utf-8")), encoding="utf-8")
        written.append(target)
    shutil.copy2(HERE / "checks.py", out_dir / "checks.py")
    return written


def to_notebooks(scripts: list[Path]) -> list[Path]:
    """Convert percent-format scripts to .ipynb beside them with jupytext."""
    try:
        import jupytext  # noqa: F401  (only to give a clear message when it is missing)
    except ImportError:
        raise SystemExit('notebooks need jupytext: pip install -e ".[tutorials]"') from None
    subprocess.run([sys.executable, "-m", "jupytext", "--to", "ipynb", "--quiet", *map(str, scripts)], check=True)
    return [p.with_suffix(".ipynb") for p in scripts]


def main(argv=None):
    parser = argparse.ArgumentParser(description="build the student tutorials and notebooks")
    parser.add_argument("--student", type=Path, help="write the student version to this folder")
    parser.add_argument("--solutions", type=Path, help="write the teacher's version to this folder")
    parser.add_argument("--notebooks", action="store_true", help="also convert what is written to .ipynb")
    args = parser.parse_args(argv)
    if not (args.student or args.solutions):
        parser.error("give --student DIR and/or --solutions DIR")
    written = []
    if args.student:
        written += build_student(args.student)
    if args.solutions:
        written += build_solutions(args.solutions)
    if args.notebooks:
        written += to_notebooks([p for p in written if p.suffix == ".py"])
    for path in written:
        print(path)


if __name__ == "__main__":
    main()
