"""tutorials/grade.py on a folder of real submissions, each tutorial run in a real child
process: a complete and correct student, one with wrong answers, one who calls amnp's own
implementations, one whose checks.py always passes, and tutorials that crash or hang."""
import csv
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = ROOT / "tutorials"
sys.path.insert(0, str(TUTORIALS))
import build  # noqa: E402

GRADED = ["03_layers_by_hand", "09_verification_protocol"]


def submission(stem: str, answers: dict[str, str] | None = None, after: dict[str, str] | None = None) -> str:
    """The teacher's tutorial ``stem`` as a student would hand it in: every block holds the
    teacher's solution, except the exercises named in ``answers`` (label -> code, written at
    the block's indentation); ``after`` adds a line after an exercise's check line."""
    answers, after = answers or {}, after or {}
    source = (TUTORIALS / f"{stem}.py").read_text(encoding="utf-8")
    blocks = {e.line: e for e in build.exercises(source)}
    out, replacing = [], None
    for number, line in enumerate(source.splitlines(), start=1):
        if number in blocks:
            replacing = blocks[number] if blocks[number].label in answers else None
            if replacing:
                indent = line[: len(line) - len(line.lstrip())]
                out += [indent + code for code in answers[replacing.label].splitlines()]
            continue
        if line.strip() == build.END:
            replacing = None
            continue
        if replacing is None:
            out.append(line)
        check = next((e for e in blocks.values() if e.check == line.strip() and e.label in after), None)
        if check:
            out.append(after[check.label])
    return "\n".join(out) + "\n"


WRONG = {
    "03_layers_by_hand": {
        "exercise 1: linear_backward": "return dout @ w, x.T @ dout, dout.sum(axis=0)",
        "exercise 4: col2im": (
            "n, c, hp, wp = x_padded_shape\n"
            "ho, wo = (hp - kh) // stride + 1, (wp - kw) // stride + 1\n"
            "cols = cols.reshape(c, kh, kw, n, ho, wo)\n"
            "dx = np.zeros(x_padded_shape)\n"
            "for i in range(kh):\n"
            "    for j in range(kw):\n"
            "        dx[:, :, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride] = \\\n"
            "            cols[:, i, j].transpose(1, 0, 2, 3)\n"
            "return dx"),
        "inline question 1: answer_col2im_overlap": "answer_col2im_overlap = b",
    },
    "09_verification_protocol": {
        "exercise 5: eer": "far, tar = roc(scores, same)\nreturn float(far[np.argmax(far >= 1 - tar)])",
        "inline question 1: answer_far_resolution": "answer_far_resolution = 1e-4",
    },
}
BORROWED = {
    "03_layers_by_hand": {
        "exercise 4: col2im": (
            "from amnp import functional as F\n"
            "ho, wo = (x_padded_shape[2] - kh) // stride + 1, (x_padded_shape[3] - kw) // stride + 1\n"
            "return F.col2im(cols, x_padded_shape, (kh, kw), (stride, stride), (ho, wo))"),
    },
    "09_verification_protocol": {
        "exercise 2: kfold_accuracy": "return evaluation.kfold_verification(scores, same, folds)['mean']",
    },
}
ALWAYS_PASSES = "def __getattr__(name):\n    return lambda *args, **kwargs: None\n"


