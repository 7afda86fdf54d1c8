"""The answers to the inline questions (the teacher's copy; tutorials/build.py writes the
student build's copy encoded, so that the answers are not read by accident).

question id -> kind ("choice" or "number"), answer, tolerance (numbers: the largest accepted
absolute difference), form (how the question asks for the answer), options (choices whose
options are numbers: letter -> value, so that the value is accepted too), hint (shown on a
wrong answer), why (shown on a right one)."""
import math

ANSWERS = {
    "01.double_dout": dict(kind="number", answer=2.0, tolerance=1e-9, form="a number",
                           hint="backward is linear in dout: J^T (2g) = 2 J^T g",
                           why="the vector-Jacobian product is linear in the upstream gradient"),
    "01.forward_calls": dict(kind="number", answer=24, tolerance=0, form="a whole number",
                             hint="central differences evaluate f twice per entry of x",
                             why="two forward calls per entry: 2 x 12"),
    "02.float32_best_h": dict(kind="choice", answer="c", options={"a": 1e-8, "b": 1e-6, "c": 5e-3, "d": 0.1},
                              form="the letter as a string, e.g. 'b'",
                              hint="balance truncation h^2 against rounding eps/h: h ~ eps^(1/3), "
                                   "eps(float32) ~ 1.2e-7",
                              why="eps^(1/3) ~ 5e-3 for float32"),
    "02.rel_at_s30": dict(kind="choice", answer="b", form="the letter as a string, e.g. 'b'",
                          hint="look at the size of the gradient entries behind the largest relative error",
                          why="with s = 30 many entries are ~1e-10; relative error compares rounding noise with ~0"),
    "03.col2im_overlap": dict(kind="choice", answer="b", form="the letter as a string, e.g. 'b'",
                              hint="with stride >= kernel every padded pixel belongs to at most one window",
                              why="'=' and '+=' differ only where a pixel gets two contributions"),
    "04.radial": dict(kind="number", answer=0.0, tolerance=1e-9, form="a number",
                      hint="scaling v does not change v/||v||: what does that say about dL/dv along v?",
                      why="the normalisation is scale invariant, so its gradient is orthogonal to v"),
    "05.arcface_fallback_c": dict(kind="number", answer=math.cos(math.pi - 0.5), tolerance=1e-3,
                                  form="a number, to 3 decimals",
                                  hint="theta + m reaches pi when theta = pi - m",
                                  why="cos(pi - m) = -cos(m) = -0.8776 for m = 0.5"),
    "06.margin_every_column": dict(kind="choice", answer="c", form="the letter as a string, e.g. 'b'",
                                   hint="what does softmax do with a constant added to every logit of a row?",
                                   why="softmax is shift invariant, so the buggy loss IS a (margin-free) loss "
                                       "and its backward is its exact gradient: the gradient check passes"),
    "07.arc_c6": dict(kind="number", answer=9.513, tolerance=0.1, form="degrees, to one decimal",
                      hint="solve cos(t) - m = cos(60 deg - t) for t",
                      why="about 9.5 degrees either side of the centre"),
    "08.loss_at_zero": dict(kind="number", answer=math.log(9 + math.exp(-30 * 0.35)) + 30 * 0.35, tolerance=1e-3,
                            form="a number, to 3 decimals",
                            hint="every logit is 0 except the target's, -s m",
                            why="ln(C-1+e^(-sm)) + sm: the margin adds almost exactly s m at initialisation"),
    "09.far_resolution": dict(kind="number", answer=1 / 3000, tolerance=5e-6, form="a number, to two significant digits",
                              hint="FAR only takes the values k / (number of impostor pairs)",
                              why="1/3000 = 3.3e-4: a target of 1e-4 on LFW means zero false accepts"),
    "10.sync": dict(kind="choice", answer="b", form="the letter as a string, e.g. 'b'",
                    hint="kernel launches return before the work is done",
                    why="without synchronising you time the launches, not the work"),
    "11.softmax_numbers": dict(kind="number", answer=512, tolerance=0, form="a whole number",
                               hint="what does each row need from the other ranks' classes? C does not appear",
                               why="one maximum and one sum per row of the global batch: 2N = 512, whatever C is"),
}
