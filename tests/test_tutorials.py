"""The tutorials: the teacher's version of each runs in quick mode and passes every check it
calls; the student version (tutorials/build.py) stops at its first exercise with the
NotImplementedError; the build script, the notebook conversion and the numbers quoted in
tutorials/README.md are tested too.

All tutorials run once per session, as separate interpreters (as a student would run
them), two at a time; the tests below read their results.
"""
import json
import math
import os
import re
import runpy
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .checkout import checkout_env
from .host_guard import guard, guard_parameters, transfers
from .test_distributed import mpi_missing

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = ROOT / "tutorials"
sys.path.insert(0, str(TUTORIALS))
import build  # noqa: E402

NAMES = [path.name for path in build.tutorial_files()]
FIGURES = {
    "02_gradient_check_study.py": ["02_h_sweep.png"],
    "05_margins_and_psi.py": ["05_target_logits.png"],
    "07_geometry.py": ["07_samples.png", "07_circle_softmax.png", "07_circle_normface.png",
                       "07_circle_am_softmax.png", "07_circle_all.png", "07_sphere_all.png"],
    "09_verification_protocol.py": ["09_roc.png"],
}


def environment(out_dir):
    return checkout_env(MPLBACKEND="Agg", AMNP_TUTORIAL_QUICK="1", AMNP_TUTORIAL_OUT=str(out_dir))


def run_script(script: Path, out_dir: Path):
    out_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180,
                          cwd=out_dir, env=environment(out_dir))


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """{("solution" | "student", name): (CompletedProcess, out_dir)} for every tutorial, run from
    the teacher's build (markers removed) and the student build of tutorials/build.py."""
    root = tmp_path_factory.mktemp("tutorial_runs")
    solutions = build.build_solutions(root / "solution")
    students = build.build_student(root / "student")
    jobs = [("solution", path) for path in solutions] + [("student", path) for path in students]
    with ThreadPoolExecutor(max_workers=2) as pool:   # CI has two cores
        futures = {(kind, path.name): pool.submit(run_script, path, root / f"out_{kind}_{path.stem}")
                   for kind, path in jobs}
        return {key: (future.result(), root / f"out_{key[0]}_{Path(key[1]).stem}") for key, future in futures.items()}


def test_the_series_is_complete():
    assert [name[:2] for name in NAMES] == [f"{i:02d}" for i in range(1, 12)], NAMES


@pytest.mark.parametrize("name", NAMES)
def test_solution_runs_and_passes_its_checks(runs, name):
    done, out_dir = runs[("solution", name)]
    assert done.returncode == 0, f"{name} failed\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    source = (TUTORIALS / name).read_text(encoding="utf-8")
    calls = len(re.findall(r"^\s*checks\.check_\w+\(", source, flags=re.M))
    passed = done.stdout.count("[ok] ")
    assert calls >= 2 and passed >= calls, f"{name}: {calls} check calls, {passed} [ok] lines"
    for figure in FIGURES.get(name, []):
        path = out_dir / figure
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{figure} not written"


@pytest.mark.parametrize("name", NAMES)
def test_student_version_stops_at_the_first_exercise(runs, name):
    done, _ = runs[("student", name)]
    assert done.returncode != 0, f"the student version of {name} ran to the end"
    last = done.stderr.strip().splitlines()[-1]
    assert re.match(r'NotImplementedError: (exercise|inline question) 1: \w', last), f"{name}: {last}"


@pytest.mark.parametrize("name", NAMES)
def test_tutorial_structure(name):
    source = (TUTORIALS / name).read_text(encoding="utf-8")
    assert source.count("# %%") >= 10
    for needle in ("**Learning goals.**", "## Summary", "## Open exercises", "**Predict first.**",
                   "**Inline question", "checks.check_answer(", build.BEGIN, "AMNP_TUTORIAL_QUICK",
                   "AMNP_TUTORIAL_OUT"):
        assert needle in source, f"{name} lacks {needle!r}"
    # notebooks have no __file__ and no command line: settings come from the environment
    assert "__file__" not in source and "argparse" not in source and "sys.argv" not in source


