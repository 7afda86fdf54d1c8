"""Build the student version of the tutorials, and (optionally) notebooks.

The tutorials are jupytext percent-format scripts (``# %%`` cells).  Each exercise's
solution sits between two marker lines::

    ### BEGIN SOLUTION
    ...the teacher's code...
    ### END SOLUTION

A block inside a function is an *exercise*, any other an *inline question*; each kind is
numbered on its own, as the text numbers them ("Exercise 2", "Inline question 1").  The
first ``checks.check_...(...)`` line after a block is the check that grades it
(tutorials/grade.py runs it with its own copy of the checks).

The student version replaces every block with
``raise NotImplementedError("exercise N: implement f")`` (or ``"inline question N: set
answer_x"``) at the block's indentation, so a student's copy runs up to their first
unsolved exercise and stops there.  Beside the scripts it writes the checks package (the
inline answers encoded, not in plain text), the derivations the tutorials link to, and a
README for students.  ``--notebooks`` writes .ipynb files too: no outputs, each check in a
cell of its own after its exercise, and nbgrader's cell metadata (solution cells and
autograded test cells).  This file is plain Python: no jupytext needed.

    python tutorials/build.py --student build/student                 # student scripts, checks/, docs/
    python tutorials/build.py --student build/student --notebooks     # ... and .ipynb next to them
    python tutorials/build.py --solutions build/solutions --notebooks  # teacher's version
"""
from __future__ import annotations

import argparse
import base64
import json
import re
import runpy
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
TUTORIAL_PATTERN = re.compile(r"^\d\d_.*\.py$")
CHECK_CALL = re.compile(r"^checks\.check_\w+\(.*\)\s*$")
DERIVATIONS_LINK = "../docs/derivations.md"


def tutorial_files(folder: Path = HERE) -> list[Path]:
    """The tutorials, in order: files named NN_something.py."""
    return sorted(p for p in folder.iterdir() if TUTORIAL_PATTERN.match(p.name))


@dataclass(frozen=True)
class Exercise:
    """One solution block of a tutorial."""
    kind: str            # "exercise" (a function to write) or "inline question" (a value to set)
    number: int          # counted per kind, in the order of the tutorial
    name: str            # the function's or the answer variable's name
    check: str | None    # the check call that grades it, e.g. "checks.check_col2im(col2im)"
    line: int            # 1-based line of the block's BEGIN marker

    @property
    def label(self) -> str:
        return f"{self.kind} {self.number}: {self.name}"

    @property
    def task(self) -> str:
        """What the student version says is left to do."""
        verb = "implement" if self.kind == "exercise" else "set"
        return f"{self.kind} {self.number}: {verb} {self.name}"


def _enclosing_function(lines: list[str], begin: int) -> str | None:
    """The nearest ``def`` above the block that encloses it, within the same cell."""
    indent = len(lines[begin]) - len(lines[begin].lstrip())
    for line in reversed(lines[:begin]):
        stripped = line.lstrip()
        if stripped.startswith("def ") and len(line) - len(stripped) < indent:
            return stripped[4:].split("(")[0]
        if stripped.startswith("# %%"):
            return None
    return None


def _assigned_name(lines: list[str], begin: int) -> str:
    """The variable an inline question's block assigns first."""
    for line in lines[begin + 1:]:
        match = re.match(r"\s*([A-Za-z_]\w*)\s*=", line)
        if match:
            return match.group(1)
        if line.strip() == END:
            break
    return "this cell"


def exercises(source: str, name: str = "<tutorial>") -> list[Exercise]:
    """The solution blocks of a tutorial, in order.  Unbalanced or nested markers are an
    error naming the line."""
    lines = source.splitlines()
    found, begin, counts = [], None, {"exercise": 0, "inline question": 0}
    for number, line in enumerate(lines, start=1):
        marker = line.strip()
        if marker == BEGIN:
            if begin is not None:
                raise ValueError(f"{name}:{number}: {BEGIN} inside the block opened at line {begin + 1}")
            begin = number - 1
            function = _enclosing_function(lines, begin)
            kind = "exercise" if function else "inline question"
            counts[kind] += 1
            check = next((ln.strip() for ln in lines[number:] if CHECK_CALL.match(ln)), None)
            found.append(Exercise(kind, counts[kind], function or _assigned_name(lines, begin), check, number))
        elif marker == END:
            if begin is None:
                raise ValueError(f"{name}:{number}: {END} without a {BEGIN}")
            begin = None
    if begin is not None:
        raise ValueError(f"{name}:{begin + 1}: {BEGIN} is never closed")
    return found


