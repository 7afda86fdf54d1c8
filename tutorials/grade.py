"""Grade a folder of tutorial submissions: one folder per student, holding the student
build's notebooks (.ipynb) or percent scripts (.py) as handed in.

    python tutorials/grade.py SUBMISSIONS --out grades.csv [--tutorials 03 09] [--time-limit 300]

Each tutorial of each student runs in a fresh Python process, in quick mode
(AMNP_TUTORIAL_QUICK=1), in an empty working folder, with a time limit.  The process
executes the submission's code cells one by one, as a kernel would; a cell that raises
stops there and the next one runs.  The submission's own check calls do nothing there: once the function or answer
variable of an exercise is defined, the grader runs that exercise's check (the line after
its block in the teacher's tutorial) with its own copy of the checks (tutorials/checks/),
never the one beside the submission.  So every exercise and inline question is graded on
its own, a failure does not hide the rest, and an edited checks.py earns nothing.  An
answer that calls amnp's own implementation of the exercise scores 0 (the checks refuse
it).  Results stream back as they come: a tutorial that crashes or hangs keeps the points
of the exercises graded before, and the others score 0 with the reason.

The CSV has one row per student, tutorial and exercise, with the columns
``student, tutorial, exercise, points, max_points, passed, message`` (the message is the
check's hint or [ok] line), then one row per student with tutorial ``all`` and exercise
``total``.  Every exercise and inline question is worth 1 point.

Exit status: 0 when the CSV is written; 1 with one line ``grade.py: error: ...`` when
SUBMISSIONS is not a folder of student folders or the CSV cannot be written.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import csv
import io
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import build  # noqa: E402
COLUMNS = ("student", "tutorial", "exercise", "points", "max_points", "passed", "message")
MAGIC = re.compile(r"^\s*[%!]")
# what a tutorial's own cells use from the checks besides the check functions
HELPERS = ("CheckFailed", "show", "target_probability", "margin_only_on_target_test")


# ----------------------------------------------------------------------------------- submissions
def code_cells(path: Path) -> list[str]:
    """The code cells of a notebook or a percent-format script, IPython magics commented out."""
    if path.suffix == ".ipynb":
        cells = [c for c in json.loads(path.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "code"]
        sources = ["".join(c["source"]) if isinstance(c["source"], list) else c["source"] for c in cells]
    else:
        sources, current, markdown = [], [], False
        for line in path.read_text(encoding="utf-8").splitlines() + ["# %%"]:
            if line.startswith("# %%"):
                if current and not markdown:
                    sources.append("\n".join(current))
                current, markdown = [], "[markdown]" in line
            else:
                current.append(line)
    return ["\n".join("# " + ln if MAGIC.match(ln) else ln for ln in src.splitlines()) for src in sources]


def submission_file(folder: Path, stem: str) -> Path | None:
    """The student's file for a tutorial: STEM.ipynb or STEM.py (the newer if both)."""
    found = [p for p in (folder / f"{stem}.ipynb", folder / f"{stem}.py") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


# ----------------------------------------------------------------------------------- the child
def _proxy(real) -> types.ModuleType:
    """What ``import checks`` gives the submission: its check calls do nothing (the grader
    runs the checks itself), the helpers its cells use are the grader's."""
    proxy = types.ModuleType("checks")
    for name in dir(real):
        if name.startswith("check_"):
            setattr(proxy, name, lambda *args, **kwargs: None)
    for name in HELPERS:
        setattr(proxy, name, getattr(real, name))
    return proxy


def _grade(exercise: dict, namespace: dict, real) -> dict:
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            eval(exercise["check"], {**namespace, "checks": real})
    except real.CheckFailed as failure:
        return {"passed": False, "message": str(failure)}
    except NotImplementedError as missing:
        return {"passed": False, "message": f"not done: NotImplementedError: {missing}"}
    except Exception as error:  # the student's code raised: that is its grade, not the grader's failure
        return {"passed": False, "message": f"your code raised {type(error).__name__}: {error}"}
    lines = [line for line in captured.getvalue().splitlines() if line.startswith("[ok]")]
    return {"passed": True, "message": lines[-1] if lines else "[ok]"}


def run_child() -> None:
    """Grade one submission; the job comes as JSON on stdin, results go to stdout as lines
    starting with the job's token, one per exercise, as soon as each is graded."""
    job = json.loads(sys.stdin.readline())
    token, emit = job["token"], sys.stdout.write
    sys.path.insert(0, job["checks_parent"])
    import checks as real                 # the grader's copy, imported before any student code runs
    sys.modules["checks"] = _proxy(real)
    sys.stdin = io.StringIO()
    pending = list(job["exercises"])
    namespace = {"__name__": "__main__"}
    for number, source in enumerate(code_cells(Path(job["submission"])), start=1):
        where = f"<{Path(job['submission']).name}, cell {number}>"
        try:
            statements = ast.parse(source, where).body
        except SyntaxError:
            continue
        # statement by statement, as a kernel runs a cell, grading each exercise as soon as its
        # name exists: a crash or hang later in the same cell does not take its points
        for statement in statements:
            try:
                exec(compile(ast.Module([statement], type_ignores=[]), where, "exec"), namespace)
            except Exception:    # the cell stops here, the next one runs
                break
            except SystemExit:   # a cell's sys.exit() must not end the grading
                break
            finally:
                for exercise in [e for e in pending if e["name"] in namespace]:
                    pending.remove(exercise)
                    emit("\n" + token + json.dumps({"label": exercise["label"],
                                                    **_grade(exercise, namespace, real)}) + "\n")
                    sys.stdout.flush()
    for exercise in pending:
        emit("\n" + token + json.dumps({"label": exercise["label"], "passed": False,
                                 "message": f"{exercise['name']} is not defined in the submission"}) + "\n")
    sys.stdout.flush()


# ----------------------------------------------------------------------------------- the parent
def _run(command: list[str], stdin: str, cwd: Path, env: dict, limit: float) -> tuple[str, str]:
    """Run with a time limit; on expiry kill the whole process group.  Returns (stdout,
    why it stopped early or '')."""
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               cwd=cwd, env=env, start_new_session=True)
    try:
        out, err = process.communicate(stdin.encode(), timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        return out.decode(errors="replace"), f"the tutorial ran past the time limit of {limit:g} s"
    if process.returncode != 0:
        last = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit status {process.returncode}"]
        return out.decode(errors="replace"), f"the tutorial crashed ({last[0][:200]})"
    return out.decode(errors="replace"), ""


def grade_tutorial(folder: Path, tutorial: Path, limit: float) -> list[dict]:
    """[{label, passed, message}] for every exercise of one tutorial of one student."""
    expected = build.exercises(tutorial.read_text(encoding="utf-8"), tutorial.name)
    submission = submission_file(folder, tutorial.stem)
    if submission is None:
        return [{"label": e.label, "passed": False, "message": f"no submission ({tutorial.stem}.ipynb or .py)"}
                for e in expected]
    token = secrets.token_hex(16)
    job = {"token": token, "submission": str(submission.resolve()), "checks_parent": str(HERE),
           "exercises": [{"label": e.label, "name": e.name, "check": e.check} for e in expected]}
    with tempfile.TemporaryDirectory(prefix="amnp-grade-") as work:
        env = dict(os.environ, AMNP_TUTORIAL_QUICK="1", AMNP_TUTORIAL_OUT=str(Path(work) / "out"), MPLBACKEND="Agg")
        out, stopped = _run([sys.executable, str(Path(__file__).resolve()), "--child"], json.dumps(job) + "\n",
                            Path(work), env, limit)
    graded = {}
    for line in out.splitlines():
        if line.startswith(token):
            result = json.loads(line[len(token):])
            graded.setdefault(result["label"], result)
    why = stopped or "the tutorial stopped before this was graded"
    return [graded.get(e.label, {"label": e.label, "passed": False, "message": why}) for e in expected]


def grade(submissions: Path, tutorials: list[Path], limit: float, jobs: int) -> list[dict]:
    """CSV rows (dicts with COLUMNS) for every student folder of ``submissions``."""
    students = sorted(p for p in submissions.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not students:
        raise ValueError(f"{submissions} holds no student folder (one folder per student)")
    work = [(student, tutorial) for student in students for tutorial in tutorials]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(lambda item: grade_tutorial(item[0], item[1], limit), work))
    rows, totals = [], {}
    for (student, tutorial), graded in zip(work, results):
        for result in graded:
            points = int(result["passed"])
            rows.append({"student": student.name, "tutorial": tutorial.stem, "exercise": result["label"],
                         "points": points, "max_points": 1, "passed": result["passed"], "message": result["message"]})
            got, most = totals.get(student.name, (0, 0))
            totals[student.name] = (got + points, most + 1)
    for student in students:
        got, most = totals[student.name]
        rows.append({"student": student.name, "tutorial": "all", "exercise": "total", "points": got,
                     "max_points": most, "passed": got == most, "message": ""})
    return rows


def select_tutorials(wanted: list[str] | None) -> list[Path]:
    available = build.tutorial_files()
    if not wanted:
        return available
    chosen = [p for p in available if any(p.stem == w or p.name[:2] == w.zfill(2) for w in wanted)]
    unknown = [w for w in wanted if not any(p.stem == w or p.name[:2] == w.zfill(2) for p in available)]
    if unknown:
        raise ValueError(f"no tutorial {', '.join(unknown)}; known: {', '.join(p.stem for p in available)}")
    return chosen


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="grade.py", description="grade a folder of tutorial submissions")
    parser.add_argument("submissions", nargs="?", type=Path, help="folder with one folder per student")
    parser.add_argument("--out", type=Path, default=Path("grades.csv"), help="the CSV to write (grades.csv)")
    parser.add_argument("--tutorials", nargs="+", metavar="NN", help="grade only these (numbers or names)")
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds per tutorial and student (300)")
    parser.add_argument("--jobs", type=int, default=2, help="tutorials graded at once (2)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run_child()
        return 0
    try:
        if args.submissions is None or not args.submissions.is_dir():
            raise ValueError(f"{args.submissions} is not a folder of submissions")
        rows = grade(args.submissions, select_tutorials(args.tutorials), args.time_limit, max(1, args.jobs))
        with open(args.out, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    except (ValueError, OSError) as error:
        print(f"grade.py: error: {error}", file=sys.stderr)
        return 1
    for row in rows:
        if row["tutorial"] == "all":
            print(f"{row['student']}: {row['points']} / {row['max_points']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