def test_strip_solutions_replaces_each_block_at_its_indentation():
    source = (
        "# %%\n"
        "def f(x):\n"
        "    ### BEGIN SOLUTION\n"
        "    return 2 * x\n"
        "    ### END SOLUTION\n"
        "\n"
        "# %%\n"
        "### BEGIN SOLUTION\n"
        "answer = 'b'\n"
        "### END SOLUTION\n"
        "check(answer)\n"
    )
    student, count = build.strip_solutions(source)
    assert count == 2
    assert '    raise NotImplementedError("exercise 1: implement f")\n' in student
    assert 'raise NotImplementedError("inline question 1: set answer")\ncheck(answer)\n' in student
    assert "2 * x" not in student and "'b'" not in student and "SOLUTION" not in student
    teacher = build.solution_source(source)
    assert "2 * x" in teacher and "SOLUTION" not in teacher


@pytest.mark.parametrize("broken, message", [
    ("### BEGIN SOLUTION\nx = 1\n", "never closed"),
    ("x = 1\n### END SOLUTION\n", "without a"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n", "inside the block"),
])
def test_strip_solutions_refuses_unbalanced_markers(broken, message):
    with pytest.raises(ValueError, match=message):
        build.strip_solutions(broken, "t.py")


def test_student_build_compiles_and_ships_the_checks(tmp_path):
    written = build.build_student(tmp_path)
    assert [p.name for p in written] == NAMES
    for path in written:
        text = path.read_text(encoding="utf-8")
        compile(text, str(path), "exec")
        markers = [line for line in text.splitlines() if line.strip() in (build.BEGIN, build.END)]
        assert not markers and re.search(r'NotImplementedError\("(exercise|inline question) 1: ', text), path.name
    assert sorted(p.name for p in (tmp_path / "checks").glob("tutorial*.py")) == [f"tutorial{i:02d}.py"
                                                                                   for i in range(1, 12)]
    assert (tmp_path / "README.md").read_text(encoding="utf-8").startswith("# amnp tutorials: your copy")


def test_the_student_build_does_not_show_the_inline_answers(tmp_path):
    build.build_student(tmp_path)
    shipped = "".join(p.read_text(encoding="utf-8") for p in (tmp_path / "checks").glob("*.py"))
    for giveaway in ("1/3000 = 3.3e-4", "eps^(1/3) ~ 5e-3", "about 9.5 degrees", 'answer="b"', "9.513", "2N = 512"):
        assert giveaway not in shipped
    # ... and its checks still know them
    done = subprocess.run([sys.executable, "-c", "import checks; checks.check_answer('09.far_resolution', 3.3e-4)"],
                          cwd=tmp_path, capture_output=True, text=True, env=environment(tmp_path))
    assert done.returncode == 0 and "[ok] question 09.far_resolution: 1/3000" in done.stdout, done.stderr


def test_the_student_build_links_to_its_own_derivations(tmp_path):
    build.build_student(tmp_path)
    doc = (tmp_path / "docs" / "derivations.md").read_text(encoding="utf-8")
    defined = set(re.findall(r'<a id="([\w-]+)"></a>', doc))
    links = [(path.name, *link) for path in tmp_path.glob("[0-9][0-9]_*.py")
             for link in re.findall(r"\]\(([^)#]*derivations\.md)#([\w-]+)\)", path.read_text(encoding="utf-8"))]
    assert len({name for name, *_ in links}) >= 8
    for name, target, anchor in links:
        assert (tmp_path / target).is_file() and anchor in defined, (name, target, anchor)


def exercise_headings(source):
    """(kind, number) of the "### Exercise N" and "**Inline question N.**" headings the text
    puts before each solution block."""
    headings = re.compile(r"^# (?:### Exercise (\d+)|\*\*Inline question (\d+)\.\*\*)")
    found, current = [], None
    for line in source.splitlines():
        match = headings.match(line)
        if match:
            current = ("exercise", int(match.group(1))) if match.group(1) else ("inline question", int(match.group(2)))
        if line.strip() == build.BEGIN:
            found.append(current)
            current = None
    return found


@pytest.mark.parametrize("name", NAMES)
def test_exercise_numbers_agree_with_the_text(name):
    source = (TUTORIALS / name).read_text(encoding="utf-8")
    numbered = [(e.kind, e.number) for e in build.exercises(source)]
    assert exercise_headings(source) == numbered


def test_notebooks_have_no_outputs_no_solutions_and_nbgrader_cells(tmp_path):
    notebooks = build.to_notebooks(build.build_student(tmp_path / "student"))
    for path in notebooks:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        code = [line.strip() for cell in cells if cell["cell_type"] == "code" for line in cell["source"]]
        assert build.BEGIN not in code and build.END not in code, path.name
        assert all(cell.get("outputs", []) == [] for cell in cells)
        graded = [cell for cell in cells if cell["metadata"].get("nbgrader", {}).get("grade")]
        solutions = [cell for cell in cells if cell["metadata"].get("nbgrader", {}).get("solution")]
        script = path.with_suffix(".py").read_text(encoding="utf-8")
        expected = len(build.exercises((TUTORIALS / path.with_suffix(".py").name).read_text(encoding="utf-8")))
        assert len(graded) == len(solutions) == expected and script.count("raise NotImplementedError(\"") == expected
        assert all("".join(cell["source"]).startswith("checks.check_") for cell in graded)
        headings = [ln for cell in cells if cell["cell_type"] == "markdown" for ln in cell["source"]
                    if ln.startswith("# ")]
        assert len(headings) == 1, (path.name, headings)       # the title is the only top-level heading
    teacher = build.to_notebooks(build.build_solutions(tmp_path / "source", keep_markers=True))
    cells = json.loads(teacher[2].read_text(encoding="utf-8"))["cells"]
    solution = next(c for c in cells if c["metadata"].get("nbgrader", {}).get("solution"))
    assert build.BEGIN in [line.strip() for line in solution["source"]]   # nbgrader's source version keeps them


def test_notebooks_convert_both_ways(tmp_path):
    jupytext = pytest.importorskip("jupytext")
    for name in NAMES:
        notebook = jupytext.read(TUTORIALS / name)
        kinds = {cell.cell_type for cell in notebook.cells}
        assert kinds == {"markdown", "code"}, name
        back = jupytext.writes(notebook, fmt="py:percent")
        assert back.count("# %%") == (TUTORIALS / name).read_text(encoding="utf-8").count("# %%"), name


def test_a_notebook_runs_in_a_kernel(tmp_path, monkeypatch):
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    for key, value in environment(tmp_path).items():
        monkeypatch.setenv(key, value)
    notebook = jupytext.read(TUTORIALS / "05_margins_and_psi.py")
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    client = nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(TUTORIALS)}})
    client.execute()
    outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
    assert "[ok] arcface_margin" in "".join(output.get("text", "") for output in outputs)
    assert any("image/png" in output.get("data", {}) for output in outputs), "no figure shown inline"