def strip_solutions(source: str, name: str = "<tutorial>") -> tuple[str, int]:
    """Replace each solution block by a NotImplementedError naming its exercise; returns
    (student source, number of blocks)."""
    blocks = {exercise.line: exercise for exercise in exercises(source, name)}
    out, inside = [], False
    for number, line in enumerate(source.splitlines(keepends=True), start=1):
        if number in blocks:
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f'{indent}raise NotImplementedError("{blocks[number].task}")\n')
        elif line.strip() == END:
            inside = False
        elif not inside:
            out.append(line)
    return "".join(out), len(blocks)


def solution_source(source: str) -> str:
    """The teacher's version: the marker lines removed, the solutions kept."""
    return "".join(line for line in source.splitlines(keepends=True) if line.strip() not in (BEGIN, END))


def encoded_answer_key() -> str:
    """The source of the student build's checks/answer_key.py: the same ANSWERS, stored
    compressed and base85-encoded, so that they are not read by accident."""
    answers = runpy.run_path(str(HERE / "checks" / "answer_key.py"))["ANSWERS"]
    blob = base64.b85encode(zlib.compress(json.dumps(answers).encode())).decode()
    lines = "\n".join(f'    "{blob[i:i + 96]}"' for i in range(0, len(blob), 96))
    return ('"""The answers to the inline questions, encoded so that they are not read by accident:\n'
            'work each one out, then let check_answer tell you whether it is right."""\n'
            "import base64\nimport json\nimport zlib\n\n"
            f"ANSWERS = json.loads(zlib.decompress(base64.b85decode(\n{lines})))\n")


def _copy_support(out_dir: Path, student: bool) -> None:
    """The checks package and the derivations beside the tutorials (and, for students, a README)."""
    checks = out_dir / "checks"
    if checks.exists():
        shutil.rmtree(checks)
    shutil.copytree(HERE / "checks", checks, ignore=shutil.ignore_patterns("__pycache__"))
    (out_dir / "docs").mkdir(exist_ok=True)
    shutil.copy2(ROOT / "docs" / "derivations.md", out_dir / "docs" / "derivations.md")
    if student:
        (checks / "answer_key.py").write_text(encoded_answer_key(), encoding="utf-8")
        shutil.copy2(HERE / "STUDENTS.md", out_dir / "README.md")


def _standalone(source: str) -> str:
    """Links to the derivations point into the build's own docs/ folder."""
    return source.replace(DERIVATIONS_LINK, "docs/derivations.md")


def build_student(out_dir: Path, sources: list[Path] | None = None) -> list[Path]:
    """Write the student scripts, checks/, docs/ and README.md to out_dir; returns the scripts."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sources or tutorial_files():
        source = path.read_text(encoding="utf-8")
        unchecked = [e for e in exercises(source, path.name) if e.check is None]
        if unchecked:
            raise ValueError(f"{path.name}:{unchecked[0].line}: no checks.check_...(...) line after this block")
        student, count = strip_solutions(source, path.name)
        if count == 0:
            raise ValueError(f"{path.name} has no exercise ({BEGIN} ... {END})")
        target = out_dir / path.name
        target.write_text(_standalone(student), encoding="utf-8")
        written.append(target)
    _copy_support(out_dir, student=True)
    return written


def build_solutions(out_dir: Path, sources: list[Path] | None = None, keep_markers: bool = False) -> list[Path]:
    """Write the teacher's scripts (markers removed, unless keep_markers: nbgrader's source
    version keeps them), checks/ and docs/ to out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sources or tutorial_files():
        source = path.read_text(encoding="utf-8")
        target = out_dir / path.name
        target.write_text(_standalone(source if keep_markers else solution_source(source)), encoding="utf-8")
        written.append(target)
    _copy_support(out_dir, student=False)
    return written


