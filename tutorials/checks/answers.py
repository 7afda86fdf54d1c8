"""The inline questions: ``check_answer(question_id, value)``."""
from __future__ import annotations

import re

import numpy as np

from .answer_key import ANSWERS
from .common import _fail, _ok

LETTER = re.compile(r"^\(?([a-z])\)?\.?$")


def _letter(value):
    """'b', ' B ', '(b)', 'b)' -> 'b'; anything else -> None."""
    match = LETTER.match(value.strip().lower()) if isinstance(value, str) else None
    return match.group(1) if match else None


def _number(value):
    """A plain number (int, float, a NumPy scalar or 0-d array, a numeric string) -> float, else None."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, str):
        value = value.strip()
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return float(array) if array.shape == () else None


def _describe(value):
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape}"
    return f"{type(value).__name__} {value!r:.60}"


def check_answer(question, value):
    """Check the answer to inline question ``question`` (e.g. "01.forward_calls").  Each
    question states the form it wants; an equivalent answer within the stated tolerance
    passes ('(b)' for 'b', 3.3e-4 for 1/3000, 5e-3 for the option that reads 5e-3)."""
    if question not in ANSWERS:
        raise KeyError(f"no question {question!r}; known: {', '.join(sorted(ANSWERS))}")
    entry = ANSWERS[question]
    form = entry["form"]
    if entry["kind"] == "choice":
        letter = _letter(value)
        number = _number(value)
        options = entry.get("options", {})
        if letter is None and number is not None and options:
            right = abs(number - options[entry["answer"]]) <= 1e-9 * abs(options[entry["answer"]])
        elif letter is None:
            _fail(f"question {question}: the answer is {form}; got {_describe(value)}",
                  "a bare name like b is a variable of the notebook; write the letter in quotes"
                  if not isinstance(value, str) else None)
        else:
            right = letter == entry["answer"]
    else:
        number = _number(value)
        if number is None:
            _fail(f"question {question}: the answer is {form}; got {_describe(value)}")
        right = abs(number - entry["answer"]) <= entry.get("tolerance", 0) + 1e-12 * abs(entry["answer"])
    if not right:
        _fail(f"question {question}: {value!r} is not the answer ({form})", entry["hint"])
    _ok(f"question {question}", entry["why"])