def test_no_text_describes_the_old_checks_module():
    """The checks are a package now, the student build does not show the answers, and DIR@FAR
    has no fallback reference in the checks."""
    stale = [r"reference in `checks\.py`", r"`checks\.py` holds", r"otherwise with the\s+reference",
             r"where\s+this version of amnp has it", r"when amnp has it"]
    for path in [TUTORIALS / "README.md", TUTORIALS / "STUDENTS.md", *build.tutorial_files()]:
        text = path.read_text(encoding="utf-8")
        assert not [p for p in stale if re.search(p, text.replace("# ", ""))], path.name


def test_a_tutorial_runs_from_a_checkout_without_installing(outside_the_checkout):
    cwd, env = outside_the_checkout
    done = subprocess.run([sys.executable, str(TUTORIALS / "10_training_on_a_gpu.py")], capture_output=True,
                          text=True, timeout=180, cwd=cwd, env=dict(env, AMNP_TUTORIAL_QUICK="1", MPLBACKEND="Agg"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "[ok] measure" in done.stdout


def test_tutorial_10_times_steps_that_read_nothing_back(tmp_path, monkeypatch):
    """Its timing without synchronisation must time the launches alone: a step that read
    values back would wait for the device three times."""
    for key, value in environment(tmp_path).items():
        monkeypatch.setenv(key, value)
    for key in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # the tutorial sets them
        monkeypatch.setenv(key, os.environ.get(key, "1"))
    tutorial = runpy.run_path(str(TUTORIALS / "10_training_on_a_gpu.py"))
    net, classifier = tutorial["build"]("numpy")
    guard_parameters(net)
    guard_parameters(classifier)
    x, y = guard(tutorial["x_host"]), guard(tutorial["y_host"])
    with transfers() as count:
        tutorial["train_step"](net, classifier, x, y)
    assert count.downloads == 0


def test_tutorial_11_runs_on_real_processes_under_mpiexec(tmp_path):
    """Under mpiexec the tutorial talks through MPI between real processes (not simulated
    ranks), and every rank passes its checks."""
    if mpi_missing():
        pytest.skip(f"MPI test skipped: {mpi_missing()}")
    script = TUTORIALS / "11_many_processes_by_hand.py"
    done = subprocess.run(["mpiexec", "-n", "2", sys.executable, "-m", "mpi4py", str(script)], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path, env=environment(tmp_path))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "ranks: 2 (processes under mpiexec)" in done.stdout
    source = script.read_text(encoding="utf-8")
    calls = len(re.findall(r"^\s*checks\.check_\w+\(", source, flags=re.M))
    assert done.stdout.count("[ok] ") == 2 * calls            # each process ran every check
    assert done.stdout.count("against one process") == 3      # rank 0 alone prints the comparisons


def test_derivation_anchors_exist():
    """Every docs/derivations.md#anchor the tutorials (and amnp) point to is defined there."""
    doc = (ROOT / "docs" / "derivations.md").read_text(encoding="utf-8")
    defined = set(re.findall(r'<a id="([\w-]+)"></a>', doc))
    used = set()
    for path in list(TUTORIALS.glob("*.py")) + list((ROOT / "amnp").rglob("*.py")):
        used |= set(re.findall(r"derivations\.md#([\w-]+)", path.read_text(encoding="utf-8")))
    assert used and used <= defined, sorted(used - defined)


def quoted_blocks():
    """(tutorial name, kind, lines) for each block of tutorials/README.md introduced by
    <!-- output of NAME --> (lines the quick run prints, numbers as annotated: `agrees`) or
    <!-- full-run output of NAME --> (numbers of the full run; only the row labels are checked)."""
    text = (TUTORIALS / "README.md").read_text(encoding="utf-8")
    pattern = re.compile(r"<!-- (output|full-run output) of (\S+\.py) -->\s*```\n(.*?)```", re.S)
    return [(m.group(2), m.group(1), [ln for ln in m.group(3).splitlines() if ln.strip()])
            for m in pattern.finditer(text)]


NUMBER = r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?"
QUOTED_NUMBER = re.compile(rf"(~?)({NUMBER})(?:±({NUMBER}))?")


def agrees(quoted: str, printed: str) -> bool:
    """Whether a line quoted in tutorials/README.md stands for a line a tutorial printed.

    The words must be the same (runs of spaces aside).  A plain number must be printed as
    quoted; `X±T` within T of X; `~X` within a factor of 10 of X, with its sign: rounding
    error, whose digits the BLAS kernel's summation order decides, carries its lesson in its
    order of magnitude only."""
    def skeleton(line, numbers):
        return " ".join(numbers.sub("#", line).split())

    if skeleton(quoted, QUOTED_NUMBER) != skeleton(printed, re.compile(NUMBER)):
        return False
    for (approximate, value, tolerance), got in zip(QUOTED_NUMBER.findall(quoted),
                                                    re.findall(NUMBER, printed)):
        want, have = float(value), float(got)
        if tolerance:
            fits = abs(have - want) <= float(tolerance)
        elif approximate:
            fits = have * want > 0 and abs(math.log10(have / want)) <= 1
        else:
            fits = got == value
        if not fits:
            return False
    return True


def test_quoted_numbers_agree_as_annotated():
    assert agrees("   1e-02    1.59e-05   ~1.71e-05", "   1e-02    1.59e-05    1.74e-05")
    assert agrees("slope -1.04±0.1", "slope -0.97")
    assert not agrees("slope -1.04±0.1", "slope -1.15")
    assert not agrees("   1e-02    1.59e-05   ~1.71e-05", "   1e-02    1.60e-05    1.71e-05")
    assert not agrees("   1e-02    1.59e-05   ~1.71e-05", "   1e-02    1.59e-05    1.71e-03")
    assert not agrees("   1e-02    1.59e-05   ~1.71e-05", "   1e-02    1.59e-05   -1.71e-05")
    assert not agrees("best h: float64 1e-05", "best h: float32 1e-05")


def test_readme_quotes_what_the_tutorials_print(runs):
    blocks = quoted_blocks()
    assert {name for name, _, _ in blocks} >= {"02_gradient_check_study.py", "05_margins_and_psi.py",
                                                "07_geometry.py", "08_choosing_s_and_m.py",
                                                "09_verification_protocol.py"}
    for name, kind, lines in blocks:
        out = runs[("solution", name)][0].stdout
        printed = out.splitlines()
        for line in lines:
            if kind == "output":
                assert any(agrees(line, p) for p in printed), \
                    f"README quotes {line!r}, {name} --quick prints no line that agrees with it"
            else:  # the row label (text before the first number) is printed by the tutorial
                label = re.split(r"\s+\d", line, maxsplit=1)[0].rstrip()
                assert any(p.startswith(label) for p in printed), f"{name} prints no row {label!r}"