def _percent_cells(source: str) -> tuple[dict, list[tuple[str, str]]]:
    """(notebook metadata from the jupytext header, [(cell type, text)]) of a percent script."""
    lines = source.splitlines()
    metadata = {}
    if lines and lines[0] == "# ---":
        end = lines.index("# ---", 1)
        if any("kernelspec:" in line for line in lines[1:end]):
            metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
        lines = lines[end + 1:]
    cells, kind, body = [], None, []
    for line in lines + ["# %%"]:
        if line.startswith("# %%"):
            if kind is not None:
                text = "\n".join(body).strip("\n")
                if text:
                    cells.append((kind, text))
            kind, body = ("markdown" if "[markdown]" in line else "code"), []
        elif kind == "markdown":
            body.append(line[2:] if line.startswith("# ") else line.lstrip("#"))
        elif kind is not None:
            body.append(line)
    return metadata, cells


def _nbgrader(cell_id: str, solution: bool = False, points: int | None = None) -> dict:
    return {"nbgrader": {"grade": points is not None, "grade_id": cell_id, "locked": points is not None,
                         "schema_version": 3, "solution": solution, "task": False,
                         **({"points": points} if points is not None else {})}}


def notebook(source: str, stem: str) -> dict:
    """An nbformat 4 notebook of a percent script: no outputs, and each exercise's check line
    in a code cell of its own, marked for nbgrader as an autograded test (1 point) after
    the exercise's cell, marked as a solution cell."""
    metadata, cells = _percent_cells(source)
    out = []

    def code(text, meta):
        out.append({"cell_type": "code", "execution_count": None, "metadata": meta, "outputs": [],
                    "source": text.splitlines(keepends=True)})

    for index, (kind, text) in enumerate(cells):
        if kind == "markdown":
            out.append({"cell_type": "markdown", "metadata": {}, "source": text.splitlines(keepends=True)})
            continue
        lines = text.splitlines()
        checks = [i for i, line in enumerate(lines) if CHECK_CALL.match(line)]
        solution = BEGIN in text or "raise NotImplementedError(\"" in text
        if not checks or not solution:
            code(text, {})
            continue
        first = checks[0]
        code("\n".join(lines[:first]).rstrip("\n"), _nbgrader(f"{stem}-cell{index}-solution", solution=True))
        code("\n".join(lines[first:]).strip("\n"), _nbgrader(f"{stem}-cell{index}-check", points=1))
    return {"cells": out, "metadata": {**metadata, "language_info": {"name": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def to_notebooks(scripts: list[Path]) -> list[Path]:
    """Write an .ipynb beside each percent-format script (see ``notebook``)."""
    written = []
    for script in scripts:
        target = script.with_suffix(".ipynb")
        target.write_text(json.dumps(notebook(script.read_text(encoding="utf-8"), script.stem), indent=1,
                                     ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(target)
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description="build the student tutorials and notebooks")
    parser.add_argument("--student", type=Path, help="write the student version to this folder")
    parser.add_argument("--solutions", type=Path, help="write the teacher's version to this folder")
    parser.add_argument("--notebooks", action="store_true", help="also write .ipynb notebooks of what is written")
    parser.add_argument("--keep-markers", action="store_true",
                        help="with --solutions: keep the BEGIN/END SOLUTION lines (nbgrader's source version)")
    args = parser.parse_args(argv)
    if not (args.student or args.solutions):
        parser.error("give --student DIR and/or --solutions DIR")
    written = []
    if args.student:
        written += build_student(args.student)
    if args.solutions:
        written += build_solutions(args.solutions, keep_markers=args.keep_markers)
    if args.notebooks:
        written += to_notebooks([p for p in written if p.suffix == ".py"])
    for path in written:
        print(path)


if __name__ == "__main__":
    main()
