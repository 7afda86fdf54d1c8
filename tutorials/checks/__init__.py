"""Self-checks for the amnp tutorials, one module per tutorial (tutorialNN.py) and a common one.

Each ``check_*`` function takes the function a student wrote, runs it on hidden inputs,
and compares it with an independent answer: amnp's own implementation or central
differences.  On success it prints one ``[ok]`` line; on failure it raises
:class:`CheckFailed`, whose message says what went wrong and, where the wrong answer looks
like a known mistake (wrong axis, ``=`` where ``+=`` belongs, margin on every column, ...),
a hint naming that mistake.  An answer that calls amnp's own version of the exercise (or a
function of these checks) fails: the exercise asks for the student's own code.

``check_answer(question_id, value)`` checks the answers to the inline questions.

The checks are themselves tested (tests/test_tutorial_checks.py): each is fed planted
wrong answers of the kinds its hints describe and must fail with that hint.

Every tutorial imports this package before amnp; where it sits in a checkout
(tutorials/checks/ beside amnp/), it puts that checkout first on the import path, so the
tutorials run from a checkout without installing amnp.
"""
import pathlib
import sys

_CHECKOUT = pathlib.Path(__file__).resolve().parents[2]
if (_CHECKOUT / "amnp" / "__init__.py").is_file():
    sys.path.insert(0, str(_CHECKOUT))

from .answers import check_answer  # noqa: E402
from .common import CheckFailed, show  # noqa: E402
from .tutorial01 import check_numerical_gradient, check_numerical_vjp, check_rel_error, check_softmax_backward  # noqa: E402
from .tutorial02 import check_crossed_kink, check_directional_derivative, check_fit_slope  # noqa: E402
from .tutorial03 import (check_avg_pool_backward, check_col2im, check_im2col, check_linear_backward,  # noqa: E402
                         check_max_pool_backward, check_prelu_backward)
from .tutorial04 import check_cosine_backward, check_eps_normalize_backward, check_l2_normalize_backward  # noqa: E402
from .tutorial05 import check_additive_margin, check_arcface_margin, check_combined_margin, check_sphereface_margin  # noqa: E402
from .tutorial06 import (check_am_softmax_backward, check_am_softmax_forward, check_am_softmax_wofn_backward,  # noqa: E402
                         margin_only_on_target_test)
from .tutorial07 import check_margin_arc  # noqa: E402
from .tutorial08 import check_margin_ramp, check_smallest_scale, target_probability  # noqa: E402
from .tutorial09 import (check_best_threshold, check_dir_at_far, check_eer, check_kfold_accuracy, check_roc,  # noqa: E402
                         check_tar_at_far)
from .tutorial10 import check_measure  # noqa: E402
from .tutorial11 import check_data_parallel_gradient, check_embedding_gradient, check_global_logsumexp  # noqa: E402