def grade(folder: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = folder.parent / f"{folder.name}.csv"
    done = subprocess.run([sys.executable, str(TUTORIALS / "grade.py"), str(folder), "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=300)
    rows = {}
    if out.exists():
        with open(out, newline="", encoding="utf-8") as handle:
            rows = {(r["student"], r["tutorial"], r["exercise"]): r for r in csv.DictReader(handle)}
    return done, rows


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """Three students, each with tutorials 3 and 9; alice hands in notebooks, the others scripts."""
    folder = tmp_path_factory.mktemp("grading") / "submissions"
    for student in ("alice", "bob", "carol"):
        (folder / student).mkdir(parents=True)
    for stem in GRADED:
        script = folder / "alice" / f"{stem}.py"
        script.write_text(submission(stem), encoding="utf-8")
        build.to_notebooks([script])
        script.unlink()
        (folder / "bob" / f"{stem}.py").write_text(submission(stem, WRONG[stem]), encoding="utf-8")
        (folder / "carol" / f"{stem}.py").write_text(submission(stem, BORROWED[stem]), encoding="utf-8")
    (folder / "bob" / "checks.py").write_text(ALWAYS_PASSES, encoding="utf-8")  # not used by the grader
    return grade(folder, "--tutorials", "03", "09", "--time-limit", "120")


def exercise_labels(stem):
    return [e.label for e in build.exercises((TUTORIALS / f"{stem}.py").read_text(encoding="utf-8"))]


def test_every_exercise_of_every_student_gets_a_row_with_the_expected_points(graded):
    done, rows = graded
    assert done.returncode == 0, done.stderr
    for student, wrong in (("alice", {}), ("bob", WRONG), ("carol", BORROWED)):
        for stem in GRADED:
            for label in exercise_labels(stem):
                row = rows[(student, stem, label)]
                expected = 0 if label in wrong.get(stem, {}) else 1
                assert int(row["points"]) == expected and row["max_points"] == "1", (student, label, row["message"])
                assert row["passed"] == str(bool(expected))
    total = sum(len(exercise_labels(stem)) for stem in GRADED)
    assert rows[("alice", "all", "total")]["points"] == str(total)
    assert rows[("bob", "all", "total")]["points"] == str(total - 5)
    assert rows[("carol", "all", "total")]["points"] == str(total - 2)
    assert f"alice: {total} / {total}" in done.stdout


def test_the_message_is_the_checks_hint(graded):
    _, rows = graded
    bob = lambda stem, label: rows[("bob", stem, label)]["message"]
    assert "use += , not =" in bob("03_layers_by_hand", "exercise 4: col2im")
    assert "transpose" in bob("03_layers_by_hand", "exercise 1: linear_backward")
    assert "in quotes" in bob("03_layers_by_hand", "inline question 1: answer_col2im_overlap")
    assert "interpolate linearly" in bob("09_verification_protocol", "exercise 5: eer")
    carol = rows[("carol", "03_layers_by_hand", "exercise 4: col2im")]["message"]
    assert "calls amnp.functional.conv.col2im" in carol and "scores 0" in carol
    assert "kfold_verification" in rows[("carol", "09_verification_protocol", "exercise 2: kfold_accuracy")]["message"]
    assert rows[("alice", "03_layers_by_hand", "exercise 5: max_pool_backward")]["message"] == "[ok] max_pool_backward"


def test_a_crash_or_a_hang_keeps_the_points_earned_before_it(tmp_path):
    folder = tmp_path / "submissions"
    stem = "03_layers_by_hand"
    crash = submission(stem, after={"exercise 2: prelu_backward": "import os; os._exit(3)"})
    hang = submission(stem, after={"exercise 2: prelu_backward": "import time; time.sleep(600)"})
    for student, source in (("dan", crash), ("erin", hang)):
        (folder / student).mkdir(parents=True)
        (folder / student / f"{stem}.py").write_text(source, encoding="utf-8")
    done, rows = grade(folder, "--tutorials", "03", "--time-limit", "10")
    assert done.returncode == 0, done.stderr
    for student, why in (("dan", "crashed"), ("erin", "time limit of 10 s")):
        points = {label: int(rows[(student, stem, label)]["points"]) for label in exercise_labels(stem)}
        assert points["exercise 1: linear_backward"] == points["exercise 2: prelu_backward"] == 1, student
        later = [label for label in exercise_labels(stem)[2:]]
        assert all(points[label] == 0 for label in later), points
        assert all(why in rows[(student, stem, label)]["message"] for label in later)


def test_a_failing_cell_does_not_hide_the_exercises_after_it(tmp_path):
    folder = tmp_path / "submissions"
    stem = "03_layers_by_hand"
    (folder / "fay").mkdir(parents=True)
    source = submission(stem, {"exercise 1: linear_backward": 'raise NotImplementedError("exercise 1")'},
                        after={"exercise 3: im2col": "raise RuntimeError('a cell that fails')"})
    (folder / "fay" / f"{stem}.py").write_text(source, encoding="utf-8")
    done, rows = grade(folder, "--tutorials", "3")
    points = {label: int(rows[("fay", stem, label)]["points"]) for label in exercise_labels(stem)}
    assert points.pop("exercise 1: linear_backward") == 0 and set(points.values()) == {1}, points
    assert "not done" in rows[("fay", stem, "exercise 1: linear_backward")]["message"]


@pytest.mark.parametrize("arguments, message", [
    (["missing-folder"], "is not a folder of submissions"),
    (["{empty}"], "holds no student folder"),
    (["{empty}", "--tutorials", "42"], "no tutorial 42"),
])
def test_bad_input_is_one_error_line(tmp_path, arguments, message):
    (tmp_path / "empty").mkdir()
    arguments = [a.format(empty=tmp_path / "empty") for a in arguments]
    done = subprocess.run([sys.executable, str(TUTORIALS / "grade.py"), *arguments, "--out", str(tmp_path / "g.csv")],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and done.stderr.startswith("grade.py: error: ")
    assert message in done.stderr
